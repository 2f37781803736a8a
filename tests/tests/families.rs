//! Decoder families read from Hugging Face directories, against transformers (fixtures made by
//! xtask/scripts/*_fixtures.py), on every adapter present: two small random Gemma 3 text models
//! (`gemma3_text`) whose sliding window is shorter than the prompt, with QK-norm, sandwich norms,
//! `1 + w` RMSNorm weights, the embedding scale, a query scale from `query_pre_attn_scalar` and
//! per-layer-type RoPE bases; a Gemma 3 vision-language model (`gemma3`) stage by stage; a Qwen2
//! text model (`qwen2`) with Q/K/V biases; and config values flint cannot run, refused by name.

use std::path::{Path, PathBuf};

mod support;
use support::{Expected, devices, edited_copy, nmse};

use flint_runtime::generate::SamplingOptions;
use flint_runtime::model::Model;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures").join("gemma3-text")
}

const PROMPT: &str = "A long sentence that goes on and on, so that a window of a few tokens is shorter than it. The";

/// A text model against its fixture: the prompt's ids, the logits at every position (NMSE at
/// most 1e-5) and the greedy tokens. Returns the ids and the NMSE.
fn check_text(model: &Model, exp: &Expected, prompt: &str, what: &str) -> (Vec<u32>, f64) {
    let ids = model.prompt_ids(prompt, false).unwrap();
    assert_eq!(ids, exp.ids("input_ids"), "[{what}] prompt ids");
    let e = nmse(&model.logits(&ids).unwrap(), &exp.f32s("logits"));
    assert!(e <= 1e-5, "[{what}] logits NMSE {e:e}");
    let greedy = exp.ids("greedy");
    let mut s = model.session(ids.len() + greedy.len()).unwrap();
    let opts = SamplingOptions { max_tokens: greedy.len(), ..Default::default() };
    assert_eq!(s.generate(&ids, &opts, |_| {}).unwrap().tokens, greedy, "[{what}] greedy tokens");
    (ids, e)
}

/// f32 weights, activations and KV cache: only summation order and the GPU's exp/tanh differ
/// from transformers, so the logits' NMSE stays far below the 1e-5 bar the other fixture
/// models are held to.
#[test]
fn tiny_gemma3_text_models_match_transformers() {
    for dev in devices() {
        let label = dev.caps().short_label();
        for name in ["tiny-a", "tiny-b"] {
            let exp = Expected::open(fixtures().join(format!("{name}.expected.safetensors")));
            let model = Model::load(&dev, fixtures().join(name)).unwrap();
            let window = model.decoder().cfg.sliding_window.unwrap();
            let (ids, nmse) = check_text(&model, &exp, PROMPT, &format!("{label} {name}"));
            assert!(ids.len() > 4 * window, "the window is shorter than the prompt");
            eprintln!("[{label}] {name}: {} prompt tokens, logits NMSE {nmse:.1e}; greedy tokens equal", ids.len());
        }
    }
}

/// A copy of tiny-a whose config.json has `edit` applied, under the system temp directory.
fn edited(tag: &str, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    let files = ["model.safetensors", "tokenizer.json", "tokenizer_config.json"];
    edited_copy(&fixtures().join("tiny-a"), &files, &format!("gemma3-{tag}"), edit)
}

