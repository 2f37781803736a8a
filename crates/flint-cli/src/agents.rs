//! The engine's commands: `flint generate --mode contemplate` (N branches from one prefill,
//! then a vote) and `flint generate --prompts FILE.jsonl` (many independent requests through
//! one batched engine, results as JSON lines in input order).

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use flint_gpu::Device;
use flint_runtime::engine::{EngineOptions, Event, Request, RequestId};
use flint_runtime::generate::SamplingOptions;
use flint_runtime::model::Model;
use flint_runtime::multimodal::Media;
use flint_runtime::reasoning::{self, Mode};
use flint_runtime::request::RequestLine;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};

use crate::models::GenerateOpts;

fn progress(total: Option<u64>, what: &str) -> ProgressBar {
    let bar = match total {
        Some(t) => ProgressBar::new(t).with_style(
            ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {elapsed}")
                .expect("template")
                .progress_chars("=> "),
        ),
        None => ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{spinner} {msg} {pos} tokens {per_sec} {elapsed}").expect("template"),
        ),
    };
    bar.set_message(what.to_string());
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    bar
}

/// `flint generate --mode contemplate`: prefill once, decode the branches together, vote.
pub fn contemplate(
    dev: &Device,
    model: &Model,
    opts: &GenerateOpts,
    prompt: &[u32],
    media: Option<Media>,
    sampling: &SamplingOptions,
) -> Result<()> {
    let branches = opts.mode.branches();
    let eopts = EngineOptions { max_batch: opts.engine.max_batch.max(branches), ..opts.engine.clone() };
    let mut engine = model.engine(eopts)?;
    let req = opts.mode.request(prompt.to_vec(), sampling.clone()).with_media(media.map(Arc::new));
    let id = engine.submit(req)?;
    let bar = (!opts.json).then(|| progress(None, &format!("contemplating with {branches} branches")));
    let mut result = None;
    engine.run(|e| match e {
        Event::Token { .. } => {
            if let Some(b) = &bar {
                b.inc(1);
            }
        }
        Event::Finished { request, output } if request == id => result = Some(Ok(output)),
        Event::Failed { request, error } if request == id => result = Some(Err(error)),
        _ => {}
    })?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let out = match result {
        Some(Ok(out)) => out,
        Some(Err(e)) => anyhow::bail!("{e}"),
        None => anyhow::bail!("the engine finished without the request"),
    };
    let mut v = reasoning::describe(model, opts.mode, &out)?;
    let peak_kv = engine.peak_kv_bytes();
    let mut stdout = std::io::stdout().lock();
    if opts.json {
        v["model"] = json!(model.path().display().to_string());
        v["adapter"] = json!(dev.caps().short_label());
        v["prompt"] = json!(opts.prompt);
        v["prompt_ids"] = json!(prompt);
        v["kv_bytes_peak"] = json!(peak_kv);
        writeln!(stdout, "{}", serde_json::to_string_pretty(&v)?)?;
    } else {
        let chosen = v["chosen"].as_u64().unwrap_or(0) as usize;
        let text = v["text"].as_str().unwrap_or("");
        let reply = reasoning::split_reply(text);
        if !reply.reasoning.is_empty() {
            writeln!(stdout, "{}\n\n-- answer --\n{}", reply.reasoning, reply.answer)?;
        } else {
            writeln!(stdout, "{}", reply.answer)?;
        }
        let tally: Vec<String> = v["tally"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|t| format!("{:?} x{}", t["answer"].as_str().unwrap_or(""), t["votes"]))
            .collect();
        let t = &out.timings;
        eprintln!(
            "[{branches} branches, shown: branch {chosen}; votes: {}; {} prompt tokens in {:.0} ms, {} tokens at {:.1} tok/s in aggregate on {}; peak KV {:.1} MiB]",
            if tally.is_empty() { "no answers".to_string() } else { tally.join(", ") },
            t.prompt_tokens,
            t.prefill.as_secs_f64() * 1e3,
            t.generated_tokens,
            t.decode_tokens_per_s(branches),
            dev.caps().short_label(),
            peak_kv as f64 / (1 << 20) as f64,
        );
    }
    Ok(())
}

/// Defaults for the lines of a `--prompts` file, from the command line.
pub struct AgentDefaults {
    /// Mode name.
    pub mode: String,
    /// Branches for contemplate.
    pub branches: usize,
    /// Budget (else the mode's).
    pub max_tokens: Option<usize>,
    /// Temperature (else the mode's).
    pub temperature: Option<f32>,
    /// Top-k.
    pub top_k: usize,
    /// Top-p.
    pub top_p: f32,
    /// Seed.
    pub seed: u32,
    /// Chat template.
    pub chat: bool,
}

