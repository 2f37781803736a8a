//! Model graphs and their weights, and [`Model`]: a decoder with its tokenizer, loaded from a
//! file, ready to tokenize, run and generate.

pub mod arch;
pub mod audio;
pub mod config;
pub mod decoder;
pub mod qwen_vision;
pub mod vision;
pub mod weights;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use flint_gpu::{DType, Device, Recorder};

use crate::audio::Audio;
use crate::generate::Session;
use crate::gguf::Gguf;
use crate::hf::{Config, HfDir};
use crate::image::Rgb;
use crate::multimodal::{AudioTower, Encoders, Media, QwenVision, Vision};
use crate::tokenizer::Tokenizer;
use crate::{Result, RuntimeError};
use decoder::Decoder;

/// How a prompt is put together (see [`Model::build_prompt`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct PromptSpec<'a> {
    /// The user's text (it may hold `<image>` placeholders, one per image).
    pub text: &'a str,
    /// Images.
    pub images: &'a [Rgb],
    /// Audio clips (for audio-language models; the text may hold one `<|AUDIO|>` per clip).
    pub audio: &'a [Audio],
    /// Through the chat template, as one user message opening the assistant's turn.
    pub chat: bool,
    /// A system message before it (with `chat`).
    pub system: Option<&'a str>,
    /// `enable_thinking` for templates that read it.
    pub thinking: Option<bool>,
}

/// One message of a conversation (see [`Model::chat_prompt`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatMessage {
    /// system, user or assistant.
    pub role: String,
    /// The text.
    pub text: String,
    /// Images before the text.
    pub images: usize,
    /// Audio clips before the text (after the images).
    pub audio: usize,
}

/// A loaded model: weights on the GPU, the tokenizer, and for multimodal models the vision side
/// or the audio tower.
///
/// The GPU parts are shared, not borrowed: [`Model::engine`] and [`Model::session`] return
/// owned values (`Send`, `'static`) holding `Arc`s of the decoder and media encoders, so a host can
/// keep them in shared state, move them to a worker thread, or drop the `Model` first.
#[derive(Debug)]
pub struct Model {
    decoder: Arc<Decoder>,
    tokenizer: Arc<Tokenizer>,
    path: PathBuf,
    encoders: Encoders,
}

impl Model {
    /// Load a model onto `dev`: a `.gguf` file of a family in
    /// [`GGUF_FAMILIES`](arch::GGUF_FAMILIES) (llama, gemma3), or a Hugging Face directory
    /// (config.json + safetensors) of a family flint reads from them (Idefics3 / SmolVLM, Llama,
    /// Gemma 3 with or without vision, Qwen2, Qwen2-Audio).
    pub fn load(dev: &Device, path: impl AsRef<Path>) -> Result<Model> {
        let path = path.as_ref();
        if path.is_dir() {
            return Model::load_hf(dev, path);
        }
        Model::from_gguf(dev, &Gguf::open(path)?)
    }

    /// Load a GGUF model from its bytes (what the browser fetched, say); `name` names it in
    /// errors and is its [`Model::path`].
    pub fn from_gguf_bytes(dev: &Device, name: &str, bytes: Vec<u8>) -> Result<Model> {
        Model::from_gguf(dev, &Gguf::from_bytes(name, bytes)?)
    }

    fn from_gguf(dev: &Device, g: &Gguf) -> Result<Model> {
        let tokenizer = Tokenizer::from_gguf(g)?;
        let decoder = Decoder::from_gguf(dev, g)?;
        if tokenizer.vocab_size() > decoder.cfg.vocab {
            return Err(g
                .error(format!("{} tokens but an output head of {}", tokenizer.vocab_size(), decoder.cfg.vocab))
                .into());
        }
        Ok(Model::from_parts(decoder, tokenizer, g.path(), None))
    }

    /// A model from its parts (a decoder built in memory, say, with a tokenizer).
    pub fn from_parts(decoder: Decoder, tokenizer: Tokenizer, path: impl AsRef<Path>, vision: Option<Vision>) -> Model {
        Model {
            decoder: Arc::new(decoder),
            tokenizer: Arc::new(tokenizer),
            path: path.as_ref().to_path_buf(),
            encoders: Encoders { vision: vision.map(Arc::new), ..Encoders::default() },
        }
    }

    /// The decoder (clone the `Arc` to build an [`Engine`](crate::engine::Engine) or
    /// [`Session`] over it directly).
    pub fn decoder(&self) -> &Arc<Decoder> {
        &self.decoder
    }

