//! The model commands: `generate`, `tokenize`, `logits`, `fetch`.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use flint_gpu::Device;
use flint_runtime::engine::EngineOptions;
use flint_runtime::fetch::{self, Progress};
use flint_runtime::generate::SamplingOptions;
use flint_runtime::model::Model;
use flint_runtime::reasoning::{self, Mode};
use flint_runtime::tokenizer::StreamDecoder;
use indicatif::{ProgressBar, ProgressStyle};

/// Resolve a model argument, fetching a known model with a progress bar on first use.
pub fn resolve_model(model: Option<&str>) -> Result<PathBuf> {
    let mut bar: Option<ProgressBar> = None;
    let path = fetch::resolve(model, &mut |p| match p {
        Progress::Start { phase, total } => {
            let b = match total {
                Some(t) => ProgressBar::new(t).with_style(
                    ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}")
                        .expect("template")
                        .progress_chars("=> "),
                ),
                None => ProgressBar::new_spinner(),
            };
            b.set_message(phase);
            b.enable_steady_tick(std::time::Duration::from_millis(120));
            bar = Some(b);
        }
        Progress::Advance(n) => {
            if let Some(b) = &bar {
                b.inc(n);
            }
        }
        Progress::Done => {
            if let Some(b) = bar.take() {
                b.finish();
            }
        }
    })?;
    Ok(path)
}

pub fn load(adapter: &str, model: Option<&str>) -> Result<(Device, Model)> {
    let path = resolve_model(model)?;
    let dev = Device::open(adapter).context("opening the GPU adapter")?;
    let t = std::time::Instant::now();
    let m = Model::load(&dev, &path).with_context(|| format!("loading {}", path.display()))?;
    tracing::info!("loaded {} on {} in {:?}", path.display(), dev.caps().short_label(), t.elapsed());
    Ok((dev, m))
}

/// Options of `flint generate`.
pub struct GenerateOpts {
    /// Adapter selector.
    pub adapter: String,
    /// Model path or name.
    pub model: Option<String>,
    /// Prompt text.
    pub prompt: String,
    /// Image files.
    pub images: Vec<PathBuf>,
    /// WAV files (audio-language models).
    pub audio: Vec<PathBuf>,
    /// Use the chat template.
    pub chat: bool,
    /// Reasoning mode.
    pub mode: Mode,
    /// Sampling (temperature and budget already resolved for the mode).
    pub sampling: SamplingOptions,
    /// JSON output.
    pub json: bool,
    /// Time one more decode step and the prompt's first prefill chunk per dispatch and print
    /// the breakdowns.
    pub profile: bool,
    /// Engine sizes (contemplating mode).
    pub engine: EngineOptions,
}

