//! Audio in the unified decoder: two tiny random Qwen2-Audio models (`qwen2_audio`, made by
//! xtask/scripts/qwen2_audio_fixtures.py) against transformers, stage by stage, on every adapter
//! present: the processor's prompt ids (each `<|AUDIO|>` expanded to its clip's tokens) and
//! log-mel features, the audio tower's output (padded keys masked, pairs pooled, normed) and the
//! projector's, the prefill logits and 8 greedy tokens; then the same prompt through the engine
//! (branches of one prefill) and the reasoning modes, and the inputs flint refuses.

use std::path::{Path, PathBuf};

mod support;
use support::{ConfigEdit, Expected, devices, nmse};

use flint_runtime::audio::{Audio, read_wav};
use flint_runtime::generate::SamplingOptions;
use flint_runtime::model::{Model, PromptSpec};
use flint_runtime::reasoning::{self, Mode};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

fn clips(names: &[&str]) -> Vec<Audio> {
    names.iter().map(|n| read_wav(&fixtures().join("audio").join(n)).unwrap()).collect()
}

/// transformers' features `[clips, mels, 3000]` as flint lays them out, `[clips, 3000, mels]`.
fn transposed(f: &[f32], mels: usize) -> Vec<f32> {
    let per = 3000 * mels;
    let mut out = vec![0.0; f.len()];
    for c in 0..f.len() / per {
        for m in 0..mels {
            for t in 0..3000 {
                out[c * per + t * mels + m] = f[c * per + m * 3000 + t];
            }
        }
    }
    out
}

/// One fixture model on every adapter: every stage against transformers, NMSE at most 1e-5
/// (f32 weights and cache: only summation order and the GPU's exp/erf differ), the features
/// at most 1e-8 (the log-mel kernels' own cases measure 4e-15 to 1.5e-12), greedy tokens equal.
fn check(name: &str, clip_names: &[&str], question: &str) {
    let exp = Expected::open(fixtures().join("qwen2-audio").join(format!("{name}.expected.safetensors")));
    let audio = clips(clip_names);
    for dev in devices() {
        let label = format!("{} {name}", dev.caps().short_label());
        let model = Model::load(&dev, fixtures().join("qwen2-audio").join(name)).unwrap();
        let tower = model.audio().expect("an audio tower").clone();
        let spec = PromptSpec { text: question, audio: &audio, chat: true, ..Default::default() };
        let (ids, media) = model.build_prompt(&spec).unwrap();
        assert_eq!(ids, exp.ids("input_ids"), "[{label}] prompt ids");
        let media = media.unwrap();
        let features = media.audio.clone().unwrap();
        let lengths: Vec<usize> = exp.ids("lengths").iter().map(|&l| l as usize).collect();
        assert_eq!(features.frames, lengths, "[{label}] frames of audio");
        let want = transposed(&exp.f32s("features"), tower.mels());
        let ef = nmse(&features.data, &want);
        assert!(ef <= 1e-8, "[{label}] features NMSE {ef:e}");

        // The tower on transformers' own features, so that its stages are compared alone.
        let theirs = flint_runtime::AudioFeatures { data: want, ..features.clone() };
        let (enc, proj) = tower.stages(&theirs).unwrap();
        let ee = nmse(&enc, &exp.f32s("encoder"));
        assert!(ee <= 1e-5, "[{label}] audio tower NMSE {ee:e}");
        let ep = nmse(&proj, &exp.f32s("projected"));
        assert!(ep <= 1e-5, "[{label}] projector NMSE {ep:e}");
        // The mask on the padded keys shows: without it the first clip's rows differ.
        let unmasked = flint_runtime::AudioFeatures { frames: vec![3000; lengths.len()], ..theirs.clone() };
        let (all, _) = tower.stages(&unmasked).unwrap();
        let n0 = features.tokens()[0] * (enc.len() / features.tokens().iter().sum::<usize>());
        let eu = nmse(&all[..n0], &exp.f32s("encoder")[..n0]);
        assert!(eu > 1e-3, "[{label}] the unmasked tower should differ, NMSE {eu:e}");

        let logits = model.logits_with(&ids, Some(&media)).unwrap();
        let el = nmse(&logits, &exp.f32s("logits"));
        eprintln!(
            "[{label}] NMSE features {ef:.1e} tower {ee:.1e} projector {ep:.1e} logits {el:.1e} (unmasked {eu:.1e})"
        );
        assert!(el <= 1e-5, "[{label}] logits NMSE {el:e}");
        let greedy = exp.ids("greedy");
        let opts = SamplingOptions { max_tokens: greedy.len(), ..Default::default() };
        let mut s = model.session(ids.len() + greedy.len()).unwrap();
        let out = s.generate_with(&ids, Some(&media), &opts, |_| {}).unwrap();
        assert_eq!(out.tokens, greedy, "[{label}] greedy tokens");

        // A prefill chunk shorter than the prompt: the text before the first audio token runs in
        // chunks, the rest (the clips and after) whole, with the same tokens.
        let mut s = model.session(ids.len() + greedy.len()).unwrap().with_prefill_chunk(8);
        let out = s.generate_with(&ids, Some(&media), &opts, |_| {}).unwrap();
        assert_eq!(out.tokens, greedy, "[{label}] greedy tokens after a chunked head");

        // Through the batched engine (chunks of 8 here too): two greedy branches of the audio
        // prompt beside a text one.
        let mut engine = model
            .engine(flint_runtime::EngineOptions { kv_tokens: 1024, page_size: 16, max_batch: 4 })
            .unwrap()
            .with_prefill_chunk(8);
        let req = flint_runtime::Request::new(ids.clone(), opts.clone())
            .branches(2)
            .with_media(Some(std::sync::Arc::new(media.clone())));
        let id = engine.submit(req).unwrap();
        let text = model.prompt_ids("The quick brown fox", false).unwrap();
        engine.submit(flint_runtime::Request::new(text, opts.clone())).unwrap();
        let branches = support::run_branches(&mut engine, id);
        assert_eq!(branches, vec![greedy.clone(), greedy.clone()], "[{label}] engine branches");

        // The reasoning modes build their prompts around the clips too: think's system message
        // and template, and contemplate's branches through the engine.
        for mode in [Mode::Think, Mode::Contemplate { branches: 2 }] {
            let (mids, mmedia) = reasoning::prompt(&model, mode, question, &[], &audio, true).unwrap();
            let slots = mids.iter().filter(|&&t| t == tower.audio_token_id).count();
            assert_eq!(slots, features.tokens().iter().sum::<usize>(), "[{label}] {} audio tokens", mode.name());
            let mut s = model.session(mids.len() + 4).unwrap();
            let o = SamplingOptions { max_tokens: 4, ..Default::default() };
            assert_eq!(s.generate_with(&mids, mmedia.as_ref(), &o, |_| {}).unwrap().tokens.len(), 4);
        }
    }
}