    /// The tokenizer and chat template.
    pub fn tokenizer(&self) -> &Arc<Tokenizer> {
        &self.tokenizer
    }

    /// The vision side of a multimodal model.
    pub fn vision(&self) -> Option<&Arc<Vision>> {
        self.encoders.vision.as_ref()
    }

    /// The audio tower of an audio-language model.
    pub fn audio(&self) -> Option<&Arc<AudioTower>> {
        self.encoders.audio.as_ref()
    }

    /// Whether the model takes images (a vision side of either kind).
    pub fn takes_images(&self) -> bool {
        self.encoders.vision.is_some() || self.encoders.qwen.is_some()
    }

    /// The vision side of a Qwen2.5-VL model.
    pub fn qwen_vision(&self) -> Option<&Arc<QwenVision>> {
        self.encoders.qwen.as_ref()
    }

    /// The model's media encoders (clone it to share them).
    pub fn encoders(&self) -> &Encoders {
        &self.encoders
    }

    /// Where the model was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Load a Hugging Face model directory from its files' bytes by name (`config.json`,
    /// `model.safetensors` or its shards with their index, `tokenizer.json`, the tokenizer and
    /// processor configs): what the browser fetched, say. `name` stands for the directory in
    /// errors and is its [`Model::path`].
    pub fn from_hf_files(dev: &Device, name: &str, files: std::collections::HashMap<String, Vec<u8>>) -> Result<Model> {
        Model::load_hf_files(dev, crate::Files::Memory { name: name.into(), files })
    }

    fn load_hf(dev: &Device, path: &Path) -> Result<Model> {
        Model::load_hf_files(dev, crate::Files::dir(path))
    }

    fn load_hf_files(dev: &Device, files: crate::Files) -> Result<Model> {
        let dir = HfDir::load(files)?;
        let path = &dir.dir.clone();
        let top = Config::new(path.join("config.json"), &dir.config);
        // f32 checkpoints keep an f32 cache so that they match transformers closely.
        let kv_dtype =
            if dir.main_dtype() != safetensors::Dtype::F32 && dev.caps().f16 { DType::F16 } else { DType::F32 };
        let model_type = top.str_or("model_type", "")?;
        let Some(family) = arch::hf_family(model_type) else {
            return Err(top.error(
                "model_type",
                &format!("is {model_type:?}; flint loads these Hugging Face model types: {}", arch::known(true)),
            ));
        };
        let arch::Loaded { decoder, vision, audio, qwen_vision } = (family.load)(dev, &dir, &top, kv_dtype)?;
        let tokenizer = Tokenizer::from_hf_files(&dir.files)?;
        // The tokens the processors write must be the tokenizer's, with the ids the config says.
        let expect = |token: &str, want: Option<(u32, &str)>| -> Result<()> {
            let id = tokenizer.token_id(token);
            if id.is_none() || want.is_some_and(|(w, _)| id != Some(w)) {
                return Err(RuntimeError::Model(format!(
                    "{}: the tokenizer's {token} is {id:?}, but the model needs it{}",
                    path.display(),
                    want.map_or(String::new(), |(w, key)| format!(" to be token {w} ({key})"))
                )));
            }
            Ok(())
        };
        if let Some(Vision {
            processor: crate::multimodal::Processor::Gemma3 { boi, image_token, eoi, .. },
            image_token_id,
            ..
        }) = &vision
        {
            expect(boi, None)?;
            expect(eoi, None)?;
            expect(image_token, Some((*image_token_id, "image_token_index")))?;
        }
        if let Some(a) = &audio {
            expect(&a.processor.audio_token, Some((a.audio_token_id, "audio_token_index")))?;
        }
        if let Some(q) = &qwen_vision {
            expect(&q.markup.1, Some((q.image_token_id, "image_token_id")))?;
        }
        if tokenizer.vocab_size() > decoder.cfg.vocab {
            return Err(RuntimeError::Model(format!(
                "{}: the tokenizer has {} tokens but the model's vocabulary is {}",
                path.display(),
                tokenizer.vocab_size(),
                decoder.cfg.vocab
            )));
        }
        let mut model = Model::from_parts(decoder, tokenizer, path, vision);
        model.encoders.audio = audio.map(Arc::new);
        model.encoders.qwen = qwen_vision.map(Arc::new);
        Ok(model)
    }

    /// Token ids of a prompt; `chat` wraps it as one user message in the model's chat template
    /// and opens the assistant's turn.
    pub fn prompt_ids(&self, prompt: &str, chat: bool) -> Result<Vec<u32>> {
        Ok(self.build_prompt(&PromptSpec { text: prompt, chat, ..Default::default() })?.0)
    }