/// `flint generate`.
pub fn generate(opts: GenerateOpts) -> Result<()> {
    let (dev, model) = load(&opts.adapter, opts.model.as_deref())?;
    let images = opts.images.iter().map(|p| flint_runtime::image::load(p)).collect::<Result<Vec<_>, _>>()?;
    let audio = opts.audio.iter().map(|p| flint_runtime::audio::read_wav(p)).collect::<Result<Vec<_>, _>>()?;
    // Images and audio go through the chat template when the model has one.
    let chat = opts.chat || ((!images.is_empty() || !audio.is_empty()) && model.tokenizer().chat_template.is_some());
    let (prompt, media) = reasoning::prompt(&model, opts.mode, &opts.prompt, &images, &audio, chat)?;
    let mut sampling = opts.sampling.clone();
    sampling.stop.extend(&model.tokenizer().stop_tokens);
    if let Mode::Contemplate { .. } = opts.mode {
        return crate::agents::contemplate(&dev, &model, &opts, &prompt, media, &sampling);
    }
    let mut session = model.session(prompt.len().saturating_add(sampling.max_tokens))?;
    let mut stream = StreamDecoder::default();
    let mut stdout = std::io::stdout().lock();
    // A plain prompt is echoed so the continuation reads on; a chat reply stands alone.
    let plain = !opts.chat && !opts.mode.reasons() && media.is_none();
    if !opts.json && plain {
        write!(stdout, "{}", opts.prompt)?;
        stdout.flush()?;
    }
    let mut stream_err = None;
    let out = session.generate_with(&prompt, media.as_ref(), &sampling, |id| {
        if opts.json {
            return;
        }
        match stream.push(model.tokenizer(), id) {
            Ok(text) => {
                let _ = write!(stdout, "{text}");
                let _ = stdout.flush();
            }
            Err(e) => stream_err = Some(e),
        }
    })?;
    if let Some(e) = stream_err {
        return Err(e.into());
    }
    if opts.profile {
        let step = session.profile_step(*out.tokens.last().unwrap_or(&0), &sampling)?;
        print_profile("one decode step", &step, dev.caps().timestamps);
        // The prompt's first chunk again, in a session of its own.
        let first = &prompt[..prompt.len().min(flint_runtime::generate::PREFILL_CHUNK)];
        let prefill = model.session(first.len())?.profile_prefill(first)?;
        print_profile(&format!("a prefill of {} tokens", first.len()), &prefill, dev.caps().timestamps);
    }
    let text = model.tokenizer().decode(&out.tokens, true)?;
    let reply = opts.mode.reasons().then(|| reasoning::ReplySplitter::for_prompt(&model, &prompt).whole(&text));
    if opts.json {
        let mut v = serde_json::json!({
            "model": model.path().display().to_string(),
            "adapter": dev.caps().short_label(),
            "mode": opts.mode.name(),
            "prompt": opts.prompt,
            "prompt_ids": prompt,
            "images": opts.images.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
            "image_tiles": media.as_ref().map_or(0, |m| {
                m.pixels.as_ref().map_or(0, |p| p.images) + m.patches.as_ref().map_or(0, |p| p.grids.len())
            }),
            "audio": opts.audio.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
            "audio_tokens": media.as_ref().and_then(|m| m.audio.as_ref()).map_or(0, |a| a.tokens().iter().sum()),
            "generated_ids": out.tokens,
            "logprobs": out.logprobs,
            "text": text,
            "stop": out.stop,
            "timings": out.timings_json(),
            "weight_bytes_per_token": model.decoder().weight_bytes_per_token(),
        });
        if let Some(r) = &reply {
            v["reasoning"] = r.reasoning.clone().into();
            v["answer"] = r.answer.clone().into();
        }
        writeln!(stdout, "{}", serde_json::to_string_pretty(&v)?)?;
    } else {
        writeln!(stdout)?;
        if let Some(r) = reply.filter(|r| !r.reasoning.is_empty()) {
            writeln!(stdout, "\n-- answer --\n{}", r.answer)?;
        }
        eprintln!(
            "[{} prompt tokens in {:.0} ms ({:.1} tok/s); {} tokens at {:.1} tok/s on {}; stop: {:?}]",
            out.prompt_tokens,
            out.prefill.as_secs_f64() * 1e3,
            out.prefill_tokens_per_s(),
            out.tokens.len(),
            out.decode_tokens_per_s(),
            dev.caps().short_label(),
            out.stop
        );
    }
    Ok(())
}

/// Print per-kernel totals of `what` (a profiled step or prefill).
fn print_profile(what: &str, times: &[flint_gpu::DispatchTime], timestamps: bool) {
    if !timestamps {
        eprintln!("profile: this adapter has no GPU timestamps");
        return;
    }
    let mut by_kind: Vec<(String, usize, f64)> = Vec::new();
    for t in times {
        // Group by the label's first word and shape-free part ("qmatmul q4_1", "attention", ...).
        let kind: String = t.label.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
        let kind = kind.trim_end_matches(|c: char| c.is_ascii_digit() || c == 'x').to_string();
        match by_kind.iter_mut().find(|(k, _, _)| *k == kind) {
            Some(e) => {
                e.1 += 1;
                e.2 += t.ns;
            }
            None => by_kind.push((kind, 1, t.ns)),
        }
    }
    by_kind.sort_by(|a, b| b.2.total_cmp(&a.2));
    let total: f64 = times.iter().map(|t| t.ns).sum();
    eprintln!("profile of {what}: {} dispatches, {:.2} ms of GPU time", times.len(), total / 1e6);
    for (kind, n, ns) in by_kind {
        eprintln!("  {kind:<28} {n:>5} dispatches {:>9.3} ms {:>5.1}%", ns / 1e6, 100.0 * ns / total);
    }
}

