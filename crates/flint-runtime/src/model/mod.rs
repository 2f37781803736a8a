//! Model graphs and their weights, and [`Model`]: a decoder with its tokenizer, loaded from a
//! file, ready to tokenize, run and generate.

pub mod config;
pub mod decoder;
pub mod weights;

use std::path::{Path, PathBuf};

use flint_gpu::{Device, Recorder};

use crate::generate::Session;
use crate::gguf::Gguf;
use crate::tokenizer::Tokenizer;
use crate::{Result, RuntimeError};

/// A loaded model: weights on the GPU and the tokenizer.
#[derive(Debug)]
pub struct Model {
    /// The decoder.
    pub decoder: decoder::Decoder,
    /// Its tokenizer and chat template.
    pub tokenizer: Tokenizer,
    /// Where it was loaded from.
    pub path: PathBuf,
}

impl Model {
    /// Load a model file onto `dev` (a `.gguf` file of a llama or gemma3 decoder).
    pub fn load(dev: &Device, path: impl AsRef<Path>) -> Result<Model> {
        let path = path.as_ref();
        if path.is_dir() {
            return Err(RuntimeError::Model(format!(
                "{}: model directories (config.json + safetensors) are not supported yet; give a .gguf file",
                path.display()
            )));
        }
        let g = Gguf::open(path)?;
        let tokenizer = Tokenizer::from_gguf(&g)?;
        let decoder = decoder::Decoder::from_gguf(dev, &g)?;
        if tokenizer.vocab_size() > decoder.cfg.vocab {
            return Err(g
                .error(format!("{} tokens but an output head of {}", tokenizer.vocab_size(), decoder.cfg.vocab))
                .into());
        }
        Ok(Model { decoder, tokenizer, path: path.to_path_buf() })
    }

    /// Token ids of a prompt; `chat` wraps it as one user message in the model's chat template
    /// and opens the assistant's turn.
    pub fn prompt_ids(&self, prompt: &str, chat: bool) -> Result<Vec<u32>> {
        if chat {
            let text = self.tokenizer.apply_chat_template(&[("user".into(), prompt.into())], true)?;
            // The template writes the special tokens itself.
            self.tokenizer.encode(&text, false)
        } else {
            self.tokenizer.encode(prompt, true)
        }
    }

    /// A generation session with room for `capacity` tokens.
    pub fn session(&self, capacity: usize) -> Result<Session<'_>> {
        Session::new(&self.decoder, capacity)
    }

    /// Logits at every position of `ids`, f32 `[ids.len(), vocab]` row-major.
    pub fn logits(&self, ids: &[u32]) -> Result<Vec<f32>> {
        let dev = self.decoder.device().clone();
        let mut session = self.session(ids.len())?;
        let mut rec = Recorder::new(&dev);
        let h = session.forward(&mut rec, ids)?;
        let logits = self.decoder.logits(&mut rec, &h, 0..ids.len())?;
        rec.submit()?.wait()?;
        Ok(dev.read_f32(&logits)?)
    }
}
