//! `flint bench-model`: end-to-end model figures: prefill tokens/s for given prompt lengths,
//! decode tokens/s for B independent sequences decoded together (aggregate), and contemplate
//! over a long shared prefix with N branches, each with the weight bytes read per step, the
//! resulting GB/s and the KV memory in use. Every configuration runs once untimed first, so
//! pipeline compilation is not counted. Wall-clock times of whole submits (the figures a user
//! sees), not GPU timestamps.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use flint_gpu::Recorder;
use flint_runtime::engine::{EngineOptions, Request};
use flint_runtime::generate::SamplingOptions;
use flint_runtime::model::Model;
use flint_runtime::multimodal::{Pixels, Vision};
use flint_runtime::stepper::StepStats;
use serde_json::json;

/// Options of `flint bench-model`.
pub struct BenchModelOpts {
    /// Adapter selector.
    pub adapter: String,
    /// Model path or name.
    pub model: String,
    /// Prompt lengths to prefill.
    pub prefill: Vec<usize>,
    /// Batch sizes of independent sequences.
    pub batch: Vec<usize>,
    /// Branch counts of contemplate.
    pub branches: Vec<usize>,
    /// Shared prefix of contemplate, in tokens.
    pub prefix: usize,
    /// Timed decode steps per configuration.
    pub steps: usize,
    /// Prompt lengths that join running sequences.
    pub join: Vec<usize>,
    /// Also time a SmolVLM-256M-shaped vision tower (random weights) in front of the model.
    pub vision: bool,
    /// JSON lines instead of a table.
    pub json: bool,
}

/// How a bench row is printed: a JSON object with the case, model and adapter added, or a table
/// row after the case's name.
fn emitter<'a>(json: bool, name: &'a str, label: &'a str) -> impl Fn(String, serde_json::Value, String) + 'a {
    move |case, mut v, row| {
        if json {
            v["case"] = json!(case);
            v["model"] = json!(name);
            v["adapter"] = json!(label);
            println!("{v}");
        } else {
            println!("{case:<34} {row}");
        }
    }
}

/// Whether `path` is a Whisper model: a CTranslate2 `model.bin` (or a directory holding one) or
/// a Hugging Face directory whose config says `whisper`.
fn is_whisper(path: &std::path::Path) -> bool {
    let dir =
        if path.is_dir() { path.to_path_buf() } else { path.parent().map(|p| p.to_path_buf()).unwrap_or_default() };
    let is_bin = path.file_name().is_some_and(|n| n == "model.bin") || dir.join("model.bin").is_file();
    let config = dir.join("config.json");
    let small = std::fs::metadata(&config).is_ok_and(|m| m.is_file() && m.len() < 1 << 20);
    let hf = small
        .then(|| std::fs::read(&config).ok())
        .flatten()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .is_some_and(|c| c["model_type"] == "whisper");
    (is_bin && path.extension().is_none_or(|e| e != "gguf")) || (path.is_dir() && hf)
}

