//! Audio in and Whisper, against transformers and CTranslate2 (fixtures made by
//! xtask/scripts/whisper_features_fixtures.py and whisper_fixtures.py): speech spoken by
//! espeak-ng, read from WAV, resampled to 16 kHz where it is not, and its Whisper log-mel
//! features on every adapter present, compared with `WhisperFeatureExtractor`'s float64
//! features (the CPU reference is held to the same fixtures); then Whisper tiny.en's encoder
//! output and greedy transcription against CTranslate2's on the same weights.

use std::path::{Path, PathBuf};

use flint_runtime::audio::{LogMel, read_wav};

mod support;
use support::{devices, edited_copy, nmse};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures").join("audio")
}

/// One fixture: its features `[mels, frames]` for the frames with sound, and the floor every
/// later frame of the window sits on.
struct Expected {
    mels: usize,
    frames: usize,
    floor: f32,
    features: Vec<f32>,
    wav: PathBuf,
}

fn expected(key: &str) -> Expected {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixtures().join("features.json")).unwrap()).unwrap();
    let e = &index[key];
    let arr = flint_runtime::npy::read(&fixtures().join(format!("{key}.npy"))).unwrap();
    let (mels, frames) = (e["mels"].as_u64().unwrap() as usize, e["frames"].as_u64().unwrap() as usize);
    assert_eq!(arr.shape, [mels, frames]);
    Expected {
        mels,
        frames,
        floor: e["floor"].as_f64().unwrap() as f32,
        features: arr.data,
        wav: fixtures().join(e["wav"].as_str().unwrap()),
    }
}

/// Compare flint's features `[3000, mels]` with the fixture: NMSE and the largest difference
/// over the frames with sound, and every later frame within `floor_tol` of the floor.
fn compare(got: &[f32], exp: &Expected, floor_tol: f32) -> (f64, f32) {
    assert_eq!(got.len(), 3000 * exp.mels);
    let (mut err, mut norm, mut worst) = (0f64, 0f64, 0f32);
    for t in 0..3000 {
        for m in 0..exp.mels {
            let g = got[t * exp.mels + m];
            assert!(g.is_finite(), "frame {t} mel {m}: {g}");
            if t < exp.frames {
                let w = exp.features[m * exp.frames + t];
                err += f64::from(g - w).powi(2);
                norm += f64::from(w).powi(2);
                worst = worst.max((g - w).abs());
            } else {
                // Silence: on the floor, which depends on the clip's maximum alone.
                assert!((g - exp.floor).abs() <= floor_tol, "frame {t} mel {m}: {g}, floor {}", exp.floor);
            }
        }
    }
    (err / norm, worst)
}

/// 16 kHz speech: flint's features equal transformers' float64 ones to f32 rounding of the DFT.
/// Measured NMSE 6.4e-13 to 1.2e-12 and largest difference 1.5e-5 to 1.7e-5 (of values within
/// [-1, 1.5]) on lavapipe and llvmpipe GL; the bars are about 100x and 10x that. Frames cut one
/// sample late already move the clip's maximum, and so its floor, by 3e-5.
#[test]
fn speech_features_match_whisper_feature_extractor() {
    for key in ["fox.80", "fox.128"] {
        let exp = expected(key);
        let audio = read_wav(&exp.wav).unwrap();
        assert_eq!(audio.sample_rate, 16_000);
        for dev in devices() {
            let mel = LogMel::new(&dev, exp.mels).unwrap();
            let (got, windows) = mel.features(&dev, &audio).unwrap();
            assert_eq!(windows, 1);
            let (nmse, worst) = compare(&got, &exp, 1e-5);
            let label = dev.caps().short_label();
            assert!(nmse < 1e-10 && worst < 2e-4, "[{key} on {label}] NMSE {nmse:e}, largest difference {worst}");
        }
    }
}

