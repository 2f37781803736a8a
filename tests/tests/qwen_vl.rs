//! Qwen2.5-VL against transformers, on every adapter present: two tiny random models
//! (xtask/scripts/qwen2_5_vl_fixtures.py), one over two images of different aspect ratios in
//! one prompt (patch grids 12x18 and 2x64, both ending in partial windows), stage by stage: the
//! processor's patch rows, the vision blocks' output in window order (2D rotary, window and
//! whole-image attention), the merged tokens in image order, the prompt ids, the M-RoPE
//! positions, the prefill logits and greedy tokens through sessions and the engine.

use std::path::{Path, PathBuf};

mod support;
use support::{ConfigEdit, devices, nmse};

use flint_runtime::image::PatchProcessor;
use flint_runtime::model::qwen_vision::{PatchImages, QwenVisionTower};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

fn tensor(bytes: &[u8], k: &str) -> Vec<u8> {
    safetensors::SafeTensors::deserialize(bytes).unwrap().tensor(k).unwrap().data().to_vec()
}

fn f32s(bytes: &[u8], k: &str) -> Vec<f32> {
    tensor(bytes, k).chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

/// f32 weights and activations: only summation order and the GPU's exp/erf/cos differ from
/// transformers, so NMSE stays far below the 1e-5 the other fixture models are held to.
#[test]
fn qwen2_5_vl_vision_tower_matches_transformers() {
    let dir = fixtures().join("qwen2.5-vl").join("tiny");
    let exp = std::fs::read(fixtures().join("qwen2.5-vl").join("tiny.expected.safetensors")).unwrap();
    let proc = PatchProcessor::from_dir(&dir).unwrap();
    let mut pixels = Vec::new();
    let mut grids = Vec::new();
    for name in ["photo", "wide"] {
        let img = flint_runtime::image::load(&fixtures().join("images").join(format!("{name}.png"))).unwrap();
        let p = proc.process(&img).unwrap();
        pixels.extend(p.pixels);
        grids.push(p.grid);
    }
    assert_eq!(grids, vec![(12, 18), (2, 64)], "patch grids");
    let ep = nmse(&pixels, &f32s(&exp, "pixel_values"));
    assert!(ep <= 1e-10, "patch rows NMSE {ep:e}");
    let images = PatchImages { pixels, grids };
    for dev in devices() {
        let label = dev.caps().short_label();
        let mut tower = QwenVisionTower::load(&dev, &dir).unwrap();
        let cfg = tower.cfg.clone();
        let (out, hidden) = tower.encode_host(&images).unwrap();
        let eh = nmse(&hidden, &f32s(&exp, "vision_hidden"));
        let eo = nmse(&out, &f32s(&exp, "vision_out"));
        eprintln!("[{label}] NMSE blocks {eh:.1e} merger {eo:.1e}");
        assert!(eh <= 1e-5, "[{label}] vision blocks NMSE {eh:e}");
        assert!(eo <= 1e-5, "[{label}] merger NMSE {eo:e}");
        assert_eq!(out.len(), (216 + 128) / 4 * cfg.out_hidden);
        // The windows show: with every block attending across its image the output differs.
        tower.cfg.full_attention = (0..cfg.depth).collect();
        let (unwindowed, _) = tower.encode_host(&images).unwrap();
        let eu = nmse(&unwindowed, &f32s(&exp, "vision_out"));
        assert!(eu > 1e-3, "[{label}] without windows the merger output should differ, NMSE {eu:e}");
    }
}

fn ids(bytes: &[u8], k: &str) -> Vec<u32> {
    tensor(bytes, k).chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap()) as u32).collect()
}

/// The whole model against transformers: the prompt ids (from the chat template and from the
/// templated text), the M-RoPE position ids and delta, the prefill logits, and 8 greedy tokens
/// through a session and through two engine branches (their decode steps take the rotary
/// positions from the delta).
#[test]
fn qwen2_5_vl_two_images_match_transformers() {
    check_model("tiny", &["photo", "wide"]);
}

/// The second fixture: wider heads (64), windows of 4x4 merged tokens, the first block
/// attending across the image, a decoder without GQA and other M-RoPE sections.
#[test]
fn qwen2_5_vl_second_model_matches_transformers() {
    check_model("tiny-b", &["screenshot"]);
}