/// `flint bench-model` on a Whisper model: one 30-second window of a synthetic signal (the cost
/// of features and encoder does not depend on what is said): features ms, encoder ms, then
/// `steps` greedy decoder steps (end of text ignored) for each batch size, and the real-time
/// factor of a window whose transcript is `steps` tokens long.
fn bench_whisper(opts: &BenchModelOpts, path: &std::path::Path) -> Result<()> {
    use flint_runtime::whisper::{MAX_BATCH, Whisper};
    let dev = flint_gpu::Device::open(&opts.adapter).context("opening the GPU adapter")?;
    let label = dev.caps().short_label();
    let w = Whisper::load(&dev, path).with_context(|| format!("loading {}", path.display()))?;
    let dir = if path.is_dir() { path } else { path.parent().unwrap_or(path) };
    let name = dir.file_name().map(|f| f.to_string_lossy().to_string()).unwrap_or_default();
    let emit = emitter(opts.json, &name, &label);
    if !opts.json {
        println!("{name} (Whisper, {} mels, width {}) on {label}; one 30 s window", w.cfg.mels, w.cfg.d_model);
    }
    // A chirp from 100 Hz to 4 kHz with some noise.
    let mut seed = 0x9e37_79b9_u32;
    let samples: Vec<f32> = (0..flint_runtime::reference::audio::WHISPER_SAMPLES)
        .map(|i| {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            let t = i as f64 / 16_000.0;
            let f = 100.0 + 130.0 * t;
            (0.3 * (std::f64::consts::PI * f * t).sin()) as f32 + 0.01 * (seed as f32 / u32::MAX as f32 - 0.5)
        })
        .collect();
    let audio = flint_runtime::audio::Audio { samples, sample_rate: 16_000 };
    let features_s = best_of_two(|| {
        let t = Instant::now();
        w.log_mel().features(&dev, &audio)?;
        Ok(t.elapsed().as_secs_f64())
    })?;
    let (features, _) = w.log_mel().features(&dev, &audio)?;
    let window = dev.upload_f32("features", &features, &[3000, w.cfg.mels], flint_gpu::DType::F32)?;
    let mut encoded = None;
    let encoder_s = best_of_two(|| {
        let t = Instant::now();
        let mut rec = flint_gpu::Recorder::new(&dev);
        let e = w.encode(&mut rec, &window)?;
        rec.submit()?.wait()?;
        encoded = Some(e);
        Ok(t.elapsed().as_secs_f64())
    })?;
    let encoded = encoded.expect("encoded twice");
    emit(
        "features".into(),
        json!({"ms": features_s * 1e3}),
        format!("{:>9.1} ms per 30 s window (resampling, upload, 5 dispatches, readback)", features_s * 1e3),
    );
    emit("encoder".into(), json!({"ms": encoder_s * 1e3}), format!("{:>9.1} ms per 30 s window", encoder_s * 1e3));
    // The prompt's positions and one per step must fit the text context.
    let steps = opts.steps.clamp(1, w.cfg.text_ctx - w.prompt().len());
    let mut batches: Vec<usize> = opts.batch.iter().copied().filter(|&b| (1..=MAX_BATCH).contains(&b)).collect();
    if batches.is_empty() {
        batches.push(1);
    }
    let mut tok_s_1 = None;
    for b in batches {
        let windows = vec![encoded.clone(); b];
        let s = best_of_two(|| {
            let t = Instant::now();
            w.decode_steps(&windows, steps)?;
            Ok(t.elapsed().as_secs_f64())
        })?;
        let tok_s = (b * steps) as f64 / s;
        if b == 1 {
            tok_s_1 = Some(tok_s);
        }
        emit(
            format!("decode batch {b}"),
            json!({"batch": b, "steps": steps, "ms_per_step": s * 1e3 / steps as f64, "tokens_per_s": tok_s}),
            format!(
                "{:>9.1} ms/step {tok_s:>9.1} tok/s ({b} window(s), {steps} steps with the prompt)",
                s * 1e3 / steps as f64
            ),
        );
    }
    if let Some(tok_s) = tok_s_1 {
        let rtf = (features_s + encoder_s + steps as f64 / tok_s) / 30.0;
        emit(
            "real-time factor".into(),
            json!({"real_time_factor": rtf, "tokens": steps}),
            format!("{rtf:>9.3}    for a 30 s window of {steps} tokens, one window at a time"),
        );
    }
    Ok(())
}

/// `n` token ids of ordinary text (a passage repeated), without special tokens.
fn filler(model: &Model, n: usize) -> Result<Vec<u32>> {
    let passage = "The river runs past the old mill, where the miller's daughter counts the sacks of grain \
                   each morning and writes the numbers in a ledger that her grandfather began. ";
    let one = model.tokenizer().encode(passage, false)?;
    Ok(one.iter().copied().cycle().take(n).collect())
}

/// The best of two runs of `run` (seconds), after one untimed run that compiles the pipelines.
fn best_of_two(mut run: impl FnMut() -> Result<f64>) -> Result<f64> {
    run()?;
    Ok(run()?.min(run()?))
}

