//! Use flint as a library: load a GGUF model, tokenize, prefill, then step token by token with
//! sampling on the GPU, streaming text as it comes.
//!
//! cargo run --release --example generate -p flint-runtime -- MODEL.gguf "The capital of France is"

use std::io::Write;

use flint_runtime::generate::{SamplingOptions, Session};
use flint_runtime::gpu::Device;
use flint_runtime::model::Model;
use flint_runtime::tokenizer::StreamDecoder;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(path), Some(prompt)) = (args.next(), args.next()) else {
        eprintln!("usage: generate MODEL.gguf PROMPT");
        std::process::exit(2);
    };
    // The preferred adapter; a host program that owns a wgpu device would use Device::from_wgpu.
    let dev = Device::open("")?;
    let model = Model::load(&dev, &path)?;
    let ids = model.prompt_ids(&prompt, false)?;
    // Sampled; stops at the model's end-of-turn tokens.
    let opts = SamplingOptions { temperature: 0.7, top_k: 40, top_p: 0.95, seed: 1, ..model.sampling(48) };

    let mut session: Session = model.session(ids.len() + opts.max_tokens)?;
    let mut stream = StreamDecoder::default();
    print!("{prompt}");
    let out = session.generate(&ids, &opts, |id| {
        if let Ok(text) = stream.push(model.tokenizer(), id) {
            print!("{text}");
            let _ = std::io::stdout().flush();
        }
    })?;
    println!();
    eprintln!("{} tokens, {:.1} tok/s decode, stopped by {:?}", out.tokens.len(), out.decode_tokens_per_s(), out.stop);
    Ok(())
}