#[test]
fn qwen2_audio_one_clip_matches_transformers() {
    check("a", &["fox.16k.wav"], "What does the speaker say?");
}

#[test]
fn qwen2_audio_two_clips_of_different_lengths_match_transformers() {
    check("b", &["fox.16k.wav", "long5.16k.wav"], "Describe the sound.");
}

/// Clips over the window or too short for a token, placeholders that do not match the clips,
/// audio tokens without audio and audio for a model without a tower: each refused, by name.
#[test]
fn qwen2_audio_refuses_what_it_cannot_take() {
    let dev = devices().into_iter().next().unwrap();
    let model = Model::load(&dev, fixtures().join("qwen2-audio").join("a")).unwrap();
    let tone = |seconds: f64| Audio {
        samples: (0..(seconds * 16000.0) as usize).map(|i| (i as f32 * 0.05).sin() * 0.3).collect(),
        sample_rate: 16000,
    };
    let build = |text: &str, audio: &[Audio]| {
        model.build_prompt(&PromptSpec { text, audio, ..Default::default() }).unwrap_err().to_string()
    };
    let e = build("Hi", &[tone(30.5)]);
    assert!(e.contains("30.50 s long") && e.contains("at most 30 s"), "{e}");
    let e = build("Hi", &[tone(0.01)]);
    assert!(e.contains("160 samples") && e.contains("at least 321"), "{e}");
    let e = build("<|AUDIO|> and <|AUDIO|>", &[tone(1.0)]);
    assert!(e.contains("2 audio placeholders (<|AUDIO|>) for 1 clips"), "{e}");
    let (ids, media) =
        model.build_prompt(&PromptSpec { text: "Hi", audio: &[tone(1.0)], ..Default::default() }).unwrap();
    let e = model.logits_with(&ids, None).unwrap_err().to_string();
    assert!(e.contains("audio tokens but no audio was given"), "{e}");
    let mut short = media.unwrap();
    short.audio.as_mut().unwrap().frames[0] = 50;
    let e = model.logits_with(&ids, Some(&short)).unwrap_err().to_string();
    assert!(e.contains("audio tokens but the 1 clips make 12"), "{e}");
    let text = Model::load(&dev, fixtures().join("qwen2").join("tiny")).unwrap();
    let e = text.build_prompt(&PromptSpec { text: "Hi", audio: &[tone(1.0)], ..Default::default() }).unwrap_err();
    assert!(e.to_string().contains("has no audio tower"), "{e}");
}

/// Audio configs flint cannot run, or that disagree with the weights, the processor or the
/// tokenizer, are refused naming the file and the field.
#[test]
fn qwen2_audio_configs_flint_cannot_run_are_refused_by_name() {
    let src = fixtures().join("qwen2-audio").join("a");
    let files = [
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "processor_config.json",
        "chat_template.jinja",
    ];
    let cases: [ConfigEdit; 6] = [
        ("heads", |c| c["audio_config"]["encoder_attention_heads"] = 3.into(), "encoder_attention_heads"),
        ("ctx", |c| c["audio_config"]["max_source_positions"] = 750.into(), "max_source_positions"),
        ("act", |c| c["audio_config"]["activation_function"] = "relu".into(), "activation_function"),
        ("mels", |c| c["audio_config"]["num_mel_bins"] = 80.into(), "\"feature_size\" is 128"),
        ("outside", |c| c["audio_token_index"] = 100_000.into(), "outside the vocabulary"),
        ("token", |c| c["audio_token_index"] = 5.into(), "to be token 5 (audio_token_index)"),
    ];
    support::refused_by_name(&src, &files, "qwen2-audio", &cases);
}