/// Seconds of one prefill of `ids` (its image tokens taking `pixels` through `vision`, when
/// given) up to the last position's logits; a text prompt as `flint generate` runs it, up to the
/// first token sampled.
fn prefill_once(model: &Model, ids: &[u32], vision: Option<(&Arc<Vision>, &Pixels)>) -> Result<f64> {
    let dev = model.decoder().device().clone();
    let mut session = model.session(ids.len() + 1)?;
    if let Some((v, _)) = vision {
        session = session.with_vision(Some(v.clone()));
    }
    let t = Instant::now();
    if vision.is_some() {
        let mut rec = Recorder::new(&dev);
        let media = vision.map(|(_, p)| flint_runtime::Media::from(p.clone()));
        let h = session.forward_with(&mut rec, ids, media.as_ref())?;
        let _ = model.decoder().logits(&mut rec, &h, ids.len() - 1..ids.len())?;
        rec.submit()?.wait()?;
    } else {
        // The path `flint generate` takes: long prompts in chunks, then the first token.
        session.generate(ids, &greedy(1), |_| {})?;
    }
    Ok(t.elapsed().as_secs_f64())
}

/// Peak resident memory of this process so far (VmHWM), in bytes, where the OS reports it.
fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse::<u64>().ok().map(|kb| kb * 1024)
}

struct DecodeRun {
    seconds: f64,
    tokens: usize,
    steps: usize,
    kv_bytes: usize,
    /// Host time of the timed steps (from the engine's step statistics).
    host: StepStats,
}

/// The difference of two step statistics (`b` taken after `a`).
fn stats_delta(a: &StepStats, b: &StepStats) -> StepStats {
    StepStats {
        steps: b.steps - a.steps,
        plans_made: b.plans_made - a.plans_made,
        tiles_steps: b.tiles_steps - a.tiles_steps,
        dispatches: b.dispatches,
        prepare: b.prepare - a.prepare,
        write: b.write - a.write,
        encode: b.encode - a.encode,
        submit: b.submit - a.submit,
        wait: b.wait - a.wait,
    }
}

/// JSON and table text of a run's host figures.
fn host_figures(r: &DecodeRun) -> (serde_json::Value, String) {
    let h = &r.host;
    let per = |d: std::time::Duration| d.as_secs_f64() * 1e6 / h.steps.max(1) as f64;
    let wall_ms = r.seconds * 1e3 / r.steps.max(1) as f64;
    (
        json!({"host_us_per_step": h.host_us_per_step(), "prepare_us": per(h.prepare), "write_us": per(h.write),
               "encode_us": per(h.encode), "submit_call_us": per(h.submit), "wait_us": per(h.wait),
               "dispatches_per_step": h.dispatches, "wall_ms_per_step": wall_ms, "plans_made": h.plans_made,
               "head_tiles_steps": h.tiles_steps}),
        format!(
            " | host {:.0} us/step (prepare {:.0}, write {:.0}, encode {:.0}; submit call {:.0}), {} dispatches{}, {:.1} ms/step",
            h.host_us_per_step(),
            per(h.prepare),
            per(h.write),
            per(h.encode),
            per(h.submit),
            h.dispatches,
            if h.tiles_steps == h.steps && h.steps > 0 { " (argmax tiles)" } else { "" },
            wall_ms
        ),
    )
}

/// Submit `requests`, step until all are live, then time `steps` steps.
fn decode_run(model: &Model, requests: Vec<Request>, steps: usize, kv_tokens: usize) -> Result<DecodeRun> {
    let max_batch = requests.iter().map(|r| r.branches).sum::<usize>().max(1);
    let mut engine = model.engine(EngineOptions { kv_tokens, page_size: 64, max_batch })?;
    for r in requests {
        engine.submit(r)?;
    }
    while engine.waiting() > 0 {
        engine.step()?;
    }
    let live = engine.live_branches();
    let before = engine.step_stats();
    let t = Instant::now();
    let mut tokens = 0;
    for _ in 0..steps {
        tokens += engine.step()?.iter().filter(|e| matches!(e, flint_runtime::engine::Event::Token { .. })).count();
    }
    let seconds = t.elapsed().as_secs_f64();
    let kv_bytes = engine.kv_bytes();
    if engine.live_branches() != live {
        anyhow::bail!("a sequence stopped during the timed steps");
    }
    let host = stats_delta(&before, &engine.step_stats());
    Ok(DecodeRun { seconds, tokens, steps, kv_bytes, host })
}

fn greedy(max_tokens: usize) -> SamplingOptions {
    SamplingOptions { max_tokens, ..Default::default() }
}