    /// The chat template over an optional system message and one user message with `images`
    /// images before the text.
    fn chat_text(&self, p: &PromptSpec<'_>) -> Result<String> {
        let mut messages = Vec::new();
        if let Some(system) = p.system {
            messages.push(ChatMessage { role: "system".into(), text: system.into(), images: 0, audio: 0 });
        }
        messages.push(ChatMessage {
            role: "user".into(),
            text: p.text.into(),
            images: p.images.len(),
            audio: p.audio.len(),
        });
        self.render_chat(&messages, p.thinking)
    }

    /// The chat template over `messages`, the assistant's turn opened. Multimodal templates
    /// iterate over typed content parts (each message's images, its audio clips, then its text);
    /// text templates take strings.
    fn render_chat(&self, messages: &[ChatMessage], thinking: Option<bool>) -> Result<String> {
        use serde_json::json;
        let Some(template) = self.tokenizer.chat_template.as_deref() else {
            return Err(RuntimeError::Tokenizer(format!(
                "{} has no chat template (tokenizer.chat_template)",
                self.path.display()
            )));
        };
        let parts = self.encoders.vision.is_some()
            || self.encoders.audio.is_some()
            || self.encoders.qwen.is_some()
            || template.contains("['type']")
            || template.contains(".type");
        let mut clips = 0;
        let msgs: Vec<serde_json::Value> = messages
            .iter()
            .map(|m| {
                let content = if parts {
                    let mut c: Vec<serde_json::Value> = (0..m.images).map(|_| json!({"type": "image"})).collect();
                    // Qwen2-Audio's template asks for an `audio` (or `audio_url`) key.
                    for _ in 0..m.audio {
                        clips += 1;
                        c.push(json!({"type": "audio", "audio": format!("clip {clips}")}));
                    }
                    c.push(json!({"type": "text", "text": m.text}));
                    json!(c)
                } else {
                    json!(m.text)
                };
                json!({"role": m.role, "content": content})
            })
            .collect();
        self.tokenizer.apply_chat_template_json(json!(msgs), true, thinking)
    }

    /// Token ids and media of a prompt: each image is preprocessed as the model's processor
    /// does, each audio clip made into log-mel features; a text that already holds one
    /// placeholder per image (`<image>`) or clip (`<|AUDIO|>`) is used as written (no
    /// template), otherwise the images and clips go before the text (in the chat template with
    /// `chat`); each placeholder is then expanded into its tiles' or clip's tokens.
    pub fn build_prompt(&self, p: &PromptSpec<'_>) -> Result<(Vec<u32>, Option<Media>)> {
        let image_inline = !p.images.is_empty()
            && (p.text.contains("<image>")
                || self.encoders.vision.as_ref().is_some_and(|v| v.processor.has_placeholder(p.text))
                || self.encoders.qwen.as_ref().is_some_and(|q| q.has_placeholder(p.text)));
        let audio_inline =
            !p.audio.is_empty() && self.encoders.audio.as_ref().is_some_and(|a| a.processor.has_placeholder(p.text));
        let inline = image_inline || audio_inline;
        let templated = p.chat && !inline;
        if templated && self.tokenizer.chat_template.is_none() {
            return Err(RuntimeError::Tokenizer(format!(
                "{} has no chat template (tokenizer.chat_template)",
                self.path.display()
            )));
        }
        let text = if inline {
            p.text.to_string()
        } else if templated {
            self.chat_text(p)?
        } else {
            let clips: String = match &self.encoders.audio {
                Some(a) => (1..=p.audio.len()).map(|n| a.processor.markup(n)).collect(),
                None => String::new(),
            };
            format!("{}{clips}{}", "<image>".repeat(p.images.len()), p.text)
        };
        self.encode_with_media(&text, p.images, p.audio, !templated)
    }

