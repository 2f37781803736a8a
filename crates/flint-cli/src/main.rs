//! `flint`: generate text with a model, list adapters, run the conformance table, benchmark
//! kernels.

mod agents;
mod bench_model;
mod kernels;
mod models;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use flint_runtime::generate::SamplingOptions;

#[derive(Parser)]
#[command(name = "flint", version, about = "GPU kernels and runtime for multimodal reasoning models")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve a model over HTTP with OpenAI's API (/v1/chat/completions, /v1/completions,
    /// /v1/models, /health, /metrics), every request decoded in one batched engine.
    Serve {
        /// A .gguf file, a Hugging Face model directory, or a known model name (smollm2-135m, gemma3-270m).
        #[arg(long, default_value = flint_runtime::fetch::DEFAULT_MODEL)]
        model: String,
        /// Address to listen on (loopback only unless told otherwise).
        #[arg(long, default_value = "127.0.0.1")]
        host: std::net::IpAddr,
        /// Port (0: any free port; the one chosen is printed).
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// The model's name in the API (default: the file's stem).
        #[arg(long)]
        name: Option<String>,
        /// Require `Authorization: Bearer KEY` on every request but /health (also read from
        /// FLINT_API_KEY).
        #[arg(long, env = "FLINT_API_KEY", hide_env_values = true)]
        api_key: Option<String>,
        /// KV cache of the engine, in tokens, over all requests.
        #[arg(long, default_value_t = 16384)]
        kv_tokens: usize,
        /// Most sequences decoded in one step.
        #[arg(long, default_value_t = 32)]
        max_batch: usize,
        /// Requests queued or running at once; more are answered 429.
        #[arg(long, default_value_t = 256)]
        max_concurrent: usize,
        /// Largest request body in bytes (images come as data URLs).
        #[arg(long, default_value_t = 32 << 20)]
        max_body_bytes: usize,
        /// Longest prompt in tokens (default: the model's context).
        #[arg(long)]
        max_prompt_tokens: Option<usize>,
        /// Most new tokens a choice may ask for.
        #[arg(long, default_value_t = 4096)]
        max_tokens: usize,
        /// Let image_url name a file on this machine (off: data URLs only).
        #[arg(long)]
        allow_local_files: bool,
        /// GPU adapter (see `flint devices`).
        #[arg(long, default_value = "")]
        adapter: String,
    },
    /// Generate text with a model (fetched on first use when given by name).
    Generate {
        /// A .gguf file, or a known model name (smollm2-135m, gemma3-270m).
        #[arg(long, default_value = flint_runtime::fetch::DEFAULT_MODEL)]
        model: String,
        /// The prompt.
        #[arg(long, required_unless_present = "prompts", conflicts_with = "prompts")]
        prompt: Option<String>,
        /// Many independent requests, one JSON object per line: {"prompt": "...", and optionally
        /// "mode", "branches", "max_tokens", "temperature", "top_k", "top_p", "seed", "chat",
        /// "images", "audio"};
        /// results are written as JSON lines in input order.
        #[arg(long)]
        prompts: Option<PathBuf>,
        /// An image for a multimodal model (repeat for several); they go before the prompt text,
        /// or at its `<image>` placeholders.
        #[arg(long = "image", conflicts_with = "prompts")]
        images: Vec<PathBuf>,
        /// A WAV file for an audio-language model (repeat for several clips, each at most 30 s);
        /// they go before the prompt text, or at its `<|AUDIO|>` placeholders.
        #[arg(long = "audio", conflicts_with = "prompts")]
        audio: Vec<PathBuf>,
        /// Wrap the prompt in the model's chat template as a user message (implied by think and
        /// contemplate).
        #[arg(long)]
        chat: bool,
        /// instant (greedy, short budget), think (reason first, long budget) or contemplate
        /// (several branches from one prefill, then a vote).
        #[arg(long, default_value = "instant")]
        mode: String,
        /// Branches of contemplate.
        #[arg(long, default_value_t = 4)]
        branches: usize,
        /// Most new tokens (default: 256 instant, 2048 think, 1024 contemplate).
        #[arg(long)]
        max_tokens: Option<usize>,
        /// 0 for greedy (default: 0, and 0.7 for contemplate).
        #[arg(long)]
        temperature: Option<f32>,
        /// Keep the k most likely tokens (0: no limit).
        #[arg(long, default_value_t = 0)]
        top_k: usize,
        /// Nucleus sampling cut.
        #[arg(long, default_value_t = 1.0)]
        top_p: f32,
        /// Seed of the sampler.
        #[arg(long, default_value_t = 0)]
        seed: u32,
        /// GPU adapter (see `flint devices`).
        #[arg(long, default_value = "")]
        adapter: String,
        /// Print one JSON object: ids, text, timings.
        #[arg(long)]
        json: bool,
        /// After generating, time one more decode step, and the prompt's first prefill chunk, per
        /// dispatch and print the breakdowns.
        #[arg(long)]
        profile: bool,
        /// KV cache of the batched engine (contemplate, --prompts), in tokens.
        #[arg(long, default_value_t = 16384)]
        kv_tokens: usize,
        /// Most sequences the batched engine decodes in one step.
        #[arg(long, default_value_t = 32)]
        max_batch: usize,
    },
    /// Show how a model's tokenizer splits a text.
    Tokenize {
        /// A .gguf file or a known model name.
        #[arg(long, default_value = flint_runtime::fetch::DEFAULT_MODEL)]
        model: String,
        /// The text.
        #[arg(long)]
        text: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write a model's logits at every position of some token ids to a safetensors file
    /// (tensor "logits", f32 [seq, vocab]).
    Logits {
        /// A .gguf file or a known model name.
        #[arg(long, default_value = flint_runtime::fetch::DEFAULT_MODEL)]
        model: String,
        /// Comma separated token ids.
        #[arg(long)]
        token_ids: String,
        /// Output file.
        #[arg(long)]
        out: PathBuf,
        /// Normalised pixel values for the image tokens, f32 `[images, 3, H, W]` (.npy); for
        /// Qwen2.5-VL the processor's patch rows `[patches, 3 * 2 * 14 * 14]`, with
        /// `--image-grid-thw`.
        #[arg(long)]
        pixel_values: Option<PathBuf>,
        /// Qwen2.5-VL: each image's patch grid as `t,h,w`, images separated by `;`
        /// (transformers' `image_grid_thw`; t is 1 for images).
        #[arg(long, requires = "pixel_values")]
        image_grid_thw: Option<String>,
        /// GPU adapter.
        #[arg(long, default_value = "")]
        adapter: String,
    },
    /// Transcribe speech with Whisper (fetched on first use when given by name): WAV files,
    /// resampled to 16 kHz, in 30-second windows, greedy decoding without timestamps.
    Transcribe {
        /// WAV files (8/16/24/32-bit PCM or 32-bit float, any rate and channel count); repeat
        /// for several.
        #[arg(long = "audio", required = true)]
        audio: Vec<PathBuf>,
        /// A CTranslate2 Whisper directory (model.bin, config.json, tokenizer.json) or its
        /// model.bin, a Hugging Face Whisper directory (config.json, safetensors,
        /// tokenizer.json), or a known model name (whisper-tiny.en).
        #[arg(long, default_value = "whisper-tiny.en")]
        model: String,
        /// Most tokens per 30-second window.
        #[arg(long, default_value_t = 224)]
        max_tokens: usize,
        /// Most windows decoded at once (1 to 8), from one file or several.
        #[arg(long, default_value_t = 8)]
        batch: usize,
        /// The spoken language's code (en, fr, de, ...); detected from each file's first window
        /// on multilingual models when not given.
        #[arg(long)]
        language: Option<String>,
        /// transcribe, or translate into English (multilingual models).
        #[arg(long, default_value = "transcribe")]
        task: String,
        /// Decode timestamps and print timed segments ([start --> end] text).
        #[arg(long)]
        timestamps: bool,
        /// Subtitles instead of text: srt or vtt (implies --timestamps).
        #[arg(long)]
        subtitles: Option<String>,
        /// Print one JSON object per file: ids, log-probs, text, timings, real-time factor.
        #[arg(long)]
        json: bool,
        /// GPU adapter.
        #[arg(long, default_value = "")]
        adapter: String,
    },
    /// Whisper's log-mel features of a WAV file (resampled to 16 kHz, in 30-second windows),
    /// computed on the GPU, written to a safetensors file as transformers' WhisperFeatureExtractor
    /// returns them (tensor "input_features", f32 [windows, mels, 3000]).
    LogMel {
        /// A WAV file (8/16/24/32-bit PCM or 32-bit float, any rate and channel count).
        #[arg(long)]
        audio: PathBuf,
        /// Mel filters: 80, or 128 for Whisper large-v3.
        #[arg(long, default_value_t = 80)]
        mels: usize,
        /// Output file.
        #[arg(long)]
        out: PathBuf,
        /// GPU adapter.
        #[arg(long, default_value = "")]
        adapter: String,
    },
    /// End-to-end model figures: prefill tokens/s, batched decode tokens/s, contemplate over a
    /// shared prefix, with weight GB/s and KV memory.
    BenchModel {
        /// A .gguf file or a known model name.
        #[arg(long, default_value = flint_runtime::fetch::DEFAULT_MODEL)]
        model: String,
        /// GPU adapter.
        #[arg(long, default_value = "")]
        adapter: String,
        /// Prompt lengths to prefill.
        #[arg(long, value_delimiter = ',', default_values_t = [128usize, 512])]
        prefill: Vec<usize>,
        /// Batch sizes of independent sequences.
        #[arg(long, value_delimiter = ',', default_values_t = [1usize, 4, 16])]
        batch: Vec<usize>,
        /// Branch counts of contemplate.
        #[arg(long, value_delimiter = ',', default_values_t = [1usize, 4, 16])]
        branches: Vec<usize>,
        /// Shared prefix of contemplate, in tokens.
        #[arg(long, default_value_t = 1024)]
        prefix: usize,
        /// Timed decode steps per configuration.
        #[arg(long, default_value_t = 16)]
        steps: usize,
        /// Prompt lengths that join 4 decoding sequences: how long the join takes and how
        /// long the running sequences wait between tokens meanwhile (none by default).
        #[arg(long, value_delimiter = ',')]
        join: Vec<usize>,
        /// Also time a SmolVLM-256M-shaped vision tower (random weights) in front of the model:
        /// one 512x512 tile, and the prefill of one 2x2-tiled image with a 32-token question.
        #[arg(long)]
        vision: bool,
        /// Print one JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Fetch known models into the cache ($FLINT_CACHE_DIR, else ~/.cache/flint).
    Fetch {
        /// Model names (all known ones when none).
        models: Vec<String>,
    },
    /// List the GPU adapters wgpu can reach.
    Devices {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Run kernels against the CPU reference on every matching adapter.
    Conformance {
        /// Only adapters matching this (backend name or part of the adapter name, e.g. `vulkan`).
        #[arg(long, default_value = "")]
        adapter: String,
        /// Only cases whose op or name starts with this (e.g. `matmul`, `rope_half`).
        #[arg(long, default_value = "")]
        op: String,
        /// Also run the large bench-tier cases.
        #[arg(long)]
        bench_cases: bool,
        /// Print one JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Time kernels with GPU timestamps and compare with the adapter's roofline.
    Bench {
        /// Only adapters matching this.
        #[arg(long, default_value = "")]
        adapter: String,
        /// Only cases whose op or name starts with this.
        #[arg(long, default_value = "")]
        op: String,
        /// Launches timed per case.
        #[arg(long, default_value_t = 10)]
        iters: usize,
        /// Also time the small test-tier cases.
        #[arg(long)]
        all: bool,
        /// Peak GFLOP/s to compare with (default: measured by flint's roofline kernels).
        #[arg(long)]
        peak_gflops: Option<f64>,
        /// Peak GB/s to compare with (default: measured).
        #[arg(long)]
        peak_gbs: Option<f64>,
        /// Also print each dispatch of a launch with its median time.
        #[arg(long)]
        dispatches: bool,
        /// Print one JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `flint serve`: bind, say where, serve until SIGTERM or Ctrl-C.
fn serve(model: flint_runtime::model::Model, opts: flint_serve::ServeOptions) -> Result<()> {
    use anyhow::Context;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")?;
    rt.block_on(async move {
        let name = opts.model_name.clone();
        let keyed = opts.api_key.is_some();
        let server = flint_serve::Server::bind(model, opts.clone())
            .await
            .with_context(|| format!("starting the server on {}", opts.addr))?;
        let addr = server.local_addr()?;
        // The one line a script waits for (the port is the chosen one when asked for 0).
        println!("flint serve: {name} on http://{addr}/v1{}", if keyed { " (API key required)" } else { "" });
        use std::io::Write;
        std::io::stdout().flush()?;
        server.run(flint_serve::shutdown_signal()).await.context("serving")?;
        eprintln!("flint serve: stopped");
        Ok(())
    })
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Generate {
            model,
            prompt,
            prompts,
            images,
            audio,
            chat,
            mode,
            branches,
            max_tokens,
            temperature,
            top_k,
            top_p,
            seed,
            adapter,
            json,
            profile,
            kv_tokens,
            max_batch,
        } => {
            let engine = flint_runtime::engine::EngineOptions { kv_tokens, page_size: 64, max_batch };
            if let Some(file) = prompts {
                let (dev, m) = models::load(&adapter, Some(&model))?;
                let defaults =
                    agents::AgentDefaults { mode, branches, max_tokens, temperature, top_k, top_p, seed, chat };
                let ok = agents::sub_agents(&dev, &m, &file, &defaults, engine)?;
                return Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE });
            }
            let mode = flint_runtime::reasoning::Mode::parse(&mode, branches)?;
            let sampling = SamplingOptions {
                temperature: temperature.unwrap_or(mode.default_temperature()),
                top_k,
                top_p,
                seed,
                max_tokens: max_tokens.unwrap_or(mode.default_max_tokens()),
                stop: Vec::new(),
            };
            models::generate(models::GenerateOpts {
                adapter,
                model: Some(model),
                prompt: prompt.unwrap_or_default(),
                images,
                audio,
                chat,
                mode,
                sampling,
                json,
                profile,
                engine,
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve {
            model,
            host,
            port,
            name,
            api_key,
            kv_tokens,
            max_batch,
            max_concurrent,
            max_body_bytes,
            max_prompt_tokens,
            max_tokens,
            allow_local_files,
            adapter,
        } => {
            let (_dev, m) = models::load(&adapter, Some(&model))?;
            let model_name = name.unwrap_or_else(|| {
                m.path().file_stem().map_or_else(|| "flint".into(), |s| s.to_string_lossy().into_owned())
            });
            let opts = flint_serve::ServeOptions {
                addr: std::net::SocketAddr::new(host, port),
                model_name,
                api_key: api_key.filter(|k| !k.is_empty()),
                engine: flint_runtime::engine::EngineOptions { kv_tokens, page_size: 64, max_batch },
                max_body_bytes,
                max_prompt_tokens: max_prompt_tokens.unwrap_or(usize::MAX),
                max_tokens,
                max_concurrent,
                allow_local_files,
            };
            serve(m, opts)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Tokenize { model, text, json } => {
            models::tokenize(Some(&model), &text, json).map(|()| ExitCode::SUCCESS)
        }
        Command::Logits { model, token_ids, out, pixel_values, image_grid_thw, adapter } => {
            let pixels = pixel_values.as_deref().map(|p| (p, image_grid_thw.as_deref()));
            models::logits(&adapter, Some(&model), &token_ids, pixels, &out).map(|()| ExitCode::SUCCESS)
        }
        Command::Transcribe {
            audio,
            model,
            max_tokens,
            batch,
            language,
            task,
            timestamps,
            subtitles,
            json,
            adapter,
        } => {
            let opts = models::TranscribeArgs { max_tokens, batch, language, task, timestamps, subtitles, json };
            models::transcribe(&adapter, &model, &audio, &opts).map(|()| ExitCode::SUCCESS)
        }
        Command::LogMel { audio, mels, out, adapter } => {
            models::log_mel(&adapter, &audio, mels, &out).map(|()| ExitCode::SUCCESS)
        }
        Command::BenchModel { model, adapter, prefill, batch, branches, prefix, steps, join, vision, json } => {
            let opts = bench_model::BenchModelOpts {
                adapter,
                model,
                prefill,
                batch,
                branches,
                prefix,
                steps,
                join,
                vision,
                json,
            };
            bench_model::bench_model(&opts).map(|()| ExitCode::SUCCESS)
        }
        Command::Fetch { models: names } => models::fetch_models(&names).map(|()| ExitCode::SUCCESS),
        Command::Devices { json } => kernels::devices(json),
        Command::Conformance { adapter, op, bench_cases, json } => {
            kernels::conformance(&adapter, &op, bench_cases, json)
        }
        Command::Bench { adapter, op, iters, all, peak_gflops, peak_gbs, dispatches, json } => {
            let opts = kernels::BenchOpts { iters, all, peak_gflops, peak_gbs, dispatches, json };
            kernels::bench(&adapter, &op, &opts)
        }
    }
}