/// Run the benchmark and print one row (or JSON line) per configuration.
pub fn bench_model(opts: &BenchModelOpts) -> Result<()> {
    let path = crate::models::resolve_model(Some(&opts.model))?;
    if is_whisper(&path) {
        return bench_whisper(opts, &path);
    }
    let (dev, model) = crate::models::load(&opts.adapter, Some(&opts.model))?;
    let label = dev.caps().short_label();
    let wbytes = model.decoder().weight_bytes_per_token() as f64;
    let name = model.path().file_name().map(|f| f.to_string_lossy().to_string()).unwrap_or_default();
    let emit = emitter(opts.json, &name, &label);
    if !opts.json {
        println!("{name} on {label}; weights read per decode step: {:.1} MB", wbytes / 1e6);
    }
    if opts.vision {
        vision_rows(&model, &emit)?;
    }
    if let Some(tower) = model.audio() {
        audio_rows(&dev, tower, &emit)?;
    }
    for &p in &opts.prefill {
        let ids = filler(&model, p)?;
        model.decoder().device().trim_pool();
        let s = best_of_two(|| prefill_once(&model, &ids, None))?;
        // Weights + this prompt's KV cache + the prefill's activations; RSS is the process's peak.
        let gpu = model.decoder().device().tensor_bytes() as f64 / 1e6;
        let rss = peak_rss().map(|b| b as f64 / 1e6);
        emit(
            format!("prefill {p}"),
            json!({"prompt_tokens": p, "ms": s * 1e3, "tokens_per_s": p as f64 / s, "gpu_tensor_mb": gpu, "peak_rss_mb": rss}),
            format!(
                "{:>9.1} ms {:>9.1} tok/s  GPU tensors {gpu:.0} MB, peak RSS {}",
                s * 1e3,
                p as f64 / s,
                rss.map_or("?".into(), |r| format!("{r:.0} MB"))
            ),
        );
    }
    let budget = opts.steps * 2 + 8;
    for &b in &opts.batch {
        let reqs = |b: usize| -> Result<Vec<Request>> {
            (0..b)
                .map(|i| {
                    let mut ids = filler(&model, 16 + 3 * i)?;
                    ids.rotate_left(i);
                    Ok(Request::new(ids, greedy(budget)))
                })
                .collect()
        };
        decode_run(&model, reqs(b)?, 2, 64 * (b + 2) * budget.div_ceil(64).max(2))?;
        let r = decode_run(&model, reqs(b)?, opts.steps, 64 * (b + 2) * budget.div_ceil(64).max(2))?;
        let tps = r.tokens as f64 / r.seconds;
        let gbs = wbytes * r.steps as f64 / r.seconds / 1e9;
        let (mut v, host) = host_figures(&r);
        v.as_object_mut().expect("an object").extend(
            json!({"sequences": b, "steps": r.steps, "tokens": r.tokens, "seconds": r.seconds, "tokens_per_s": tps,
                   "tokens_per_s_per_sequence": tps / b as f64, "weight_gb_per_s": gbs, "kv_bytes": r.kv_bytes})
            .as_object()
            .expect("an object")
            .clone(),
        );
        emit(
            format!("decode batch {b}"),
            v,
            format!(
                "{tps:>9.1} tok/s aggregate {:>7.1} per sequence {:>6.2} GB/s of weights, KV {:.1} MiB{host}",
                tps / b as f64,
                gbs,
                r.kv_bytes as f64 / (1 << 20) as f64
            ),
        );
    }
    for &n in &opts.branches {
        let prefix = filler(&model, opts.prefix)?;
        let sampling =
            SamplingOptions { temperature: 0.8, top_k: 40, top_p: 0.95, seed: 1, max_tokens: budget, stop: vec![] };
        let req = || Request::new(prefix.clone(), sampling.clone()).branches(n);
        let kv_tokens = 64 * ((opts.prefix + budget).div_ceil(64) + n * (budget.div_ceil(64) + 1));
        decode_run(&model, vec![req()], 2, kv_tokens)?;
        let r = decode_run(&model, vec![req()], opts.steps, kv_tokens)?;
        let tps = r.tokens as f64 / r.seconds;
        let c = &model.decoder().cfg;
        let per_token = 2 * c.layers * c.kv_heads * c.head_dim * model.decoder().kv_dtype.size();
        // What N sequences holding the prefix each would use at this point.
        let separate = n * (opts.prefix + opts.steps + 2) * per_token;
        let (mut v, host) = host_figures(&r);
        v.as_object_mut().expect("an object").extend(
            json!({"branches": n, "prefix": opts.prefix, "steps": r.steps, "tokens": r.tokens, "seconds": r.seconds,
                   "tokens_per_s": tps, "kv_bytes": r.kv_bytes, "kv_bytes_if_copied_estimate": separate})
            .as_object()
            .expect("an object")
            .clone(),
        );
        emit(
            format!("contemplate {n} over {}", opts.prefix),
            v,
            format!(
                "{tps:>9.1} tok/s aggregate {:>7.1} per branch, KV {:.1} MiB (about {:.1} MiB with the prefix copied per branch){host}",
                tps / n as f64,
                r.kv_bytes as f64 / (1 << 20) as f64,
                separate as f64 / (1 << 20) as f64
            ),
        );
    }
    for &p in &opts.join {
        join_row(&model, p, &emit)?;
    }
    Ok(())
}