/// The f64 reference meets the same fixture (so conformance, which holds the kernels to the
/// reference, holds them to transformers too): measured NMSE 5e-15, largest difference 1.2e-7,
/// the fixture's own rounding to f32.
#[test]
fn the_reference_matches_whisper_feature_extractor() {
    let exp = expected("fox.80");
    let audio = read_wav(&exp.wav).unwrap();
    let (padded, _) = flint_runtime::audio::whisper_windows(&audio.samples);
    let got = flint_ref::audio::log_mel(&flint_ref::audio::MelParams::whisper(1, 80), &padded).unwrap();
    let (nmse, worst) = compare(&got, &exp, 1e-6);
    assert!(nmse < 1e-13 && worst < 1e-6, "NMSE {nmse:e}, largest difference {worst}");
}

/// 22.05 kHz speech through flint's resampler (rubato) against transformers' features of sox's
/// 16 kHz version: the two resamplers differ in their anti-aliasing filters near 8 kHz, where
/// Whisper's top mel filters sit, and in their delay (rubato leads by half an input sample).
/// Measured NMSE 1.5e-5 and largest difference 0.029 (a quiet top mel bin); the bar is 7x that.
/// The 22.05 kHz samples taken as 16 kHz ones give NMSE 1.4, every other sample 1.9.
#[test]
fn resampled_speech_features_stay_close_to_whisper_feature_extractor() {
    let exp = expected("weather.80");
    let audio = read_wav(&exp.wav).unwrap();
    assert_eq!(audio.sample_rate, 22_050);
    let dev = &devices()[0];
    let (got, _) = LogMel::new(dev, 80).unwrap().features(dev, &audio).unwrap();
    // The floor follows the clip's loudest mel value, which the resamplers move a little.
    let (nmse, worst) = compare(&got, &exp, 1e-3);
    assert!(nmse < 1e-4, "NMSE {nmse:e}, largest difference {worst}");
}

/// Whisper tiny.en (fetched on first use) on one adapter, loaded once per test binary.
fn whisper(dev: &flint_gpu::Device) -> flint_runtime::whisper::Whisper {
    let path =
        flint_runtime::fetch::resolve(Some("whisper-tiny.en"), &mut |_| {}).expect("whisper-tiny.en can be fetched");
    flint_runtime::whisper::Whisper::load(dev, &path).expect("whisper-tiny.en loads")
}

/// The encoder of one window against CTranslate2's (float32 on the CPU, same weights): the
/// stem convolutions, sinusoidal positions, four blocks and the final norm. Measured NMSE
/// 1.6e-10 (lavapipe) and 1.4e-10 (llvmpipe GL) over the rows that see the speech and some
/// silence: f32 summation order alone. Without the GELU after the first convolution it is 2.4.
#[test]
fn whisper_encoder_matches_ctranslate2() {
    let want = flint_runtime::npy::read(&fixtures().join("fox.encoder.npy")).unwrap();
    let rows = want.shape[0];
    let audio = read_wav(&fixtures().join("fox.16k.wav")).unwrap();
    for dev in devices() {
        let w = whisper(&dev);
        let (features, _) = w.log_mel().features(&dev, &audio).unwrap();
        let got = w.encode_host(&features).unwrap();
        let e = nmse(&got[..rows * w.cfg.d_model], &want.data);
        assert!(e < 1e-8, "[{}] encoder NMSE {e:e}", dev.caps().short_label());
    }
}

/// Greedy transcription of the espeak-ng clips equals CTranslate2's ids on the same weights,
/// window by window, with all clips' windows decoded together in one batch (the long clip has
/// two windows: four in all on the first adapter, the two short clips on the others; windows
/// leave the batch as they finish); the text is the ids' text.
#[test]
fn whisper_transcribes_as_ctranslate2_does() {
    let fixture: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixtures().join("whisper.json")).unwrap()).unwrap();
    for (i, dev) in devices().iter().enumerate() {
        let w = whisper(dev);
        // The long clip on the first adapter only (it is the slow one).
        let clips: Vec<(&String, &serde_json::Value)> =
            fixture["clips"].as_object().unwrap().iter().filter(|(name, _)| i == 0 || *name != "long").collect();
        let audio: Vec<_> =
            clips.iter().map(|(_, c)| read_wav(&fixtures().join(c["wav"].as_str().unwrap())).unwrap()).collect();
        let results = w.transcribe_many(&audio, 224).unwrap();
        let label = dev.caps().short_label();
        for ((name, clip), r) in clips.iter().zip(results) {
            let windows = clip["ids"].as_array().unwrap();
            let want: Vec<u32> = windows
                .iter()
                .flat_map(|win| win.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32))
                .collect();
            assert_eq!(r.ids, want, "[{name} on {label}] ids");
            assert_eq!(r.windows, windows.len(), "[{name}] windows");
            assert_eq!(r.text, clip["text"].as_str().unwrap(), "[{name} on {label}] text");
            assert!(r.logprobs.iter().all(|l| l.is_finite() && *l <= 0.0), "[{name}] log-probs {:?}", r.logprobs);
        }
    }
}