/// `flint tokenize`.
pub fn tokenize(model: Option<&str>, text: &str, json: bool) -> Result<()> {
    let path = resolve_model(model)?;
    let g = flint_runtime::gguf::Gguf::open(&path)?;
    let tok = flint_runtime::tokenizer::Tokenizer::from_gguf(&g)?;
    let ids = tok.encode(text, true)?;
    if json {
        let pieces: Vec<&str> = ids.iter().map(|&i| tok.token(i).unwrap_or("")).collect();
        println!("{}", serde_json::json!({"ids": ids, "tokens": pieces}));
    } else {
        for id in &ids {
            println!("{id}\t{:?}", tok.token(*id).unwrap_or(""));
        }
    }
    Ok(())
}

/// `flint logits`: write logits at every position of `ids` (whose image tokens take the pixel
/// values of a .npy file, with the images' patch grids for Qwen2.5-VL) to a safetensors file.
pub fn logits(
    adapter: &str,
    model: Option<&str>,
    ids: &str,
    pixels: Option<(&Path, Option<&str>)>,
    out: &Path,
) -> Result<()> {
    let pixel_values = pixels.map(|p| p.0);
    let ids: Vec<u32> = ids
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().parse::<u32>().with_context(|| format!("token id {s:?} is not a number")))
        .collect::<Result<_>>()?;
    if ids.is_empty() {
        bail!("--token-ids is empty");
    }
    let model_path = resolve_model(model)?;
    let inputs: Vec<&Path> = std::iter::once(model_path.as_path()).chain(pixel_values).collect();
    check_output(out, &inputs)?;
    let (_, model) = load(adapter, model)?;
    let media = match pixels {
        None => None,
        Some((path, grids)) if model.qwen_vision().is_some() => {
            let Some(grids) = grids else {
                bail!("{} takes patch rows: give their grids with --image-grid-thw t,h,w;...", model.path().display());
            };
            let grids = parse_grids(grids)?;
            let a = flint_runtime::npy::read(path)?;
            let patches: usize = grids.iter().map(|(h, w)| h * w).sum();
            match a.shape[..] {
                [n, _] if n == patches => {
                    Some(flint_runtime::Media::from(flint_runtime::multimodal::PatchImages { pixels: a.data, grids }))
                }
                _ => bail!(
                    "{}: patch rows must be f32 [{patches}, row] for those grids, not {:?}",
                    path.display(),
                    a.shape
                ),
            }
        }
        Some((_, Some(_))) => {
            bail!("--image-grid-thw is for Qwen2.5-VL models; {} takes square tiles", model.path().display())
        }
        Some((path, None)) => {
            let a = flint_runtime::npy::read(path)?;
            match a.shape[..] {
                [images, 3, h, w] if h == w && images > 0 => {
                    Some(flint_runtime::Media::from(flint_runtime::multimodal::Pixels {
                        data: a.data,
                        images,
                        side: h,
                    }))
                }
                _ => bail!("{}: pixel values must be f32 [images, 3, H, H], not {:?}", path.display(), a.shape),
            }
        }
    };
    let logits = model.logits_with(&ids, media.as_ref())?;
    let vocab = model.decoder().cfg.vocab;
    let bytes: Vec<u8> = logits.iter().flat_map(|v| v.to_le_bytes()).collect();
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![ids.len(), vocab], &bytes)?;
    // Written in place (through a symlink, keeping the file's mode), not renamed over it.
    let file = safetensors::serialize([("logits", view)], None)?;
    std::fs::write(out, file).with_context(|| format!("writing {}", out.display()))?;
    eprintln!("wrote logits [{}, {vocab}] to {}", ids.len(), out.display());
    Ok(())
}

/// Options of `flint transcribe`.
pub struct TranscribeArgs {
    /// Most tokens per window.
    pub max_tokens: usize,
    /// Most windows at once.
    pub batch: usize,
    /// Language code, or detection.
    pub language: Option<String>,
    /// `transcribe` or `translate`.
    pub task: String,
    /// Timed segments.
    pub timestamps: bool,
    /// `srt` or `vtt` subtitles.
    pub subtitles: Option<String>,
    /// One JSON object per file.
    pub json: bool,
}