    /// Token ids (with BOS when `special`) and media of `text`, whose image placeholders
    /// (`<image>`, or Gemma 3's `<start_of_image>`), one per image of `images`, are expanded
    /// into the image tiles' tokens as the family's processor writes them, and whose audio
    /// placeholders (`<|AUDIO|>`), one per clip of `audio`, into the clips' tokens.
    fn encode_with_media(
        &self,
        text: &str,
        images: &[Rgb],
        audio: &[Audio],
        special: bool,
    ) -> Result<(Vec<u32>, Option<Media>)> {
        let mut media = Media::default();
        let text = if images.is_empty() {
            text.to_string()
        } else if let Some(qwen) = &self.encoders.qwen {
            let (text, patches) = qwen.prompt(text, images)?;
            media.patches = Some(patches);
            text
        } else {
            let vision = self.encoders.vision.as_ref().ok_or_else(|| {
                RuntimeError::Request(format!("{} is a text-only model; it cannot take images", self.path.display()))
            })?;
            let (text, pixels) = vision.processor.prompt(text, images)?;
            media.pixels = Some(pixels);
            text
        };
        let text = if audio.is_empty() {
            text
        } else {
            let tower = self.encoders.audio.as_ref().ok_or_else(|| {
                RuntimeError::Request(format!("{} has no audio tower; it cannot take audio", self.path.display()))
            })?;
            let features = tower.processor.features(self.decoder.device(), audio)?;
            let text = tower.processor.expand(&text, &features.tokens())?;
            media.audio = Some(features);
            text
        };
        // A templated text has its special tokens written by the template.
        let ids = self.tokenizer.encode(&text, special)?;
        Ok((ids, media.or_none()))
    }

    /// Token ids and media of a whole conversation through the chat template, the assistant's
    /// turn opened: each message's images (taken from `images` in order) and clips (from
    /// `audio`) go before its text, as the typed parts multimodal templates iterate over;
    /// `thinking` sets `enable_thinking`.
    pub fn chat_prompt(
        &self,
        messages: &[ChatMessage],
        images: &[Rgb],
        audio: &[Audio],
        thinking: Option<bool>,
    ) -> Result<(Vec<u32>, Option<Media>)> {
        let wanted: usize = messages.iter().map(|m| m.images).sum();
        if wanted != images.len() {
            return Err(RuntimeError::Request(format!(
                "the messages place {wanted} images but {} were given",
                images.len()
            )));
        }
        let clips: usize = messages.iter().map(|m| m.audio).sum();
        if clips != audio.len() {
            return Err(RuntimeError::Request(format!(
                "the messages place {clips} audio clips but {} were given",
                audio.len()
            )));
        }
        let text = self.render_chat(messages, thinking)?;
        self.encode_with_media(&text, images, audio, false)
    }

    /// [`Model::build_prompt`] for a user message about `images`.
    pub fn multimodal_prompt(&self, prompt: &str, images: &[Rgb], chat: bool) -> Result<(Vec<u32>, Option<Media>)> {
        self.build_prompt(&PromptSpec { text: prompt, images, chat, ..Default::default() })
    }

    /// Sampling options that stop at this model's end-of-sequence and end-of-turn tokens
    /// (greedy, `max_tokens` new tokens at most); `SamplingOptions::default()` has no stop
    /// tokens, since it cannot know the model's.
    pub fn sampling(&self, max_tokens: usize) -> crate::generate::SamplingOptions {
        crate::generate::SamplingOptions { max_tokens, stop: self.tokenizer.stop_tokens.clone(), ..Default::default() }
    }

    /// A batched engine over this model (taking images when it has a vision tower, audio when
    /// it has an audio tower).
    /// It shares the model's decoder, media encoders and tokenizer (the tokenizer decodes the
    /// branches of [voting](crate::engine::Request::vote) requests).
    pub fn engine(&self, opts: crate::engine::EngineOptions) -> Result<crate::engine::Engine> {
        Ok(crate::engine::Engine::new(self.decoder.clone(), opts)?
            .with_encoders(self.encoders.clone())
            .with_tokenizer(Some(self.tokenizer.clone())))
    }

    /// A generation session with room for `capacity` tokens, sharing the model's decoder and
    /// media encoders.
    pub fn session(&self, capacity: usize) -> Result<Session> {
        Ok(Session::new(self.decoder.clone(), capacity)?.with_encoders(self.encoders.clone()))
    }

    /// Logits at every position of `ids`, f32 `[ids.len(), vocab]` row-major.
    pub fn logits(&self, ids: &[u32]) -> Result<Vec<f32>> {
        self.logits_with(ids, None)
    }

    /// Logits at every position of `ids` whose image and audio tokens take `media`.
    pub fn logits_with(&self, ids: &[u32], media: Option<&Media>) -> Result<Vec<f32>> {
        let dev = self.decoder.device().clone();
        let mut session = self.session(ids.len())?;
        let mut rec = Recorder::new(&dev);
        let h = session.forward_with(&mut rec, ids, media)?;
        let logits = self.decoder.logits(&mut rec, &h, 0..ids.len())?;
        rec.submit()?.wait()?;
        Ok(dev.read_f32(&logits)?)
    }
}