/// With timestamps (the prompt without `<|notimestamps|>`, Whisper's timestamp rules), the ids
/// equal CTranslate2's window by window, and the segments tile each clip in order.
#[test]
fn whisper_timestamps_match_ctranslate2() {
    let fixture: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixtures().join("whisper.json")).unwrap()).unwrap();
    let dev = &devices()[0];
    let w = whisper(dev);
    let clips: Vec<(&String, &serde_json::Value)> = fixture["clips"].as_object().unwrap().iter().collect();
    let audio: Vec<_> =
        clips.iter().map(|(_, c)| read_wav(&fixtures().join(c["wav"].as_str().unwrap())).unwrap()).collect();
    let opts = flint_runtime::whisper::TranscribeOptions { timestamps: true, ..Default::default() };
    let results = w.transcribe_with(&audio, &opts).unwrap();
    for ((name, clip), r) in clips.iter().zip(results) {
        let want: Vec<u32> = clip["ids_timestamps"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|win| win.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32))
            .collect();
        assert_eq!(r.ids, want, "[{name}] ids with timestamps");
        assert!(!r.segments.is_empty(), "[{name}] segments");
        let mut at = 0.0;
        for g in &r.segments {
            assert!(g.start >= at - 1e-9 && g.end >= g.start && g.end <= r.audio_seconds.max(30.0), "[{name}] {g:?}");
            at = g.start;
        }
        let joined: Vec<&str> = r.segments.iter().map(|g| g.text.as_str()).collect();
        assert_eq!(joined.join(" ").split_whitespace().count(), r.text.split_whitespace().count(), "[{name}] words");
    }
}

/// A tensor of the random Whisper fixture's expected.safetensors: f32 values, or ids stored as
/// i64.
fn expected_tensor(name: &str) -> (Vec<f32>, Vec<u32>) {
    let bytes =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/whisper-random/expected.safetensors"))
            .unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor(name).unwrap();
    match t.dtype() {
        safetensors::Dtype::F32 => {
            (t.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect(), vec![])
        }
        _ => (vec![], t.data().chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap()) as u32).collect()),
    }
}