#[test]
fn gemma3_configs_flint_cannot_run_are_refused_by_name() {
    let dev = &devices()[0];
    type Edit = fn(&mut serde_json::Value);
    let cases: [(&str, Edit, &str); 8] = [
        ("softcap", |c| c["final_logit_softcapping"] = 30.0.into(), "final_logit_softcapping"),
        ("act", |c| c["hidden_activation"] = "relu".into(), "\"relu\""),
        ("pattern", |c| c["layer_types"][1] = "full_attention".into(), "layer_types"),
        ("bidir", |c| c["use_bidirectional_attention"] = true.into(), "use_bidirectional_attention"),
        ("yarn", |c| c["rope_parameters"]["full_attention"]["rope_type"] = "yarn".into(), "\"yarn\""),
        ("qscale", |c| c["query_pre_attn_scalar"] = 0.into(), "query_pre_attn_scalar must be positive"),
        ("window", |c| c["sliding_window"] = u64::MAX.into(), "sliding window"),
        ("headdim", |c| c["head_dim"] = 0.into(), "head_dim is 0"),
    ];
    for (tag, edit, want) in cases {
        let dir = edited(tag, edit);
        let e = Model::load(dev, &dir).unwrap_err().to_string();
        assert!(e.contains("config.json") && e.contains(want), "{tag}: {e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
    // transformers 4.5x's flat keys read the same model.
    let dir = edited("flat", |c| {
        let o = c.as_object_mut().unwrap();
        o.remove("rope_parameters");
        o.remove("layer_types");
        o.insert("rope_theta".into(), 100000.0.into());
        o.insert("rope_local_base_freq".into(), 10000.0.into());
        o.insert("sliding_window_pattern".into(), 6.into());
    });
    let flat = Model::load(dev, &dir).unwrap();
    let new = Model::load(dev, fixtures().join("tiny-a")).unwrap();
    assert_eq!(flat.decoder().cfg, new.decoder().cfg);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Small random Gemma 3 vision-language models (xtask/scripts/gemma3_vision_fixtures.py)
/// against transformers: the prompt's ids with its images expanded as Gemma3Processor expands
/// them, the pixels of Gemma3ImageProcessorPil, the projector's output (SigLIP, the average
/// pool, its RMSNorm and projection), the logits with each image's tokens attending to their
/// whole image (which moves them by up to 2.75 against a causal mask) and greedy tokens; on
/// every adapter present.
#[test]
fn a_tiny_gemma3_vision_model_matches_transformers() {
    check_gemma3_vision("tiny", 2);
}

/// The second fixture: one wide image at 48x48 pooled to 9 tokens, a one-layer tower 48 wide,
/// a text model with 3 query heads on 1 KV head and a window of 4.
#[test]
fn a_second_gemma3_vision_model_matches_transformers() {
    check_gemma3_vision("tiny-b", 1);
}

fn check_gemma3_vision(name: &str, image_count: usize) {
    use flint_gpu::Recorder;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures").join("gemma3-vision");
    let exp = Expected::open(dir.join(format!("{name}.expected.safetensors")));
    let (f32s, ids) = (|k: &str| exp.f32s(k), |k: &str| exp.ids(k));
    let prompt = std::fs::read_to_string(dir.join(format!("{name}.prompt.txt"))).unwrap();
    let images: Vec<_> = (0..image_count)
        .map(|i| flint_runtime::image::load(&dir.join(format!("{name}.image{i}.png"))).unwrap())
        .collect();
    for dev in devices() {
        let label = format!("{} {name}", dev.caps().short_label());
        let model = Model::load(&dev, dir.join(name)).unwrap();
        let (got_ids, pixels) = model.multimodal_prompt(&prompt, &images, false).unwrap();
        assert_eq!(got_ids, ids("input_ids"), "[{label}] prompt ids");
        let pixels = pixels.unwrap().pixels.unwrap();
        let want_px = f32s("pixel_values");
        let worst = pixels.data.iter().zip(&want_px).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(worst <= 1e-6 && pixels.data.len() == want_px.len(), "[{label}] pixels differ by {worst}");
        let vision = model.vision().unwrap();
        let mut rec = Recorder::new(&dev);
        let feats = vision.embed(&mut rec, &pixels).unwrap();
        rec.submit().unwrap().wait().unwrap();
        let ef = nmse(&dev.read_f32(&feats).unwrap(), &f32s("image_features"));
        assert!(ef <= 1e-5, "[{label}] projector output NMSE {ef:e}");
        let logits = model.logits_with(&got_ids, Some(&pixels.clone().into())).unwrap();
        let el = nmse(&logits, &f32s("logits"));
        assert!(el <= 1e-5, "[{label}] logits NMSE {el:e}");
        let want = ids("greedy");
        let mut s = model.session(got_ids.len() + want.len()).unwrap();
        let opts = SamplingOptions { max_tokens: want.len(), ..Default::default() };
        let out = s.generate_with(&got_ids, Some(&pixels.clone().into()), &opts, |_| {}).unwrap();
        assert_eq!(out.tokens, want, "[{label}] greedy tokens");
        // The images in a later turn: a session that already holds the first tokens prefills
        // the rest (both images) after them, its image masks offset by the cached positions.
        let (head, tail) = got_ids.split_at(3);
        let mut s = model.session(got_ids.len()).unwrap();
        let mut rec = Recorder::new(&dev);
        s.forward(&mut rec, head).unwrap();
        rec.submit().unwrap().wait().unwrap();
        let mut rec = Recorder::new(&dev);
        let h = s.forward_with(&mut rec, tail, Some(&pixels.clone().into())).unwrap();
        let later = model.decoder().logits(&mut rec, &h, 0..tail.len()).unwrap();
        rec.submit().unwrap().wait().unwrap();
        let vocab = model.decoder().cfg.vocab;
        let et = nmse(&dev.read_f32(&later).unwrap(), &f32s("logits")[head.len() * vocab..]);
        assert!(et <= 1e-5, "[{label}] logits of images in a later turn: NMSE {et:e}");
        // The chat template's `<start_of_image>` is a placeholder as `<image>` is.
        let templated = prompt.replace("<image>", "<start_of_image>");
        assert_eq!(model.multimodal_prompt(&templated, &images, false).unwrap().0, got_ids);
        // Through the batched engine: two branches of the image prompt (its image tokens
        // prefilled with the same block mask) next to a text request.
        let mut engine =
            model.engine(flint_runtime::EngineOptions { kv_tokens: 512, page_size: 16, max_batch: 4 }).unwrap();
        let req =
            flint_runtime::Request::new(got_ids.clone(), opts.clone()).branches(2).with_pixels(Some(pixels.clone()));
        let id = engine.submit(req).unwrap();
        let mut outputs = std::collections::HashMap::new();
        engine
            .run(|e| {
                if let flint_runtime::Event::Finished { request, output } = e {
                    outputs.insert(request, output);
                }
            })
            .unwrap();
        for b in &outputs[&id].branches {
            assert_eq!(b.tokens, want, "[{label}] engine branch");
        }
        eprintln!("[{label}] gemma3 vision: projector NMSE {ef:.1e}, logits NMSE {el:.1e}; greedy tokens equal");
    }
}

/// A small random Qwen2 text model (xtask/scripts/qwen2_fixtures.py) against transformers: the
/// prompt's ids, the logits at every position (the Q/K/V biases drawn away from zero, so they
/// show) and greedy tokens, on every adapter present.
#[test]
fn a_tiny_qwen2_model_matches_transformers() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures").join("qwen2");
    let exp = Expected::open(dir.join("tiny.expected.safetensors"));
    let prompt = "Question: what is 3 + 5? The quick brown fox has biases on its query, key and value projections.";
    for dev in devices() {
        let label = dev.caps().short_label();
        let model = Model::load(&dev, dir.join("tiny")).unwrap();
        assert_eq!(model.decoder().cfg.family, "qwen2");
        let (_, e) = check_text(&model, &exp, prompt, &format!("{label} qwen2"));
        eprintln!("[{label}] qwen2: logits NMSE {e:.1e}; greedy tokens equal");
    }
}
