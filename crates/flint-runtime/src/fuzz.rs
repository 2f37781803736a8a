//! The bodies of flint's fuzz targets (`fuzz/`, run by `cargo fuzz`), here so that the tests
//! replay each target's corpus through exactly the code the fuzzer ran. Each takes arbitrary
//! bytes, drives one reader of untrusted input as the loader or the command line would, and
//! returns how far it got; it must never panic, hang or allocate without bound. They do
//! nothing a user needs, so they are hidden from the docs.

use std::path::Path;

use serde_json::json;

use crate::gguf::Gguf;
use crate::hf::{Config, HfDir};
use crate::model::config::DecoderConfig;
use crate::model::vision::VisionConfig;
use crate::request::RequestLine;
use crate::{Result, RuntimeError};

/// Tensors up to this many values are converted to f32 (larger ones only have their bytes
/// located), so that one input cannot take long.
const CONVERT_LIMIT: usize = 1 << 16;

/// A GGUF file: parse, then the decoder config, the tensor check, the tokenizer and every
/// small tensor's f32 values.
pub fn gguf(data: &[u8]) -> Result<()> {
    let g = Gguf::from_bytes("fuzz.gguf", data.to_vec())?;
    let cfg = DecoderConfig::from_gguf(&g);
    if let Ok(cfg) = &cfg {
        let _ = cfg.check_blocks(&g);
    }
    let _ = crate::tokenizer::Tokenizer::from_gguf(&g);
    for t in &g.tensors {
        let _ = g.data(t);
        if t.numel() <= CONVERT_LIMIT {
            let _ = g.to_f32(t);
        }
    }
    cfg.map(|_| ()).map_err(Into::into)
}

/// A Hugging Face directory: the first two bytes (little-endian) give the length of
/// `config.json`, the rest is `model.safetensors`. Parse both, read the decoder config as a
/// Llama or an Idefics3 directory does (and the vision config), and every small tensor's
/// values at its own shape.
pub fn safetensors_config(data: &[u8]) -> Result<()> {
    let split = match data {
        [a, b, ..] => usize::from(u16::from_le_bytes([*a, *b])).min(data.len() - 2),
        _ => return Err(RuntimeError::Model("fuzz: too short".into())),
    };
    let (config, weights) = data[2..].split_at(split);
    let dir = Path::new("fuzz");
    let config: serde_json::Value = serde_json::from_slice(config)
        .map_err(|e| RuntimeError::Model(format!("fuzz/config.json: not valid JSON: {e}")))?;
    let hf = HfDir::from_parts(dir, config, vec![(dir.join("model.safetensors"), weights.to_vec())])?;
    for name in hf.tensor_names() {
        let shape = hf.shape(name)?.to_vec();
        if shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).is_some_and(|n| n <= CONVERT_LIMIT) {
            let _ = hf.f32(name, &shape);
        }
    }
    let top = Config::new(dir.join("config.json"), &hf.config);
    let llama = crate::model::arch::llama::hf_config(&top, false);
    let text = top.object("text_config").and_then(|t| crate::model::arch::llama::hf_config(&t, true));
    if let Ok(text) = &text {
        let _ = VisionConfig::from_hf(&top, text.hidden);
    }
    let gemma = crate::model::arch::gemma3::hf_config(&top, true);
    let _ = VisionConfig::from_gemma3(&top, 64);
    let _ = crate::model::arch::qwen2::hf_config(&top, false);
    llama.or(text).or(gemma).map(|_| ())
}

/// A chat template: the input is the template's source, rendered over a short text conversation
/// with fuel for `fuel` instructions (the fuzzer gives less than the tokenizer's
/// [`crate::tokenizer::TEMPLATE_FUEL`], so that a loop costs milliseconds, not seconds).
pub fn chat_template(data: &[u8], fuel: u64) -> Result<String> {
    let template = std::str::from_utf8(data).map_err(|e| RuntimeError::Tokenizer(format!("fuzz: not UTF-8: {e}")))?;
    let ctx = json!({
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "What is this?"},
            {"role": "assistant", "content": "A cat."},
            {"role": "user", "content": "Why?"},
        ],
        "add_generation_prompt": true,
        "bos_token": "<s>",
        "eos_token": "</s>",
        "enable_thinking": false,
    });
    crate::tokenizer::render_chat_template(template, &ctx, fuel)
}

/// An image file: decode it (with [`crate::image::decode`]'s limits), then run it through a
/// small Idefics3 processor (64-pixel tiles, splitting on) and expand its prompt. Images over
/// `max_pixels` are refused before decoding (the fuzzer's budget, not flint's limit: decoding
/// a valid 8000x8000 image is slow, not a bug).
pub fn image(data: &[u8], max_pixels: u64) -> Result<usize> {
    let name = Path::new("fuzz.img");
    if let Ok((w, h)) = crate::image::reader(data).and_then(|r| r.into_dimensions().map_err(std::io::Error::other))
        && u64::from(w) * u64::from(h) > max_pixels
    {
        return Err(RuntimeError::Request("fuzz: over the fuzzer's pixel budget".into()));
    }
    let img = crate::image::decode(name, data)?;
    let p = crate::image::ImageProcessor::smolvlm(64, 4);
    let out = p.process(&img)?;
    let prompt = crate::image::expand_prompt("<image>hi", &[(out.rows, out.cols)], p.image_seq_len)?;
    Ok(out.pixels.len() + prompt.len())
}

/// One line of a `--prompts` file: parse and check it, and resolve its mode.
pub fn request_line(data: &[u8]) -> Result<RequestLine> {
    let line = std::str::from_utf8(data).map_err(|e| RuntimeError::Request(format!("fuzz: not UTF-8: {e}")))?;
    let l = RequestLine::parse(line)?;
    l.mode("instant", 1)?;
    Ok(l)
}

/// A WAV file: decode it (header limits, formats, channels), then resample what it holds to
/// 16 kHz when it holds at most `max_samples` samples.
pub fn wav(data: &[u8], max_samples: usize) -> Result<usize> {
    let audio = crate::audio::decode_wav(Path::new("fuzz.wav"), data)?;
    if audio.samples.len() > max_samples {
        return Err(RuntimeError::Request("fuzz: over the fuzzer's sample budget".into()));
    }
    Ok(audio.resampled(16_000)?.samples.len())
}

/// A CTranslate2 `model.bin`: parse it, then read every small variable as floats and every
/// scalar as an integer.
pub fn ct2(data: &[u8]) -> Result<usize> {
    let f = crate::ct2::Ct2File::parse(Path::new("fuzz.bin"), data.to_vec())?;
    let names: Vec<String> = f.names().into_iter().map(String::from).collect();
    for name in &names {
        let v = f.get(name).expect("listed").clone();
        if v.shape.iter().product::<usize>() <= CONVERT_LIMIT {
            let _ = f.f32s(name, &v.shape);
        }
        if v.shape.is_empty() {
            let _ = f.scalar(name);
        }
    }
    Ok(names.len())
}
