//! Use the batched engine as a library: several independent requests and one contemplating
//! request (4 branches from one prefill) decoded together, tokens streamed as events.
//!
//! cargo run --release --example engine -p flint-runtime -- MODEL.gguf

use std::collections::HashMap;

use flint_runtime::engine::{EngineOptions, Event, Request};
use flint_runtime::generate::SamplingOptions;
use flint_runtime::gpu::Device;
use flint_runtime::model::Model;
use flint_runtime::reasoning::{self, Mode};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: engine MODEL.gguf");
        std::process::exit(2);
    };
    let dev = Device::open("")?;
    let model = Model::load(&dev, &path)?;
    let mut engine = model.engine(EngineOptions { kv_tokens: 8192, page_size: 64, max_batch: 16 })?;
    let stop = model.tokenizer().stop_tokens.clone();
    let mut names = HashMap::new();
    for prompt in ["The capital of France is", "Water boils at", "Once upon a time"] {
        let sampling = SamplingOptions { max_tokens: 24, stop: stop.clone(), ..Default::default() };
        let id = engine.submit(Request::new(model.prompt_ids(prompt, false)?, sampling))?;
        names.insert(id, prompt.to_string());
    }
    let question = "What is 3 + 5?";
    let mode = Mode::Contemplate { branches: 4 };
    let sampling = SamplingOptions { temperature: 0.7, seed: 1, max_tokens: 48, stop, ..Default::default() };
    let ids = reasoning::prompt_ids(&model, mode, question, true)?;
    // Prefilled once, decoded as 4 branches sharing the prompt's KV pages, voted on by the engine.
    let contemplate = engine.submit(mode.request(ids, sampling))?;

    let mut streamed = 0;
    engine.run(|event| match event {
        Event::Token { .. } => streamed += 1,
        Event::Finished { request, output } if request == contemplate => {
            if let Some(vote) = &output.vote {
                println!("{question} -> {:?} (branch {} of {})", vote.answer, vote.chosen, output.branches.len());
            }
        }
        Event::Finished { request, output } => {
            let text = model.tokenizer().decode(&output.branches[0].tokens, true).unwrap_or_default();
            println!("{}{text}", names[&request]);
        }
        Event::Failed { request, error } => eprintln!("request {request:?} failed: {error}"),
    })?;
    eprintln!("{streamed} tokens in {} batched steps", engine.steps());
    Ok(())
}
