//! `cargo xtask fuzz-seeds`: the starting corpora of the fuzz targets other than GGUF's (whose
//! seeds come from xtask/scripts/gguf_fuzz_seeds.py): small valid inputs that get past each
//! reader's first checks, so the fuzzer explores the paths behind them.
//! - safetensors_config: the two Idefics3 fixture configs and a Llama config, each with a small
//!   safetensors file (f32, f16 and bf16 tensors), in the target's layout (u16 length, config,
//!   weights).
//! - chat_template: the fixtures' and the cached models' chat templates (those that have one),
//!   and a few of Jinja's
//!   constructs.
//! - image: a 7x5 image as PNG (RGB, RGBA, gray, 16-bit), JPEG, GIF, BMP and WebP, and a
//!   300x20 strip that the processor splits into tiles.
//! - request_line: request lines with every field.

use std::path::Path;

use anyhow::{Context, Result};
use image::{DynamicImage, ImageFormat, Rgb, RgbImage};
use serde_json::{Value, json};

fn write(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join(name), bytes).with_context(|| format!("writing {}", dir.join(name).display()))
}

/// A safetensors file holding `tensors` (name, dtype, shape, bytes).
fn safetensors(tensors: &[(&str, &str, Vec<usize>, Vec<u8>)]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut offset = 0;
    for (name, dtype, shape, bytes) in tensors {
        header.insert(
            name.to_string(),
            json!({"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + bytes.len()]}),
        );
        offset += bytes.len();
    }
    let mut h = serde_json::to_vec(&Value::Object(header)).expect("json");
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h);
    for (_, _, _, bytes) in tensors {
        out.extend(bytes);
    }
    out
}

fn hf_seed(config: &Value, weights: &[u8]) -> Vec<u8> {
    let c = serde_json::to_vec(config).expect("json");
    let mut out = (c.len() as u16).to_le_bytes().to_vec();
    out.extend(c);
    out.extend(weights);
    out
}

fn images() -> Result<Vec<(String, Vec<u8>)>> {
    let rgb = RgbImage::from_fn(7, 5, |x, y| Rgb([(x * 36) as u8, (y * 50) as u8, ((x + y) * 20) as u8]));
    let img = DynamicImage::ImageRgb8(rgb);
    let strip = DynamicImage::ImageRgb8(RgbImage::from_fn(300, 20, |x, y| Rgb([x as u8, (y * 12) as u8, 128])));
    let mut out = Vec::new();
    let mut enc = |name: &str, img: &DynamicImage, fmt: ImageFormat| -> Result<()> {
        let mut bytes = std::io::Cursor::new(Vec::new());
        img.write_to(&mut bytes, fmt).with_context(|| name.to_string())?;
        out.push((name.to_string(), bytes.into_inner()));
        Ok(())
    };
    enc("rgb.png", &img, ImageFormat::Png)?;
    enc("rgba.png", &DynamicImage::ImageRgba8(img.to_rgba8()), ImageFormat::Png)?;
    enc("gray.png", &DynamicImage::ImageLuma8(img.to_luma8()), ImageFormat::Png)?;
    enc("rgb16.png", &DynamicImage::ImageRgb16(img.to_rgb16()), ImageFormat::Png)?;
    enc("rgb.jpg", &img, ImageFormat::Jpeg)?;
    enc("rgb.gif", &DynamicImage::ImageRgba8(img.to_rgba8()), ImageFormat::Gif)?;
    enc("rgb.bmp", &img, ImageFormat::Bmp)?;
    enc("rgba.webp", &DynamicImage::ImageRgba8(img.to_rgba8()), ImageFormat::WebP)?;
    enc("strip.png", &strip, ImageFormat::Png)?;
    Ok(out)
}

/// Write the seeds under `root` (fuzz/corpus).
pub fn run(root: &Path) -> Result<()> {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures");

    // Hugging Face directories: configs with small weights in each dtype.
    let f32s: Vec<u8> = (0..24).flat_map(|i| (i as f32 / 8.0).to_le_bytes()).collect();
    let f16s: Vec<u8> = (0..24u16).flat_map(|i| (0x3c00 + i).to_le_bytes()).collect();
    let weights = safetensors(&[
        ("model.norm.weight", "F32", vec![4, 6], f32s),
        ("model.embed_tokens.weight", "F16", vec![6, 4], f16s.clone()),
        ("lm_head.weight", "BF16", vec![2, 12], f16s),
    ]);
    let dir = root.join("safetensors_config");
    for name in ["tiny-a", "tiny-b"] {
        let path = fixtures.join(format!("idefics3/{name}/config.json"));
        let config: Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
        write(&dir, &format!("idefics3-{name}"), &hf_seed(&config, &weights))?;
    }
    let llama = json!({
        "model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
        "num_key_value_heads": 2, "num_hidden_layers": 2, "vocab_size": 100, "rms_norm_eps": 1e-5,
        "max_position_embeddings": 256, "rope_theta": 10000.0, "tie_word_embeddings": true,
        "rope_scaling": {"rope_type": "linear", "factor": 2.0}
    });
    write(&dir, "llama", &hf_seed(&llama, &weights))?;

    // Chat templates: the fixtures' and the cached models'.
    let dir = root.join("chat_template");
    let jinja = fixtures.join("idefics3/tiny-a/chat_template.jinja");
    write(&dir, "idefics3.jinja", &std::fs::read(&jinja).with_context(|| jinja.display().to_string())?)?;
    let cache = flint_runtime::fetch::cache_dir();
    for model in ["SmolLM2-135M-Instruct.Q4_1.gguf", "gemma-3-270m-q4_k_m.gguf"] {
        let path = cache.join("models").join(model);
        match flint_runtime::gguf::Gguf::open(&path) {
            Ok(g) => match g.get_str("tokenizer.chat_template") {
                Ok(t) => write(&dir, &format!("{model}.jinja"), t.as_bytes())?,
                Err(_) => eprintln!("{model} has no chat template"),
            },
            Err(e) => eprintln!("skipping {model} (run `flint fetch` for it): {e}"),
        }
    }
    for (name, t) in [
        (
            "loop.jinja",
            "{% for m in messages %}{% for n in messages %}{{ m.role }}{{ n['content'] }}{% endfor %}{% endfor %}",
        ),
        (
            "macro.jinja",
            "{% macro f(x) %}{{ x | trim }}{% endmacro %}{{ f(messages[0].content) }}{{ raise_exception('no') if not add_generation_prompt }}",
        ),
        (
            "set.jinja",
            "{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}{% endfor %}{{ ns.n * 'ab' }}{{ messages | tojson }}",
        ),
        (
            "methods.jinja",
            "{{ bos_token }}{% for m in messages %}{{ m['content'] if m['content'] is string else m['content'][0]['type'] | upper }}{{ m.role.startswith('u') }}{{ m.role.split('s') }}{% endfor %}",
        ),
    ] {
        write(&dir, name, t.as_bytes())?;
    }

    // Images.
    let dir = root.join("image");
    for (name, bytes) in images()? {
        write(&dir, &name, &bytes)?;
    }

    // Request lines.
    let dir = root.join("request_line");
    for (name, line) in [
        ("plain", r#"{"prompt": "What is 2 + 2?"}"#),
        (
            "all",
            r#"{"prompt": "hi", "mode": "contemplate", "branches": 4, "max_tokens": 64, "temperature": 0.5, "top_k": 40, "top_p": 0.9, "seed": 1, "chat": true, "images": ["a.png"]}"#,
        ),
        ("think", r#"{"prompt": "\u00e9\n\"q\"", "mode": "think", "temperature": 0}"#),
    ] {
        write(&dir, name, line.as_bytes())?;
    }
    Ok(())
}
