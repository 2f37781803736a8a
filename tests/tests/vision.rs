//! The multimodal path against Hugging Face transformers (fixtures made by
//! xtask/scripts/idefics3_fixtures.py): image preprocessing against the Idefics3 image
//! processor on three real-looking images, and two small random Idefics3 models stage by stage
//! (vision encoder, connector, prefill logits, greedy tokens) on every adapter present.

use std::path::{Path, PathBuf};

use flint_runtime::image::{self, ImageProcessor};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

#[test]
fn preprocessing_matches_the_processor_pixel_for_pixel() {
    let dir = fixtures().join("images");
    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("processed.json")).unwrap()).unwrap();
    let proc = ImageProcessor {
        longest_edge: index["size"].as_u64().unwrap() as usize,
        tile: index["tile"].as_u64().unwrap() as usize,
        split: true,
        resize: true,
        mean: [0.5; 3],
        std: [0.5; 3],
        rescale: 1.0 / 255.0,
        image_seq_len: 1,
    };
    for (name, want) in index["images"].as_object().unwrap() {
        let img = image::load(&dir.join(format!("{name}.png"))).unwrap();
        assert_eq!(
            (img.width as u64, img.height as u64),
            (want["width"].as_u64().unwrap(), want["height"].as_u64().unwrap())
        );
        let got = proc.process(&img);
        assert_eq!(
            (got.tiles as u64, got.rows as u64, got.cols as u64),
            (want["tiles"].as_u64().unwrap(), want["rows"].as_u64().unwrap(), want["cols"].as_u64().unwrap()),
            "{name}: tiles, rows, cols"
        );
        let expected = std::fs::read(dir.join(format!("{name}.tiles.u8"))).unwrap();
        // The fixture is [tiles, 3, tile, tile] in u8 before normalisation.
        let t = proc.tile;
        let mut ours = Vec::with_capacity(expected.len());
        for tile in &got.tiles_rgb {
            for c in 0..3 {
                ours.extend((0..t * t).map(|i| tile.data[i * 3 + c]));
            }
        }
        let diff: Vec<usize> = (0..expected.len()).filter(|&i| ours[i] != expected[i]).collect();
        let max = diff.iter().map(|&i| (i32::from(ours[i]) - i32::from(expected[i])).abs()).max().unwrap_or(0);
        assert!(diff.is_empty(), "{name}: {} of {} values differ, by up to {max}", diff.len(), expected.len());
        for (i, &v) in got.pixels.iter().enumerate() {
            let want = ((f64::from(expected[i]) / 255.0 - 0.5) / 0.5) as f32;
            assert!((v - want).abs() <= 1e-6, "{name}: pixel {i}: {v} vs {want}");
        }
    }
}

/// The tensors of `<name>.expected.safetensors` as f32 (ids as f32 too).
struct Expected {
    tensors: std::collections::HashMap<String, (Vec<usize>, Vec<f32>)>,
}

impl Expected {
    fn open(name: &str) -> Expected {
        let bytes = std::fs::read(fixtures().join("idefics3").join(format!("{name}.expected.safetensors"))).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut tensors = std::collections::HashMap::new();
        for (k, v) in st.tensors() {
            let data: Vec<f32> = match v.dtype() {
                safetensors::Dtype::F32 => {
                    v.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
                }
                safetensors::Dtype::I32 => {
                    v.data().chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().unwrap()) as f32).collect()
                }
                other => panic!("{k}: {other:?}"),
            };
            tensors.insert(k, (v.shape().to_vec(), data));
        }
        Expected { tensors }
    }

    fn f32(&self, k: &str) -> &[f32] {
        &self.tensors[k].1
    }

    fn ids(&self, k: &str) -> Vec<u32> {
        self.tensors[k].1.iter().map(|&v| v as u32).collect()
    }
}

/// NMSE of `got` against `want`, failing on any non-finite value.
fn nmse(what: &str, got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    assert!(got.iter().all(|v| v.is_finite()), "{what}: non-finite values");
    let err: f64 = got.iter().zip(want).map(|(a, b)| (f64::from(*a) - f64::from(*b)).powi(2)).sum();
    let norm: f64 = want.iter().map(|b| f64::from(*b).powi(2)).sum();
    err / norm.max(1e-30)
}

fn devices() -> Vec<flint_gpu::Device> {
    let sel = std::env::var("FLINT_ADAPTER").unwrap_or_default();
    let devs: Vec<_> = flint_gpu::Device::open_all(&sel).into_iter().filter_map(Result::ok).collect();
    assert!(!devs.is_empty(), "no adapter matches {sel:?}");
    devs
}