/// `flint transcribe`: each file's text (or, with `json`, one JSON object per file).
pub fn transcribe(adapter: &str, model: &str, files: &[PathBuf], args: &TranscribeArgs) -> Result<()> {
    let (max_tokens, batch, json) = (args.max_tokens, args.batch, args.json);
    if max_tokens == 0 {
        bail!("--max-tokens is 0: nothing to transcribe");
    }
    if !(1..=flint_runtime::whisper::MAX_BATCH).contains(&batch) {
        bail!("--batch {batch}: 1 to {} windows", flint_runtime::whisper::MAX_BATCH);
    }
    let subtitles = match args.subtitles.as_deref() {
        None => None,
        Some(f @ ("srt" | "vtt")) => Some(f),
        Some(f) => bail!("--subtitles {f:?}: srt or vtt"),
    };
    if subtitles.is_some() && json {
        bail!("--subtitles and --json: choose one");
    }
    let task = match args.task.as_str() {
        "transcribe" => flint_runtime::whisper::Task::Transcribe,
        "translate" => flint_runtime::whisper::Task::Translate,
        t => bail!("--task {t:?}: transcribe or translate"),
    };
    // Read every file first, so that a bad one is refused before the model loads.
    let clips: Vec<_> = files.iter().map(|f| flint_runtime::audio::read_wav(f)).collect::<Result<_, _>>()?;
    let path = resolve_model(Some(model))?;
    let dev = Device::open(adapter).context("opening the GPU adapter")?;
    let t = std::time::Instant::now();
    let whisper =
        flint_runtime::whisper::Whisper::load(&dev, &path).with_context(|| format!("loading {}", path.display()))?;
    let load_s = t.elapsed().as_secs_f64();
    let t = std::time::Instant::now();
    let opts = flint_runtime::whisper::TranscribeOptions {
        max_tokens,
        batch,
        language: args.language.clone(),
        task,
        timestamps: args.timestamps || subtitles.is_some(),
    };
    // A bar on stderr when there is more than one window to wait for.
    let mut bar: Option<ProgressBar> = None;
    let results = whisper.transcribe_progress(&clips, &opts, &mut |done, total| {
        if total > 1 {
            let b = bar.get_or_insert_with(|| {
                ProgressBar::new(total as u64).with_style(
                    ProgressStyle::with_template("transcribing [{bar:30}] {pos}/{len} windows of 30 s, {eta} left")
                        .expect("template")
                        .progress_chars("=> "),
                )
            });
            b.set_position(done as u64);
        }
    })?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let all_s = t.elapsed().as_secs_f64();
    let mut stdout = std::io::stdout().lock();
    for (file, r) in files.iter().zip(results) {
        let total = r.features_s + r.encoder_s + r.decoder_s;
        if json {
            let v = serde_json::json!({
                "file": file.display().to_string(),
                "text": r.text,
                "language": r.language,
                "segments": r.segments.iter().map(|g| serde_json::json!({"start": g.start, "end": g.end, "text": g.text})).collect::<Vec<_>>(),
                "ids": r.ids,
                "logprobs": r.logprobs,
                "audio_seconds": r.audio_seconds,
                "windows": r.windows,
                "timings": {
                    "load_s": load_s,
                    "call_s": all_s,
                    "features_s": r.features_s,
                    "encoder_s": r.encoder_s,
                    "decoder_s": r.decoder_s,
                    "total_s": total,
                    "decode_tok_per_s": r.ids.len() as f64 / r.decoder_s.max(1e-9),
                    "real_time_factor": total / r.audio_seconds.max(1e-9),
                },
                "adapter": dev.caps().short_label(),
            });
            writeln!(stdout, "{v}")?;
        } else {
            if let Some(format) = subtitles {
                if files.len() > 1 {
                    writeln!(stdout, "{}:", file.display())?;
                }
                write!(stdout, "{}", subtitle_text(&r.segments, format))?;
            } else if args.timestamps {
                if files.len() > 1 {
                    writeln!(stdout, "{}:", file.display())?;
                }
                for g in &r.segments {
                    writeln!(stdout, "[{} --> {}] {}", clock(g.start), clock(g.end), g.text)?;
                }
            } else {
                writeln!(stdout, "{}", r.text)?;
            }
            eprintln!(
                "[{}: {:.2} s of audio, {} window(s), {} tokens; features {:.0} ms, encoder {:.0} ms, decoder {:.0} ms ({:.1} tok/s); real-time factor {:.2} on {}]",
                file.display(),
                r.audio_seconds,
                r.windows,
                r.ids.len(),
                r.features_s * 1e3,
                r.encoder_s * 1e3,
                r.decoder_s * 1e3,
                r.ids.len() as f64 / r.decoder_s.max(1e-9),
                total / r.audio_seconds.max(1e-9),
                dev.caps().short_label()
            );
        }
    }
    Ok(())
}

