//! `flint`: generate text with a model, list adapters, run the conformance table, benchmark
//! kernels.

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
    /// Generate text with a model (fetched on first use when given by name).
    Generate {
        /// A .gguf file, or a known model name (smollm2-135m, gemma3-270m).
        #[arg(long, default_value = flint_runtime::fetch::DEFAULT_MODEL)]
        model: String,
        /// The prompt.
        #[arg(long)]
        prompt: String,
        /// Wrap the prompt in the model's chat template as a user message.
        #[arg(long)]
        chat: bool,
        /// Most new tokens.
        #[arg(long, default_value_t = 128)]
        max_tokens: usize,
        /// 0 for greedy.
        #[arg(long, default_value_t = 0.0)]
        temperature: f32,
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
        /// After generating, time one more decode step per dispatch and print the breakdown.
        #[arg(long)]
        profile: bool,
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
        /// GPU adapter.
        #[arg(long, default_value = "")]
        adapter: String,
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

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Generate {
            model,
            prompt,
            chat,
            max_tokens,
            temperature,
            top_k,
            top_p,
            seed,
            adapter,
            json,
            profile,
        } => {
            let sampling = SamplingOptions { temperature, top_k, top_p, seed, max_tokens, stop: Vec::new() };
            models::generate(models::GenerateOpts {
                adapter,
                model: Some(model),
                prompt,
                chat,
                sampling,
                json,
                profile,
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Tokenize { model, text, json } => {
            models::tokenize(Some(&model), &text, json).map(|()| ExitCode::SUCCESS)
        }
        Command::Logits { model, token_ids, out, adapter } => {
            models::logits(&adapter, Some(&model), &token_ids, &out).map(|()| ExitCode::SUCCESS)
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