/// A `p`-token prompt joins 4 sequences that are decoding: the time from its submission to
/// its first token, the steps that took, and the running sequences' longest wait between
/// tokens meanwhile (the stall a joining prompt causes; chunked prefill bounds it).
fn join_row(model: &Model, p: usize, emit: &dyn Fn(String, serde_json::Value, String)) -> Result<()> {
    let run = || -> Result<(f64, usize, f64, usize)> {
        let running = 4;
        let budget: usize = 256;
        let kv_tokens = 64 * (running * (16 + budget).div_ceil(64) + (p + 8).div_ceil(64) + 2);
        let mut engine = model.engine(EngineOptions { kv_tokens, page_size: 64, max_batch: running + 1 })?;
        for i in 0..running {
            engine.submit(Request::new(filler(model, 16 + i)?, greedy(budget)))?;
        }
        for _ in 0..4 {
            engine.step()?;
        }
        let joining = engine.submit(Request::new(filler(model, p)?, greedy(2)))?;
        let t = Instant::now();
        let (mut steps, mut tokens, mut last, mut gap) = (0, 0, Instant::now(), 0.0f64);
        loop {
            let events = engine.step()?;
            steps += 1;
            let now = Instant::now();
            let mut joined = false;
            for e in &events {
                match e {
                    flint_runtime::engine::Event::Token { request, .. } if *request == joining => joined = true,
                    flint_runtime::engine::Event::Token { .. } => tokens += 1,
                    flint_runtime::engine::Event::Failed { request, error } if *request == joining => {
                        anyhow::bail!("the joining prompt failed: {error}")
                    }
                    _ => {}
                }
            }
            if !joined && engine.is_idle() {
                anyhow::bail!("the engine went idle before the joining prompt's first token");
            }
            if events
                .iter()
                .any(|e| matches!(e, flint_runtime::engine::Event::Token { request, .. } if *request != joining))
            {
                gap = gap.max(now.duration_since(last).as_secs_f64());
                last = now;
            }
            if joined {
                return Ok((t.elapsed().as_secs_f64(), steps, gap.max(now.duration_since(last).as_secs_f64()), tokens));
            }
        }
    };
    run()?;
    let (seconds, steps, gap, tokens) = run()?;
    emit(
        format!("join {p} while 4 decode"),
        json!({"prompt_tokens": p, "ms_to_first_token": seconds * 1e3, "steps": steps,
               "longest_gap_ms": gap * 1e3, "running_tokens": tokens}),
        format!(
            "{:>9.1} ms to its first token over {steps} steps; the 4 running made {tokens} tokens, longest gap {:.1} ms",
            seconds * 1e3,
            gap * 1e3
        ),
    );
    Ok(())
}