/// Segments as SRT (numbered cues, `00:00:01,230` times) or WebVTT (`WEBVTT` header,
/// `00:00:01.230` times).
fn subtitle_text(segments: &[flint_runtime::whisper::Segment], format: &str) -> String {
    let stamp = |t: f64| {
        let ms = (t.max(0.0) * 1000.0).round() as u64;
        let sep = if format == "srt" { ',' } else { '.' };
        format!("{:02}:{:02}:{:02}{sep}{:03}", ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000)
    };
    let mut out = if format == "vtt" { "WEBVTT\n\n".to_string() } else { String::new() };
    for (i, g) in segments.iter().enumerate() {
        if format == "srt" {
            out.push_str(&format!("{}\n", i + 1));
        }
        out.push_str(&format!("{} --> {}\n{}\n\n", stamp(g.start), stamp(g.end), g.text));
    }
    out
}

/// `m:ss.cc` (or `h:mm:ss.cc`) for a time in seconds.
fn clock(seconds: f64) -> String {
    let cs = (seconds.max(0.0) * 100.0).round() as u64;
    let (h, m, s, c) = (cs / 360_000, cs / 6000 % 60, cs / 100 % 60, cs % 100);
    if h > 0 { format!("{h}:{m:02}:{s:02}.{c:02}") } else { format!("{m}:{s:02}.{c:02}") }
}

/// `flint log-mel`: Whisper's log-mel features of a WAV file, written as transformers lays them
/// out (`input_features`, f32 `[windows, mels, 3000]`).
pub fn log_mel(adapter: &str, audio: &Path, mels: usize, out: &Path) -> Result<()> {
    if !(1..=512).contains(&mels) {
        bail!("--mels {mels}: Whisper uses 80 or 128 (flint takes 1 to 512)");
    }
    check_output(out, &[audio])?;
    let clip = flint_runtime::audio::read_wav(audio)?;
    let dev = Device::open(adapter).context("opening the GPU adapter")?;
    let extractor = flint_runtime::audio::LogMel::new(&dev, mels)?;
    let start = std::time::Instant::now();
    let (rows, windows) = extractor.features(&dev, &clip)?;
    let elapsed = start.elapsed();
    let frames = rows.len() / (windows * mels);
    // [windows, frames, mels] -> [windows, mels, frames].
    let mut features = vec![0f32; rows.len()];
    for w in 0..windows {
        for t in 0..frames {
            for m in 0..mels {
                features[(w * mels + m) * frames + t] = rows[(w * frames + t) * mels + m];
            }
        }
    }
    let bytes: Vec<u8> = features.iter().flat_map(|v| v.to_le_bytes()).collect();
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![windows, mels, frames], &bytes)?;
    let file = safetensors::serialize([("input_features", view)], None)?;
    std::fs::write(out, file).with_context(|| format!("writing {}", out.display()))?;
    eprintln!(
        "{}: {:.2} s at {} Hz, {windows} window(s) of 30 s; features in {:.1} ms on {} (with resampling and upload); \
         wrote input_features [{windows}, {mels}, {frames}] to {}",
        audio.display(),
        clip.seconds(),
        clip.sample_rate,
        elapsed.as_secs_f64() * 1e3,
        dev.caps().short_label(),
        out.display()
    );
    Ok(())
}

