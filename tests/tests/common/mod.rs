//! What the model-level test files share: SmolLM2-135M loaded once per test binary.

use std::sync::OnceLock;

use flint_gpu::Device;
use flint_runtime::model::Model;

/// SmolLM2-135M (fetched on first use) on `$FLINT_ADAPTER` (default vulkan), loaded once.
pub fn model() -> &'static Model {
    static M: OnceLock<Model> = OnceLock::new();
    M.get_or_init(|| {
        let dev =
            Device::open(&std::env::var("FLINT_ADAPTER").unwrap_or_else(|_| "vulkan".into())).expect("an adapter");
        let path = flint_runtime::fetch::resolve(Some("smollm2-135m"), &mut |_| {}).expect("the model can be fetched");
        Model::load(&dev, &path).expect("the model loads")
    })
}