/// An audio-language model's tower over one clip of a whole window (30 s of a tone, so every
/// key is attended): features, then encoder, pool, norm and projector, in ms per clip.
fn audio_rows(
    dev: &flint_gpu::Device,
    tower: &flint_runtime::multimodal::AudioTower,
    emit: &dyn Fn(String, serde_json::Value, String),
) -> Result<()> {
    let samples = (0..flint_runtime::model::audio::WINDOW_SAMPLES).map(|i| (i as f32 * 0.03).sin() * 0.2).collect();
    let clip = flint_runtime::audio::Audio { samples, sample_rate: 16_000 };
    let mut features = None;
    let s = best_of_two(|| {
        let t = Instant::now();
        features = Some(tower.processor.features(dev, std::slice::from_ref(&clip))?);
        Ok(t.elapsed().as_secs_f64())
    })?;
    emit(
        "audio features 1 clip 30 s".into(),
        json!({"ms": s * 1e3}),
        format!("{:>9.1} ms (log-mel, read back)", s * 1e3),
    );
    let features = features.expect("timed above");
    let flops = tower.flops_per_clip();
    let s = best_of_two(|| {
        let t = Instant::now();
        let mut rec = Recorder::new(dev);
        let _ = tower.embed(&mut rec, &features)?;
        rec.submit()?.wait()?;
        Ok(t.elapsed().as_secs_f64())
    })?;
    emit(
        "audio tower 1 clip 30 s".into(),
        json!({"ms": s * 1e3, "gflops": flops / s / 1e9, "flops": flops}),
        format!("{:>9.1} ms {:>9.1} GFLOP/s (encoder, pool, norm, projector)", s * 1e3, flops / s / 1e9),
    );
    Ok(())
}

/// Two larger vision towers with seeded random weights, one run each (minutes on a CPU
/// adapter): Qwen2.5-VL-3B's over one 448x448 and one 896x896 image (its window layers run as
/// masked attention over the whole image; GFLOP/s count the model's windowed FLOPs), and
/// Gemma-3-4B's SigLIP (so400m/14) at its one size, 896x896, with the average-pool projector.
fn big_tower_rows(dev: &flint_gpu::Device, emit: &dyn Fn(String, serde_json::Value, String)) -> Result<()> {
    use flint_runtime::model::qwen_vision::{PatchImages, QwenVisionConfig, QwenVisionTower};
    use flint_runtime::model::vision::{Connector, VisionConfig, VisionTower};

    let qcfg = QwenVisionConfig::qwen2_5_vl_3b();
    let qwen = QwenVisionTower::random(dev, qcfg.clone(), 11)?;
    for side in [448, 896] {
        let grid = (side / 14, side / 14);
        let n = grid.0 * grid.1 * qcfg.patch_row();
        let images = PatchImages {
            pixels: (0..n).map(|i| ((i * 7919) % 255) as f32 / 127.5 - 1.0).collect(),
            grids: vec![grid],
        };
        let t = Instant::now();
        let mut rec = Recorder::new(dev);
        let _ = qwen.encode(&mut rec, &images)?;
        rec.submit()?.wait()?;
        let s = t.elapsed().as_secs_f64();
        let flops = qcfg.flops(grid);
        emit(
            format!("vision encode Qwen2.5-VL-3B {side}x{side}"),
            json!({"ms": s * 1e3, "gflops": flops / s / 1e9, "flops": flops, "patches": grid.0 * grid.1}),
            format!(
                "{:>9.1} ms {:>9.1} GFLOP/s ({} patches, 32 blocks of 1280, random weights)",
                s * 1e3,
                flops / s / 1e9,
                grid.0 * grid.1
            ),
        );
    }
    drop(qwen);
    let gcfg = VisionConfig {
        hidden: 1152,
        intermediate: 4304,
        layers: 27,
        heads: 16,
        channels: 3,
        image_size: 896,
        patch: 14,
        eps: 1e-6,
        scale_factor: 4,
        connector: Connector::AvgPool,
        text_hidden: 2560,
    };
    let flops = gcfg.tile_flops();
    let gemma = VisionTower::random(dev, gcfg, 13)?;
    let px: Vec<f32> = (0..3 * 896 * 896).map(|i| ((i * 7919) % 255) as f32 / 127.5 - 1.0).collect();
    let t = Instant::now();
    let mut rec = Recorder::new(dev);
    let x = dev.upload_f32("pixels", &px, &[1, 3, 896, 896], flint_gpu::DType::F32)?;
    let h = gemma.encode(&mut rec, &x, 1, 896, 896)?;
    let _ = gemma.connect(&mut rec, &h, 1, 64)?;
    rec.submit()?.wait()?;
    let s = t.elapsed().as_secs_f64();
    emit(
        "vision encode Gemma-3-4B 896x896".into(),
        json!({"ms": s * 1e3, "gflops": flops / s / 1e9, "flops": flops, "patches": 4096}),
        format!(
            "{:>9.1} ms {:>9.1} GFLOP/s (SigLIP so400m/14, 4096 patches, random weights)",
            s * 1e3,
            flops / s / 1e9
        ),
    );
    Ok(())
}