/// Refuse an output path that is not a regular file or absent, or that is one of `inputs`
/// (or inside one that is a directory), before any work is done.
fn check_output(out: &Path, inputs: &[&Path]) -> Result<()> {
    let Ok(meta) = std::fs::metadata(out) else {
        return Ok(());
    };
    if !meta.is_file() {
        bail!("refusing to write {}: it exists and is not a regular file", out.display());
    }
    let out_real = std::fs::canonicalize(out).with_context(|| format!("resolving {}", out.display()))?;
    for input in inputs {
        let Ok(real) = std::fs::canonicalize(input) else { continue };
        if out_real == real || (real.is_dir() && out_real.starts_with(&real)) {
            bail!("refusing to write {}: it is an input ({})", out.display(), input.display());
        }
    }
    Ok(())
}

/// `flint fetch`: fetch known models into the cache.
pub fn fetch_models(names: &[String]) -> Result<()> {
    let names: Vec<&str> = if names.is_empty() {
        fetch::KNOWN.iter().map(|k| k.name).collect()
    } else {
        names.iter().map(String::as_str).collect()
    };
    for name in names {
        if !fetch::KNOWN.iter().any(|k| k.name == name) {
            let known: Vec<&str> = fetch::KNOWN.iter().map(|k| k.name).collect();
            anyhow::bail!("{name:?} is not a known model ({}); `flint fetch` fetches only those", known.join(", "));
        }
        let path = resolve_model(Some(name))?;
        println!("{name}: {}", path.display());
    }
    Ok(())
}

/// `t,h,w;t,h,w` into patch grids (t must be 1: images, not video).
fn parse_grids(text: &str) -> Result<Vec<(usize, usize)>> {
    text.split(';')
        .filter(|g| !g.trim().is_empty())
        .map(|g| {
            let v: Vec<usize> = g
                .split(',')
                .map(|x| x.trim().parse::<usize>().with_context(|| format!("--image-grid-thw: {x:?} is not a number")))
                .collect::<Result<_>>()?;
            match v[..] {
                [1, h, w] if h > 0 && w > 0 => Ok((h, w)),
                _ => bail!("--image-grid-thw: {g:?} is not 1,h,w (an image's one frame, rows and columns)"),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subtitles_are_srt_and_webvtt() {
        use flint_runtime::whisper::Segment;
        let segs = [
            Segment { start: 0.0, end: 1.234, text: "one".into() },
            Segment { start: 61.5, end: 3725.0, text: "two".into() },
        ];
        assert_eq!(
            subtitle_text(&segs, "srt"),
            "1\n00:00:00,000 --> 00:00:01,234\none\n\n2\n00:01:01,500 --> 01:02:05,000\ntwo\n\n"
        );
        assert_eq!(
            subtitle_text(&segs, "vtt"),
            "WEBVTT\n\n00:00:00.000 --> 00:00:01.234\none\n\n00:01:01.500 --> 01:02:05.000\ntwo\n\n"
        );
        assert_eq!(clock(3725.0), "1:02:05.00");
        assert_eq!(clock(61.5), "1:01.50");
    }

    #[test]
    fn outputs_never_replace_special_files_or_inputs() {
        let dir = std::env::temp_dir().join(format!("flint-out-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let model = dir.join("m.gguf");
        std::fs::write(&model, "model").unwrap();
        assert!(check_output(&dir.join("new.safetensors"), &[&model]).is_ok(), "absent is fine");
        std::fs::write(dir.join("old.safetensors"), "old").unwrap();
        assert!(check_output(&dir.join("old.safetensors"), &[&model]).is_ok(), "a regular file is overwritten");
        let e = check_output(&model, &[&model]).unwrap_err().to_string();
        assert!(e.contains("it is an input"), "{e}");
        let e = check_output(&dir, &[&model]).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
        #[cfg(unix)]
        {
            let e = check_output(Path::new("/dev/null"), &[&model]).unwrap_err().to_string();
            assert!(e.contains("not a regular file"), "{e}");
            std::os::unix::fs::symlink(&model, dir.join("link")).unwrap();
            let e = check_output(&dir.join("link"), &[&model]).unwrap_err().to_string();
            assert!(e.contains("it is an input"), "a symlink to an input is the input: {e}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