fn check_model(name: &str, pictures: &[&str]) {
    use flint_runtime::generate::SamplingOptions;
    use flint_runtime::model::{Model, PromptSpec};
    let root = fixtures().join("qwen2.5-vl");
    let exp = std::fs::read(root.join(format!("{name}.expected.safetensors"))).unwrap();
    let images: Vec<_> = pictures
        .iter()
        .map(|n| flint_runtime::image::load(&fixtures().join("images").join(format!("{n}.png"))).unwrap())
        .collect();
    let text = std::fs::read_to_string(root.join(format!("{name}.prompt.txt"))).unwrap();
    for dev in devices() {
        let label = format!("{} {name}", dev.caps().short_label());
        let model = Model::load(&dev, root.join(name)).unwrap();
        let (got, media) = model.multimodal_prompt(&text, &images, false).unwrap();
        assert_eq!(got, ids(&exp, "input_ids"), "[{label}] prompt ids from the templated text");
        let spec = PromptSpec { text: "What is in these pictures?", images: &images, chat: true, ..Default::default() };
        assert_eq!(model.build_prompt(&spec).unwrap().0, got, "[{label}] prompt ids through the chat template");
        let media = media.unwrap();
        let patches = media.patches.as_ref().unwrap();
        let grids = patches.grids.clone();
        let q = model.qwen_vision().unwrap();
        let ep = nmse(&patches.pixels, &f32s(&exp, "pixel_values"));
        assert!(ep <= 1e-10, "[{label}] patch rows NMSE {ep:e}");
        let (out, hidden) = q.tower.encode_host(patches).unwrap();
        let (eh, eo) = (nmse(&hidden, &f32s(&exp, "vision_hidden")), nmse(&out, &f32s(&exp, "vision_out")));
        assert!(eh <= 1e-5 && eo <= 1e-5, "[{label}] vision blocks NMSE {eh:e}, merger {eo:e}");
        let (pos, next) = q.positions(&got, &grids, 0).unwrap();
        let want = ids(&exp, "position_ids");
        let n = got.len();
        let flat: Vec<u32> = (0..3).flat_map(|a| pos.iter().map(move |p| p[a])).collect();
        assert_eq!(flat, want, "[{label}] M-RoPE position ids");
        assert_eq!(i64::from(next) - n as i64, ids(&exp, "rope_delta")[0] as i32 as i64, "[{label}] rope delta");
        let logits = model.logits_with(&got, Some(&media)).unwrap();
        let el = nmse(&logits, &f32s(&exp, "logits"));
        eprintln!("[{label}] NMSE blocks {eh:.1e} merger {eo:.1e} logits {el:.1e}");
        assert!(el <= 1e-5, "[{label}] logits NMSE {el:e}");
        let greedy = ids(&exp, "greedy");
        let opts = SamplingOptions { max_tokens: greedy.len(), ..Default::default() };
        let mut s = model.session(n + greedy.len()).unwrap();
        assert_eq!(s.generate_with(&got, Some(&media), &opts, |_| {}).unwrap().tokens, greedy, "[{label}] greedy");
        let mut engine =
            model.engine(flint_runtime::EngineOptions { kv_tokens: 1024, page_size: 16, max_batch: 4 }).unwrap();
        let req = flint_runtime::Request::new(got.clone(), opts.clone())
            .branches(2)
            .with_media(Some(std::sync::Arc::new(media.clone())));
        let id = engine.submit(req).unwrap();
        let branches = support::run_branches(&mut engine, id);
        assert_eq!(branches, vec![greedy.clone(), greedy.clone()], "[{label}] engine branches");
    }
}

/// Configs flint cannot run, or whose parts disagree, are refused naming the file and field.
#[test]
fn qwen2_5_vl_configs_that_disagree_are_refused_by_name() {
    let src = fixtures().join("qwen2.5-vl").join("tiny");
    let files = [
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "preprocessor_config.json",
        "chat_template.jinja",
    ];
    let cases: [ConfigEdit; 6] = [
        (
            "sections",
            |c| c["text_config"]["rope_parameters"]["mrope_section"] = serde_json::json!([4, 6, 7]),
            "mrope_section",
        ),
        ("out", |c| c["vision_config"]["out_hidden_size"] = 64.into(), "out_hidden_size 64"),
        ("window", |c| c["vision_config"]["window_size"] = 50.into(), "window_size"),
        ("full", |c| c["vision_config"]["fullatt_block_indexes"] = serde_json::json!([9]), "fullatt_block_indexes"),
        ("heads", |c| c["vision_config"]["num_heads"] = 3.into(), "num_heads"),
        ("token", |c| c["image_token_id"] = 6.into(), "image_token_id"),
    ];
    support::refused_by_name(&src, &files, "qwen2.5-vl", &cases);
}