/// Turn one line into a request, or say why it cannot be one.
fn request_of(model: &Model, line: &str, d: &AgentDefaults) -> Result<(Mode, Request), String> {
    let l = RequestLine::parse(line).map_err(|e| e.to_string())?;
    if !l.images.is_empty() && !model.takes_images() {
        return Err(format!("{} image(s) given, but {} is a text-only model", l.images.len(), model.path().display()));
    }
    if !l.audio.is_empty() && model.audio().is_none() {
        return Err(format!(
            "{} audio clip(s) given, but {} has no audio tower",
            l.audio.len(),
            model.path().display()
        ));
    }
    let audio = l
        .audio
        .iter()
        .map(|p| flint_runtime::audio::read_wav(Path::new(p)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    let images = l
        .images
        .iter()
        .map(|p| flint_runtime::image::load(Path::new(p)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    let mode = l.mode(&d.mode, d.branches).map_err(|e| e.to_string())?;
    let mut sampling = SamplingOptions {
        temperature: l.temperature.or(d.temperature).unwrap_or(mode.default_temperature()),
        top_k: l.top_k.unwrap_or(d.top_k),
        top_p: l.top_p.unwrap_or(d.top_p),
        seed: l.seed.unwrap_or(d.seed),
        max_tokens: l.max_tokens.or(d.max_tokens).unwrap_or(mode.default_max_tokens()),
        stop: Vec::new(),
    };
    sampling.stop.extend(&model.tokenizer().stop_tokens);
    let media = !images.is_empty() || !audio.is_empty();
    let chat = l.chat.unwrap_or(d.chat) || (media && model.tokenizer().chat_template.is_some());
    let (prompt, media) =
        reasoning::prompt(model, mode, &l.prompt, &images, &audio, chat).map_err(|e| e.to_string())?;
    Ok((mode, mode.request(prompt, sampling).with_media(media.map(Arc::new))))
}

/// `flint generate --prompts FILE.jsonl`: every line a request; all run through one engine;
/// one JSON line per input line, in input order, written as soon as the lines before it are.
pub fn sub_agents(
    dev: &Device,
    model: &Model,
    file: &Path,
    defaults: &AgentDefaults,
    eopts: EngineOptions,
) -> Result<bool> {
    flint_runtime::check_regular(file).with_context(|| format!("reading {}", file.display()))?;
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    // (line number in the file, from 1; text): blank lines are skipped, not counted as requests.
    let lines: Vec<(usize, &str)> =
        text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()).map(|(n, l)| (n + 1, l)).collect();
    let mut engine = model.engine(eopts)?;
    let mut done: BTreeMap<usize, Value> = BTreeMap::new();
    let mut running: HashMap<RequestId, (usize, Mode)> = HashMap::new();
    for (i, &(n, line)) in lines.iter().enumerate() {
        match request_of(model, line, defaults) {
            Ok((mode, req)) => match engine.submit(req) {
                Ok(id) => {
                    running.insert(id, (i, mode));
                }
                Err(e) => {
                    done.insert(i, json!({"index": i, "line": n, "error": e.to_string()}));
                }
            },
            Err(e) => {
                done.insert(i, json!({"index": i, "line": n, "error": e}));
            }
        }
    }
    let bar = progress(Some(lines.len() as u64), &format!("{} requests", lines.len()));
    bar.inc(done.len() as u64);
    let mut stdout = std::io::stdout().lock();
    let mut next = 0;
    let mut failed = done.len();
    let mut flush = |done: &mut BTreeMap<usize, Value>, stdout: &mut std::io::StdoutLock<'_>| -> Result<()> {
        while let Some(v) = done.remove(&next) {
            writeln!(stdout, "{}", serde_json::to_string(&v)?)?;
            next += 1;
        }
        stdout.flush()?;
        Ok(())
    };
    flush(&mut done, &mut stdout)?;
    while !engine.is_idle() {
        for e in engine.step()? {
            match e {
                Event::Token { .. } => {}
                Event::Finished { request, output } => {
                    let (i, mode) = running[&request];
                    let mut v = reasoning::describe(model, mode, &output)?;
                    v["index"] = json!(i);
                    v["line"] = json!(lines[i].0);
                    done.insert(i, v);
                    bar.inc(1);
                }
                Event::Failed { request, error } => {
                    let (i, _) = running[&request];
                    done.insert(i, json!({"index": i, "line": lines[i].0, "error": error}));
                    failed += 1;
                    bar.inc(1);
                }
            }
        }
        flush(&mut done, &mut stdout)?;
    }
    bar.finish_and_clear();
    eprintln!(
        "[{} requests, {failed} refused or failed; {} batched steps on {}; peak KV {:.1} MiB]",
        lines.len(),
        engine.steps(),
        dev.caps().short_label(),
        engine.peak_kv_bytes() as f64 / (1 << 20) as f64
    );
    Ok(failed == 0)
}