/// Every stage of one fixture model on one adapter. f32 weights, activations and KV cache: the
/// only differences from transformers are summation order and the GPU's exp/tanh, so NMSE stays
/// near 1e-10; 1e-5 is the bar for logits, and each stage is held to it too.
fn check_model(dev: &flint_gpu::Device, name: &str) {
    use flint_gpu::{DType, Recorder};
    use flint_runtime::generate::SamplingOptions;
    use flint_runtime::model::{Model, Pixels};

    let label = dev.caps().short_label();
    let dir = fixtures().join("idefics3");
    let model = Model::load(dev, dir.join(name)).unwrap();
    let vision = model.vision.as_ref().expect("a vision tower");
    let exp = Expected::open(name);
    let npy = flint_runtime::npy::read(&dir.join(format!("{name}.pixel_values.npy"))).unwrap();
    let (images, side) = (npy.shape[0], npy.shape[2]);
    assert_eq!(npy.shape, vec![images, 3, side, side]);
    let pixels = Pixels { data: npy.data.clone(), images, side };

    // The prompt and the pixels, rebuilt from the image files as the processor did.
    let text = std::fs::read_to_string(dir.join(format!("{name}.prompt.txt"))).unwrap();
    let imgs: Vec<_> =
        (0..2).map(|i| flint_runtime::image::load(&dir.join(format!("{name}.image{i}.png"))).unwrap()).collect();
    let (ids, ours) = model.multimodal_prompt(&text, &imgs, false).unwrap();
    assert_eq!(ids, exp.ids("input_ids"), "[{label}] {name}: prompt ids");
    let ours = ours.unwrap();
    assert_eq!((ours.images, ours.side), (images, side));
    let worst = ours.data.iter().zip(&npy.data).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(worst <= 1e-6, "[{label}] {name}: preprocessed pixels differ by {worst}");

    // Vision encoder and connector, stage by stage.
    let c = &vision.tower.cfg;
    let mut rec = Recorder::new(dev);
    let t = dev.upload_f32("pixels", &pixels.data, &[images, 3, side, side], DType::F32).unwrap();
    let h = vision.tower.encode(&mut rec, &t, images, side, side).unwrap();
    let conn = vision.tower.connect(&mut rec, &h, images, side / c.patch).unwrap();
    rec.submit().unwrap().wait().unwrap();
    let ev = nmse("vision", &dev.read_f32(&h).unwrap(), exp.f32("vision_out"));
    assert!(ev <= 1e-5, "[{label}] {name}: vision encoder NMSE {ev:e}");
    let ec = nmse("connector", &dev.read_f32(&conn).unwrap(), exp.f32("connector_out"));
    assert!(ec <= 1e-5, "[{label}] {name}: connector NMSE {ec:e}");

    // The whole prefill.
    let logits = model.logits_with(&ids, Some(&pixels)).unwrap();
    let e = nmse("logits", &logits, exp.f32("logits"));
    assert!(e <= 1e-5, "[{label}] {name}: logits NMSE {e:e}");

    // Eight greedy tokens (no stop tokens, as the fixture was made).
    let want = exp.ids("greedy");
    let mut s = model.session(ids.len() + want.len()).unwrap();
    let opts = SamplingOptions { max_tokens: want.len(), ..Default::default() };
    let out = s.generate_with(&ids, Some(&pixels), &opts, |_| {}).unwrap();
    assert_eq!(out.tokens, want, "[{label}] {name}: greedy tokens");

    // Through the batched engine: three branches of the image prompt at temperature 0 (sharing
    // its KV pages) next to a text-only request, all giving what they give alone.
    let mut engine =
        model.engine(flint_runtime::engine::EngineOptions { kv_tokens: 1024, page_size: 16, max_batch: 8 }).unwrap();
    let req = flint_runtime::engine::Request::new(ids.clone(), opts.clone());
    let image_req =
        engine.submit(req.clone().branches(3).with_pixels(Some(std::sync::Arc::new(pixels.clone())))).unwrap();
    let text_ids: Vec<u32> = ids.iter().copied().filter(|&t| t != vision.image_token_id).take(20).collect();
    let text_alone = {
        let mut s = model.session(text_ids.len() + 8).unwrap();
        s.generate(&text_ids, &opts, |_| {}).unwrap().tokens
    };
    let text_req = engine.submit(flint_runtime::engine::Request::new(text_ids, opts.clone())).unwrap();
    assert!(engine.submit(req.clone()).unwrap_err().to_string().contains("image tokens but no images"));
    let mut outputs = std::collections::HashMap::new();
    engine
        .run(|e| {
            if let flint_runtime::engine::Event::Finished { request, output } = e {
                outputs.insert(request, output);
            }
        })
        .unwrap();
    for (b, br) in outputs[&image_req].branches.iter().enumerate() {
        assert_eq!(br.tokens, want, "[{label}] {name}: engine branch {b}");
    }
    assert_eq!(outputs[&text_req].branches[0].tokens, text_alone, "[{label}] {name}: text request next to images");
    eprintln!(
        "[{label}] {name}: {} prompt tokens, {images} tiles: NMSE vision {ev:.1e}, connector {ec:.1e}, logits {e:.1e}; greedy tokens equal",
        ids.len()
    );
}

#[test]
fn tiny_idefics3_models_match_transformers_stage_by_stage() {
    for dev in devices() {
        for name in ["tiny-a", "tiny-b"] {
            check_model(&dev, name);
        }
    }
}