/// A random multilingual Whisper from a Hugging Face directory (f16 safetensors, a vocabulary
/// whose special tokens follow the text tokens) against transformers stage by stage: the encoder
/// output, the decoder's teacher-forced logits after the language and task tokens, and greedy
/// generation with the config's suppressed tokens (which lets it emit a special token
/// mid-text, as transformers does), language detection, and French translation. Measured NMSE on lavapipe and llvmpipe GL: encoder 4.3e-13
/// to 4.4e-13, logits 1.9e-13 to 2.0e-13.
#[test]
fn a_random_hf_whisper_matches_transformers() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/whisper-random");
    let audio = read_wav(&fixtures().join("fox.16k.wav")).unwrap();
    let (want_enc, _) = expected_tensor("encoder");
    let (want_logits, _) = expected_tensor("logits");
    let (_, prompt) = expected_tensor("prompt");
    let (_, greedy) = expected_tensor("greedy");
    let (_, detected) = expected_tensor("detected");
    let (want_probs, _) = expected_tensor("language_probs");
    let (_, fr) = expected_tensor("greedy_fr_translate");
    for dev in devices() {
        let label = dev.caps().short_label();
        let w = flint_runtime::whisper::Whisper::load(&dev, &dir).unwrap();
        assert!(w.cfg.multilingual);
        assert_eq!(w.prompt(), prompt[..4], "[{label}] prompt");
        let (features, _) = w.log_mel().features(&dev, &audio).unwrap();
        let got = w.encode_host(&features).unwrap();
        let e = nmse(&got[..want_enc.len()], &want_enc);
        assert!(e < 1e-8, "[{label}] encoder NMSE {e:e}");
        let t = dev.upload_f32("features", &features, &[3000, 80], flint_gpu::DType::F32).unwrap();
        let mut rec = flint_gpu::Recorder::new(&dev);
        let encoded = w.encode(&mut rec, &t).unwrap();
        rec.submit().unwrap().wait().unwrap();
        let logits = w.decoder_logits(&encoded, &prompt).unwrap();
        let e = nmse(&logits, &want_logits);
        assert!(e < 1e-8, "[{label}] logits NMSE {e:e}");
        let (ids, _) = w.decode(&encoded, greedy.len()).unwrap();
        assert_eq!(ids, greedy, "[{label}] greedy ids");
        // Language detection: the token and its probability among the languages.
        let (code, p) = w.detect_language(&encoded).unwrap().expect("a multilingual model");
        assert_eq!(w.language_token(&code).unwrap(), detected[0], "[{label}] detected language");
        assert!((p - want_probs[0]).abs() < 1e-4, "[{label}] p(en) {p} against {}", want_probs[0]);
        // French translation: another language and task in the prompt.
        let prompt = w.prompt_for(Some("fr"), flint_runtime::whisper::Task::Translate).unwrap();
        let (ids, _) = w.decode_prompted(std::slice::from_ref(&encoded), &[prompt], fr.len()).unwrap().remove(0);
        assert_eq!(ids, fr, "[{label}] greedy ids, French translation");
        let e = w.prompt_for(Some("de"), flint_runtime::whisper::Task::Transcribe).unwrap_err().to_string();
        assert!(e.contains("\"de\"") && e.contains("en, fr"), "{e}");
    }
}

/// Hugging Face Whisper configs and files flint cannot run are refused at load, each error
/// naming the file and the field or tensor.
#[test]
fn whisper_configs_flint_cannot_run_are_refused_by_name() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/whisper-random");
    let dev = &devices()[0];
    let edited = |tag: &str, edit: &dyn Fn(&mut serde_json::Value), drop_file: Option<&str>| -> PathBuf {
        let files: Vec<&str> = ["model.safetensors", "tokenizer.json", "generation_config.json"]
            .into_iter()
            .filter(|f| drop_file != Some(*f))
            .collect();
        edited_copy(&src, &files, &format!("whisper-{tag}"), |c| edit(c))
    };
    // (tag, the config edit, a file left out, what the error must say)
    type Refusal<'a> = (&'a str, Box<dyn Fn(&mut serde_json::Value)>, Option<&'a str>, &'a [&'a str]);
    let cases: Vec<Refusal> = vec![
        ("ffn", Box::new(|c| c["decoder_ffn_dim"] = 100.into()), None, &["config.json", "decoder_ffn_dim"]),
        ("scale", Box::new(|c| c["scale_embedding"] = true.into()), None, &["config.json", "scale_embedding"]),
        ("positions", Box::new(|c| c["max_source_positions"] = 1000.into()), None, &["max_source_positions", "1500"]),
        ("width", Box::new(|c| c["d_model"] = 96.into()), None, &["config.json", "width 96"]),
        ("heads", Box::new(|c| c["encoder_attention_heads"] = 5.into()), None, &["config.json", "5 encoder heads"]),
        ("ctx", Box::new(|c| c["max_target_positions"] = 4.into()), None, &["config.json", "text context of 4"]),
        // A config that disagrees with the weights' shapes.
        ("mels", Box::new(|c| c["num_mel_bins"] = 128.into()), None, &["model.safetensors", "conv1.weight"]),
        ("no-tokenizer", Box::new(|_| {}), Some("tokenizer.json"), &["tokenizer.json"]),
    ];
    for (tag, edit, drop_file, says) in cases {
        let dir = edited(tag, &*edit, drop_file);
        let e = match flint_runtime::whisper::Whisper::load(dev, &dir) {
            Ok(_) => panic!("[{tag}] loaded"),
            Err(e) => e.to_string(),
        };
        for s in says {
            assert!(e.contains(s), "[{tag}] {e:?} does not say {s:?}");
        }
        std::fs::remove_dir_all(&dir).ok();
    }
}