/// SmolVLM-256M's vision side (SigLIP base/16 at 512, scale 4) with seeded random weights in
/// front of `model`'s decoder: the encode time of one 512x512 tile with its GFLOP/s, and the
/// prefill of one image split into 2x2 tiles plus the global view (5 x 64 image tokens) with a
/// 32-token question.
fn vision_rows(model: &Model, emit: &dyn Fn(String, serde_json::Value, String)) -> Result<()> {
    use flint_runtime::image::ImageProcessor;
    use flint_runtime::model::vision::{VisionConfig, VisionTower};

    let dev = model.decoder().device().clone();
    let cfg = VisionConfig {
        hidden: 768,
        intermediate: 3072,
        layers: 12,
        heads: 12,
        channels: 3,
        image_size: 512,
        patch: 16,
        eps: 1e-6,
        scale_factor: 4,
        connector: flint_runtime::model::vision::Connector::PixelShuffle,
        text_hidden: model.decoder().cfg.hidden,
    };
    let flops = cfg.tile_flops();
    let tower = VisionTower::random(&dev, cfg.clone(), 7)?;
    let pixels = |tiles: usize| Pixels {
        data: (0..tiles * 3 * 512 * 512).map(|i| ((i * 7919) % 255) as f32 / 127.5 - 1.0).collect(),
        images: tiles,
        side: 512,
    };
    let one = pixels(1);
    let encode = || -> Result<f64> {
        let t = std::time::Instant::now();
        let mut rec = Recorder::new(&dev);
        let x = dev.upload_f32("pixels", &one.data, &[1, 3, 512, 512], flint_gpu::DType::F32)?;
        let h = tower.encode(&mut rec, &x, 1, 512, 512)?;
        let _ = tower.connect(&mut rec, &h, 1, 32)?;
        rec.submit()?.wait()?;
        Ok(t.elapsed().as_secs_f64())
    };
    let s = best_of_two(encode)?;
    emit(
        "vision encode 1 tile 512x512".into(),
        json!({"ms": s * 1e3, "gflops": flops / s / 1e9, "flops": flops}),
        format!("{:>9.1} ms {:>9.1} GFLOP/s (SigLIP base/16, 1024 patches, random weights)", s * 1e3, flops / s / 1e9),
    );
    // The prompt SmolVLM's processor writes for a 2x2-tiled image, with markup and question as
    // ordinary tokens and the image tokens as one id the question never uses.
    let image_token = (model.decoder().cfg.vocab - 1) as u32;
    let vision = Arc::new(Vision {
        processor: flint_runtime::multimodal::Processor::Idefics3(ImageProcessor::smolvlm(512, cfg.tokens_per_tile())),
        tower,
        image_token_id: image_token,
        bidirectional: false,
    });
    let text = filler(model, 64)?;
    let mut ids: Vec<u32> = text[..6].to_vec();
    for tile in 0..5 {
        ids.extend_from_slice(&text[6 + 2 * tile..8 + 2 * tile]);
        ids.extend(std::iter::repeat_n(image_token, cfg.tokens_per_tile()));
    }
    ids.extend_from_slice(&text[20..52]);
    let five = pixels(5);
    let s = best_of_two(|| prefill_once(model, &ids, Some((&vision, &five))))?;
    emit(
        "prefill 1 image (5 tiles) + 32".into(),
        json!({"ms": s * 1e3, "tokens": ids.len(), "tiles": 5, "tokens_per_s": ids.len() as f64 / s}),
        format!(
            "{:>9.1} ms for {} tokens ({} image tokens) incl. encoding 5 tiles",
            s * 1e3,
            ids.len(),
            5 * cfg.tokens_per_tile()
        ),
    );
    big_tower_rows(&dev, emit)
}
