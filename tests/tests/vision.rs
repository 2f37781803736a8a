//! The multimodal path against Hugging Face transformers (fixtures made by
//! xtask/scripts/idefics3_fixtures.py): image preprocessing against the Idefics3 image
//! processor on three real-looking images, and two small random Idefics3 models stage by stage
//! (vision encoder, connector, prefill logits, greedy tokens) on every adapter present.

use std::path::{Path, PathBuf};

mod support;
use support::devices;

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
        ..ImageProcessor::smolvlm(index["tile"].as_u64().unwrap() as usize, 1)
    };
    for (name, want) in index["images"].as_object().unwrap() {
        let img = image::load(&dir.join(format!("{name}.png"))).unwrap();
        assert_eq!(
            (img.width as u64, img.height as u64),
            (want["width"].as_u64().unwrap(), want["height"].as_u64().unwrap())
        );
        let got = proc.process(&img).unwrap();
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

/// Gemma 3's processor (PIL's bilinear filter to one fixed size) against
/// `Gemma3ImageProcessorPil` on the three images, at its default 224x224 and at 96x40
/// (enlarging one way and shrinking the other): the 8-bit pixels equal, the normalised values
/// within f32 rounding.
#[test]
fn the_fixed_size_processor_matches_gemma3s_pixel_for_pixel() {
    use flint_runtime::image::{Filter, FixedSizeProcessor};
    let dir = fixtures().join("images");
    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("gemma3.json")).unwrap()).unwrap();
    for size in index["sizes"].as_array().unwrap() {
        let (w, h) = (size[0].as_u64().unwrap() as usize, size[1].as_u64().unwrap() as usize);
        let proc = FixedSizeProcessor {
            width: w,
            height: h,
            filter: Filter::Bilinear,
            mean: [0.5; 3],
            std: [0.5; 3],
            rescale: 1.0 / 255.0,
        };
        for name in index["images"].as_array().unwrap() {
            let name = name.as_str().unwrap();
            let img = image::load(&dir.join(format!("{name}.png"))).unwrap();
            let want = std::fs::read(dir.join(format!("{name}.gemma3-{w}x{h}.u8"))).unwrap();
            let r = proc.resized(&img).unwrap();
            let plane = w * h;
            let ours: Vec<u8> =
                (0..3).flat_map(|c| (0..plane).map(move |i| (c, i))).map(|(c, i)| r.data[i * 3 + c]).collect();
            let differ = ours.iter().zip(&want).filter(|(a, b)| a != b).count();
            assert_eq!(differ, 0, "{name} at {w}x{h}: {differ} of {} values differ", want.len());
            let pixels = proc.process(&img).unwrap();
            for (i, &v) in pixels.iter().enumerate() {
                let exp = ((f64::from(want[i]) / 255.0 - 0.5) / 0.5) as f32;
                assert!((v - exp).abs() <= 1e-6, "{name} at {w}x{h}: value {i}: {v} vs {exp}");
            }
        }
    }
    // Its settings come from the processor config; Pan & Scan and other filters are refused.
    let tmp = std::env::temp_dir().join(format!("flint-fixed-size-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let write = |v: serde_json::Value| std::fs::write(tmp.join("preprocessor_config.json"), v.to_string()).unwrap();
    write(serde_json::json!({"size": {"height": 896, "width": 896}, "resample": 2, "image_mean": [0.5, 0.5, 0.5]}));
    let p = FixedSizeProcessor::from_dir(&tmp, 224).unwrap();
    assert_eq!((p.width, p.height, p.filter), (896, 896, Filter::Bilinear));
    write(serde_json::json!({"do_pan_and_scan": true}));
    let e = FixedSizeProcessor::from_dir(&tmp, 224).unwrap_err().to_string();
    assert!(e.contains("preprocessor_config.json") && e.contains("do_pan_and_scan"), "{e}");
    write(serde_json::json!({"resample": 0}));
    let e = FixedSizeProcessor::from_dir(&tmp, 224).unwrap_err().to_string();
    assert!(e.contains("resample") && e.contains("is 0"), "{e}");
    std::fs::remove_dir_all(&tmp).unwrap();
}

/// Qwen2-VL's processor against `Qwen2VLImageProcessorPil` on the three images (min_pixels
/// 56*56, max_pixels 28*28*64): the smart-resized size and patch grid, the bicubic resize pixel
/// for pixel, and rows of the patch layout (the four patches of the first merged token, a
/// middle one and the last) within f32 rounding, with the sum of every value.
#[test]
fn the_patch_processor_matches_qwen2_vls() {
    use flint_runtime::image::PatchProcessor;
    let dir = fixtures().join("images");
    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("qwen2vl.json")).unwrap()).unwrap();
    let proc = PatchProcessor {
        min_pixels: index["min_pixels"].as_u64().unwrap() as usize,
        max_pixels: index["max_pixels"].as_u64().unwrap() as usize,
        ..PatchProcessor::qwen2_vl()
    };
    for (name, want) in index["images"].as_object().unwrap() {
        let img = image::load(&dir.join(format!("{name}.png"))).unwrap();
        let got = proc.process(&img).unwrap();
        let (h, w) = (want["height"].as_u64().unwrap() as usize, want["width"].as_u64().unwrap() as usize);
        assert_eq!((got.resized.height, got.resized.width), (h, w), "{name}: smart-resized size");
        let grid = &want["grid"];
        assert_eq!(
            (1, got.grid.0 as u64, got.grid.1 as u64),
            (grid[0].as_u64().unwrap(), grid[1].as_u64().unwrap(), grid[2].as_u64().unwrap()),
            "{name}: grid"
        );
        let expected = std::fs::read(dir.join(format!("{name}.qwen2vl.u8"))).unwrap();
        let differ = got.resized.data.iter().zip(&expected).filter(|(a, b)| a != b).count();
        assert_eq!(differ, 0, "{name}: {differ} of {} resized values differ", expected.len());
        let row = got.pixels.len() / (got.grid.0 * got.grid.1);
        assert_eq!(row, 3 * 2 * 14 * 14);
        for (r, values) in want["rows"].as_array().unwrap().iter().zip(want["values"].as_array().unwrap()) {
            let r = r.as_u64().unwrap() as usize;
            for (i, v) in values.as_array().unwrap().iter().enumerate() {
                let (ours, theirs) = (got.pixels[r * row + i], v.as_f64().unwrap() as f32);
                assert!((ours - theirs).abs() <= 1e-5, "{name}: pixel_values[{r}][{i}] {ours} vs {theirs}");
            }
        }
        let sum: f64 = got.pixels.iter().map(|&v| f64::from(v)).sum();
        let want_sum = want["sum"].as_f64().unwrap();
        assert!((sum - want_sum).abs() <= 1e-6 * want_sum.abs().max(1.0) + 1e-2, "{name}: sum {sum} vs {want_sum}");
    }
    // Python rounds halves to even: 42 / 28 = 1.5 rounds to 2 sides of 28, 70 / 28 = 2.5 to 2.
    assert_eq!(PatchProcessor::qwen2_vl().smart_resize(42, 70).unwrap(), (56, 56));
    let e = PatchProcessor::qwen2_vl().smart_resize(1, 300).unwrap_err().to_string();
    assert!(e.contains("aspect"), "{e}");
    // Settings from preprocessor_config.json: min/max_pixels, or size's shortest/longest_edge.
    let tmp = std::env::temp_dir().join(format!("flint-patch-proc-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let write = |v: serde_json::Value| std::fs::write(tmp.join("preprocessor_config.json"), v.to_string()).unwrap();
    write(serde_json::json!({"min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "resample": 3}));
    let p = PatchProcessor::from_dir(&tmp).unwrap();
    assert_eq!((p.min_pixels, p.max_pixels, p.patch), (3136, 12845056, 14));
    // Without image_mean / image_std, the family's three per-channel values, not the first one thrice.
    assert_eq!((p.mean, p.std), (PatchProcessor::qwen2_vl().mean, PatchProcessor::qwen2_vl().std));
    write(serde_json::json!({"size": {"shortest_edge": 6272, "longest_edge": 50176}}));
    let p = PatchProcessor::from_dir(&tmp).unwrap();
    assert_eq!((p.min_pixels, p.max_pixels), (6272, 50176));
    write(serde_json::json!({"patch_size": 0}));
    let e = PatchProcessor::from_dir(&tmp).unwrap_err().to_string();
    assert!(e.contains("preprocessor_config.json") && e.contains("patch_size"), "{e}");
    std::fs::remove_dir_all(&tmp).unwrap();
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

/// Every stage of one fixture model on one adapter. f32 weights, activations and KV cache: the
/// only differences from transformers are summation order and the GPU's exp/tanh, so NMSE stays
/// near 1e-10; 1e-5 is the bar for logits, and each stage is held to it too.
fn check_model(dev: &flint_gpu::Device, name: &str) {
    use flint_gpu::{DType, Recorder};
    use flint_runtime::generate::SamplingOptions;
    use flint_runtime::model::Model;
    use flint_runtime::multimodal::Pixels;

    let label = dev.caps().short_label();
    let dir = fixtures().join("idefics3");
    let model = Model::load(dev, dir.join(name)).unwrap();
    let vision = model.vision().expect("a vision tower");
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
    let ours = ours.unwrap().pixels.unwrap();
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
    let logits = model.logits_with(&ids, Some(&pixels.clone().into())).unwrap();
    let e = nmse("logits", &logits, exp.f32("logits"));
    assert!(e <= 1e-5, "[{label}] {name}: logits NMSE {e:e}");

    // Eight greedy tokens (no stop tokens, as the fixture was made).
    let want = exp.ids("greedy");
    let mut s = model.session(ids.len() + want.len()).unwrap();
    let opts = SamplingOptions { max_tokens: want.len(), ..Default::default() };
    let out = s.generate_with(&ids, Some(&pixels.clone().into()), &opts, |_| {}).unwrap();
    assert_eq!(out.tokens, want, "[{label}] {name}: greedy tokens");

    // Through the batched engine: three branches of the image prompt at temperature 0 (sharing
    // its KV pages) next to a text-only request, all giving what they give alone.
    let mut engine =
        model.engine(flint_runtime::engine::EngineOptions { kv_tokens: 1024, page_size: 16, max_batch: 8 }).unwrap();
    let req = flint_runtime::engine::Request::new(ids.clone(), opts.clone());
    let image_req = engine.submit(req.clone().branches(3).with_pixels(Some(pixels.clone()))).unwrap();
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

/// A copy of a fixture model directory under the system temp directory, to break.
fn scratch_copy(name: &str, tag: &str) -> PathBuf {
    let src = fixtures().join("idefics3").join(name);
    let dst = std::env::temp_dir().join(format!("flint-bad-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dst);
    std::fs::create_dir_all(&dst).unwrap();
    for e in std::fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
    dst
}

fn load_err(dir: &Path) -> String {
    let dev = &devices()[0];
    flint_runtime::model::Model::load(dev, dir).expect_err("the model must be refused").to_string()
}

fn edit_config(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let p = dir.join("config.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&p, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

#[test]
fn bad_model_directories_are_refused_naming_the_file_and_field() {
    // A missing field.
    let d = scratch_copy("tiny-a", "missing");
    edit_config(&d, |v| {
        v["vision_config"].as_object_mut().unwrap().remove("hidden_size");
    });
    let e = load_err(&d);
    assert!(e.contains("config.json") && e.contains("vision_config.hidden_size") && e.contains("missing"), "{e}");
    // Contradictory fields: heads that do not divide the width.
    edit_config(&d, |v| {
        v["vision_config"]["hidden_size"] = 32.into();
        v["vision_config"]["num_attention_heads"] = 5.into();
    });
    let e = load_err(&d);
    assert!(e.contains("config.json") && e.contains("5 heads do not divide hidden_size 32"), "{e}");
    // A field of the wrong type.
    edit_config(&d, |v| {
        v["vision_config"]["num_attention_heads"] = "four".into();
    });
    let e = load_err(&d);
    assert!(e.contains("vision_config.num_attention_heads") && e.contains("not a non-negative integer"), "{e}");
    // A config that disagrees with the weights: the tensor and both shapes are named.
    edit_config(&d, |v| {
        v["vision_config"]["num_attention_heads"] = 4.into();
        v["text_config"]["intermediate_size"] = 96.into();
    });
    let e = load_err(&d);
    assert!(e.contains("model.safetensors") && e.contains("mlp.gate_proj.weight") && e.contains("[128, 64]"), "{e}");
    // An architecture flint does not run.
    edit_config(&d, |v| v["model_type"] = "mllama".into());
    let e = load_err(&d);
    assert!(e.contains("model_type") && e.contains("mllama"), "{e}");
    std::fs::remove_dir_all(&d).unwrap();

    // Weights: truncated, and a tensor of an integer dtype.
    let d = scratch_copy("tiny-a", "weights");
    let w = d.join("model.safetensors");
    let bytes = std::fs::read(&w).unwrap();
    std::fs::write(&w, &bytes[..bytes.len() - 100]).unwrap();
    let e = load_err(&d);
    assert!(e.contains("model.safetensors") && e.contains("bad safetensors"), "{e}");
    let mut tensors = std::collections::HashMap::new();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
    let ints = vec![0u8; 32 * 4];
    for n in &names {
        let t = st.tensor(n).unwrap();
        if n == "model.vision_model.post_layernorm.weight" {
            tensors.insert(
                n.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::I32, vec![32], &ints).unwrap(),
            );
        } else {
            tensors.insert(n.clone(), t);
        }
    }
    safetensors::serialize_to_file(tensors, None, &w).unwrap();
    let e = load_err(&d);
    assert!(e.contains("post_layernorm.weight") && e.contains("I32"), "{e}");
    // No weights at all.
    std::fs::remove_file(&w).unwrap();
    let e = load_err(&d);
    assert!(e.contains("neither model.safetensors"), "{e}");
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn bad_images_are_refused_naming_the_file() {
    let dir = std::env::temp_dir().join(format!("flint-bad-images-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // Not an image.
    let p = dir.join("notes.png");
    std::fs::write(&p, b"these are not pixels").unwrap();
    let e = image::load(&p).unwrap_err().to_string();
    assert!(e.contains("notes.png") && e.contains("not a readable image"), "{e}");
    // A PNG whose header claims 100000 x 100000 pixels: refused before anything is decoded.
    let chunk = |kind: &[u8], body: &[u8]| -> Vec<u8> {
        let mut c = 0xffff_ffffu32;
        for &b in kind.iter().chain(body) {
            c ^= u32::from(b);
            for _ in 0..8 {
                c = if c & 1 != 0 { (c >> 1) ^ 0xedb8_8320 } else { c >> 1 };
            }
        }
        let mut out = (body.len() as u32).to_be_bytes().to_vec();
        out.extend(kind);
        out.extend(body);
        out.extend((!c).to_be_bytes());
        out
    };
    let mut ihdr = Vec::new();
    ihdr.extend(100_000u32.to_be_bytes());
    ihdr.extend(100_000u32.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(chunk(b"IHDR", &ihdr));
    png.extend(chunk(b"IDAT", &[0x78, 0x9c, 0x03, 0x00]));
    png.extend(chunk(b"IEND", &[]));
    let p = dir.join("huge.png");
    std::fs::write(&p, &png).unwrap();
    let e = image::load(&p).unwrap_err().to_string();
    assert!(e.contains("huge.png") && e.contains("100000x100000") && e.contains("limit"), "{e}");
    // A truncated PNG: the header is fine, the pixels are missing.
    let good = std::fs::read(fixtures().join("images").join("photo.png")).unwrap();
    let p = dir.join("cut.png");
    std::fs::write(&p, &good[..good.len() / 2]).unwrap();
    let e = image::load(&p).unwrap_err().to_string();
    assert!(e.contains("cut.png") && e.contains("does not decode"), "{e}");
    // A file that is not there.
    assert!(image::load(&dir.join("missing.png")).unwrap_err().to_string().contains("missing.png"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn prompts_and_pixels_that_disagree_are_refused() {
    use flint_runtime::model::Model;
    use flint_runtime::multimodal::Pixels;
    let dev = &devices()[0];
    let model = Model::load(dev, fixtures().join("idefics3").join("tiny-a")).unwrap();
    let img = image::load(&fixtures().join("idefics3").join("tiny-a.image0.png")).unwrap();
    let e = model.multimodal_prompt("<image> and <image>", std::slice::from_ref(&img), false).unwrap_err().to_string();
    assert!(e.contains("2 <image> placeholders for 1 images"), "{e}");
    let (ids, pixels) = model.multimodal_prompt("Look:", &[img], false).unwrap();
    let pixels = pixels.unwrap().pixels.unwrap();
    let fewer = Pixels {
        images: pixels.images - 1,
        data: pixels.data[..(pixels.images - 1) * 3 * 32 * 32].to_vec(),
        ..pixels.clone()
    };
    let e = model.logits_with(&ids, Some(&fewer.into())).unwrap_err().to_string();
    assert!(e.contains("image tokens") && e.contains("make 16"), "{e}");
    let e = model.logits_with(&ids, None).unwrap_err().to_string();
    assert!(e.contains("no images were given"), "{e}");
    let mut nan = pixels.clone();
    nan.data[3 * 32 * 32 + 5] = f32::NAN;
    let e = model.logits_with(&ids, Some(&nan.into())).unwrap_err().to_string();
    assert!(e.contains("pixel value 3077 (image 1) is NaN: pixel values must be finite"), "{e}");
    let big = Pixels { side: 64, data: vec![0.0; pixels.images * 3 * 64 * 64], ..pixels };
    let e = model.logits_with(&ids, Some(&big.into())).unwrap_err().to_string();
    assert!(e.contains("image tokens"), "{e}");
}

/// A model directory's files given as bytes (what a browser page fetched) load as the
/// directory does: same prompt ids and logits; a missing file is named in the error.
#[test]
fn a_model_directory_loads_from_its_files_in_memory() {
    use flint_runtime::model::Model;
    let dev = &devices()[0];
    let dir = fixtures().join("idefics3").join("tiny-a");
    let mut files = std::collections::HashMap::new();
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        files.insert(p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap());
    }
    let from_disk = Model::load(dev, &dir).unwrap();
    let in_memory = Model::from_hf_files(dev, "tiny-a", files.clone()).unwrap();
    assert_eq!(in_memory.path(), Path::new("tiny-a"));
    let img = image::load(&fixtures().join("idefics3").join("tiny-a.image0.png")).unwrap();
    let (a, pa) = from_disk.multimodal_prompt("<image>What is it?", std::slice::from_ref(&img), true).unwrap();
    let (b, pb) = in_memory.multimodal_prompt("<image>What is it?", &[img], true).unwrap();
    assert_eq!(a, b, "prompt ids");
    assert_eq!(pa, pb, "pixels");
    assert_eq!(from_disk.logits_with(&a, pa.as_ref()).unwrap(), in_memory.logits_with(&b, pb.as_ref()).unwrap());
    files.remove("tokenizer.json");
    let e = Model::from_hf_files(dev, "tiny-a", files).unwrap_err().to_string();
    assert!(e.contains("tiny-a/tokenizer.json") && e.contains("missing"), "{e}");
}
