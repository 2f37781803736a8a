//! Model graphs and their weights, and [`Model`]: a decoder with its tokenizer, loaded from a
//! file, ready to tokenize, run and generate.

pub mod arch;
pub mod config;
pub mod decoder;
pub mod vision;
pub mod weights;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use flint_gpu::{DType, Device, Recorder, Tensor};

use crate::generate::Session;
use crate::gguf::Gguf;
use crate::hf::{Config, HfDir};
use crate::image::{ImageProcessor, Rgb};
use crate::tokenizer::Tokenizer;
use crate::{RequestError, Result, RuntimeError};
use decoder::Decoder;
use vision::VisionTower;

/// The image side of a multimodal model: the vision tower, the processor settings and the
/// token the prompt marks image positions with.
#[derive(Debug)]
pub struct Vision {
    /// Encoder and connector.
    pub tower: VisionTower,
    /// Preprocessing.
    pub processor: ImageProcessor,
    /// The `<image>` token id.
    pub image_token_id: u32,
}

/// Images ready for the encoder: `[images, channels, height, width]` f32, normalised, all of
/// one square size whose side is a multiple of the patch (the processor's tiles).
#[derive(Clone, Debug, PartialEq)]
pub struct Pixels {
    /// The values.
    pub data: Vec<f32>,
    /// Images (tiles).
    pub images: usize,
    /// Side in pixels.
    pub side: usize,
}

impl Vision {
    /// Record the encoder and connector over `pixels`: `[images * tokens, text hidden]`.
    pub fn embed(&self, rec: &mut Recorder, pixels: &Pixels) -> Result<Tensor> {
        let c = &self.tower.cfg;
        let want = pixels
            .images
            .checked_mul(c.channels)
            .and_then(|n| n.checked_mul(pixels.side))
            .and_then(|n| n.checked_mul(pixels.side));
        if want != Some(pixels.data.len()) || pixels.images == 0 {
            return Err(RuntimeError::Request(format!(
                "{} pixel values for {} images of {}x{}x{}",
                pixels.data.len(),
                pixels.images,
                c.channels,
                pixels.side,
                pixels.side
            )));
        }
        // A NaN or infinity would reach every logit, before the image too (0 x NaN in attention).
        if let Some(i) = pixels.data.iter().position(|v| !v.is_finite()) {
            let per_image = pixels.data.len() / pixels.images;
            return Err(RuntimeError::Request(format!(
                "pixel value {i} (image {}) is {}: pixel values must be finite",
                i / per_image,
                pixels.data[i]
            )));
        }
        let dev = rec.device().clone();
        let t = dev.upload_f32(
            "pixel values",
            &pixels.data,
            &[pixels.images, c.channels, pixels.side, pixels.side],
            DType::F32,
        )?;
        let h = self.tower.encode(rec, &t, pixels.images, pixels.side, pixels.side)?;
        self.tower.connect(rec, &h, pixels.images, pixels.side / c.patch)
    }

    /// Image tokens `pixels` become.
    pub fn tokens_for(&self, pixels: &Pixels) -> usize {
        let side = pixels.side / self.tower.cfg.patch.max(1) / self.tower.cfg.scale_factor.max(1);
        side.checked_mul(side).and_then(|t| t.checked_mul(pixels.images)).unwrap_or(usize::MAX)
    }
}

/// Record the embeddings of a prompt: token embeddings, with the rows of image tokens replaced,
/// in order, by what the vision tower makes of `pixels`. Returns `[ids.len(), hidden]`.
pub fn embed_prompt(
    decoder: &Decoder,
    vision: Option<&Vision>,
    rec: &mut Recorder,
    ids: &[u32],
    pixels: Option<&Pixels>,
) -> Result<Tensor> {
    let dev = decoder.device();
    let ids_t = dev.upload_u32("token ids", ids, &[ids.len()])?;
    let x = decoder.embed(rec, &ids_t, ids.len())?;
    let image_token = vision.map(|v| v.image_token_id);
    let slots = image_token.map_or(0, |t| ids.iter().filter(|&&i| i == t).count());
    let (vision, pixels) = match (vision, pixels) {
        (_, None) if slots == 0 => return Ok(x),
        (None, Some(_)) => {
            return Err(RequestError::Images("images given to a model without a vision tower".into()).into());
        }
        (Some(_), None) => {
            return Err(
                RequestError::Images(format!("the prompt has {slots} image tokens but no images were given")).into()
            );
        }
        (Some(v), Some(p)) => (v, p),
        (None, None) => return Ok(x),
    };
    let want = vision.tokens_for(pixels);
    if want != slots {
        return Err(RequestError::Images(format!(
            "the prompt has {slots} image tokens but the {} image tiles make {want}",
            pixels.images
        ))
        .into());
    }
    let embeds = vision.embed(rec, pixels)?;
    let row = decoder.cfg.hidden;
    let mut used = 0;
    let mut i = 0;
    while i < ids.len() {
        if ids[i] != vision.image_token_id {
            i += 1;
            continue;
        }
        let start = i;
        while i < ids.len() && ids[i] == vision.image_token_id {
            i += 1;
        }
        let n = i - start;
        let src = embeds.view((used * row * 4) as u64, &[n, row], DType::F32)?;
        let dst = x.view((start * row * 4) as u64, &[n, row], DType::F32)?;
        rec.copy(&src, &dst)?;
        used += n;
    }
    Ok(x)
}

/// How a prompt is put together (see [`Model::build_prompt`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct PromptSpec<'a> {
    /// The user's text (it may hold `<image>` placeholders, one per image).
    pub text: &'a str,
    /// Images.
    pub images: &'a [Rgb],
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
}

/// A loaded model: weights on the GPU, the tokenizer, and for multimodal models the vision side.
///
/// The GPU parts are shared, not borrowed: [`Model::engine`] and [`Model::session`] return
/// owned values (`Send`, `'static`) holding `Arc`s of the decoder and vision tower, so a host can
/// keep them in shared state, move them to a worker thread, or drop the `Model` first.
#[derive(Debug)]
pub struct Model {
    decoder: Arc<Decoder>,
    tokenizer: Arc<Tokenizer>,
    path: PathBuf,
    vision: Option<Arc<Vision>>,
}

impl Model {
    /// Load a model onto `dev`: a `.gguf` file of a llama or gemma3 decoder, or a Hugging Face
    /// directory (config.json + safetensors) of an Idefics3 / SmolVLM model or a Llama.
    pub fn load(dev: &Device, path: impl AsRef<Path>) -> Result<Model> {
        let path = path.as_ref();
        if path.is_dir() {
            return Model::load_hf(dev, path);
        }
        let g = Gguf::open(path)?;
        let tokenizer = Tokenizer::from_gguf(&g)?;
        let decoder = Decoder::from_gguf(dev, &g)?;
        if tokenizer.vocab_size() > decoder.cfg.vocab {
            return Err(g
                .error(format!("{} tokens but an output head of {}", tokenizer.vocab_size(), decoder.cfg.vocab))
                .into());
        }
        Ok(Model::from_parts(decoder, tokenizer, path, None))
    }

    /// A model from its parts (a decoder built in memory, say, with a tokenizer).
    pub fn from_parts(decoder: Decoder, tokenizer: Tokenizer, path: impl AsRef<Path>, vision: Option<Vision>) -> Model {
        Model {
            decoder: Arc::new(decoder),
            tokenizer: Arc::new(tokenizer),
            path: path.as_ref().to_path_buf(),
            vision: vision.map(Arc::new),
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
        self.vision.as_ref()
    }

    /// Where the model was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn load_hf(dev: &Device, path: &Path) -> Result<Model> {
        let dir = HfDir::open(path)?;
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
        let (decoder, vision) = (family.load)(dev, &dir, &top, kv_dtype)?;
        let tokenizer = Tokenizer::from_hf_dir(path)?;
        if tokenizer.vocab_size() > decoder.cfg.vocab {
            return Err(RuntimeError::Model(format!(
                "{}: the tokenizer has {} tokens but the model's vocabulary is {}",
                path.display(),
                tokenizer.vocab_size(),
                decoder.cfg.vocab
            )));
        }
        Ok(Model::from_parts(decoder, tokenizer, path, vision))
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
            messages.push(ChatMessage { role: "system".into(), text: system.into(), images: 0 });
        }
        messages.push(ChatMessage { role: "user".into(), text: p.text.into(), images: p.images.len() });
        self.render_chat(&messages, p.thinking)
    }

    /// The chat template over `messages`, the assistant's turn opened. Multimodal templates
    /// iterate over typed content parts (each message's images, then its text); text templates
    /// take strings.
    fn render_chat(&self, messages: &[ChatMessage], thinking: Option<bool>) -> Result<String> {
        use serde_json::json;
        let Some(template) = self.tokenizer.chat_template.as_deref() else {
            return Err(RuntimeError::Tokenizer(format!(
                "{} has no chat template (tokenizer.chat_template)",
                self.path.display()
            )));
        };
        let parts = self.vision.is_some() || template.contains("['type']") || template.contains(".type");
        let msgs: Vec<serde_json::Value> = messages
            .iter()
            .map(|m| {
                let content = if parts {
                    let mut c: Vec<serde_json::Value> = (0..m.images).map(|_| json!({"type": "image"})).collect();
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

    /// Token ids and pixels of a prompt: each image is preprocessed as the model's processor
    /// does; a text that already holds one `<image>` placeholder per image is used as written
    /// (no template), otherwise the images go before the text (in the chat template with
    /// `chat`); each placeholder is then expanded into its tiles' tokens.
    pub fn build_prompt(&self, p: &PromptSpec<'_>) -> Result<(Vec<u32>, Option<Pixels>)> {
        let inline = p.text.contains("<image>") && !p.images.is_empty();
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
            format!("{}{}", "<image>".repeat(p.images.len()), p.text)
        };
        self.encode_with_images(&text, p.images, !templated)
    }

    /// Token ids (with BOS when `special`) and pixels of `text`, whose `<image>` placeholders,
    /// one per image of `images`, are expanded into the image tiles' tokens.
    fn encode_with_images(&self, text: &str, images: &[Rgb], special: bool) -> Result<(Vec<u32>, Option<Pixels>)> {
        if images.is_empty() {
            // A templated text has its special tokens written by the template.
            return Ok((self.tokenizer.encode(text, special)?, None));
        }
        let vision = self.vision.as_ref().ok_or_else(|| {
            RuntimeError::Request(format!("{} is a text-only model; it cannot take images", self.path.display()))
        })?;
        let processed = images.iter().map(|im| vision.processor.process(im)).collect::<Result<Vec<_>>>()?;
        let grid: Vec<(usize, usize)> = processed.iter().map(|p| (p.rows, p.cols)).collect();
        let text = crate::image::expand_prompt(text, &grid, vision.processor.image_seq_len)?;
        let ids = self.tokenizer.encode(&text, special)?;
        let mut data = Vec::new();
        for p in &processed {
            data.extend_from_slice(&p.pixels);
        }
        let pixels = Pixels { data, images: processed.iter().map(|p| p.tiles).sum(), side: vision.processor.tile };
        Ok((ids, Some(pixels)))
    }

    /// Token ids and pixels of a whole conversation through the chat template, the assistant's
    /// turn opened: each message's images (taken from `images` in order) go before its text, as
    /// the typed parts multimodal templates iterate over; `thinking` sets `enable_thinking`.
    pub fn chat_prompt(
        &self,
        messages: &[ChatMessage],
        images: &[Rgb],
        thinking: Option<bool>,
    ) -> Result<(Vec<u32>, Option<Pixels>)> {
        let wanted: usize = messages.iter().map(|m| m.images).sum();
        if wanted != images.len() {
            return Err(RuntimeError::Request(format!(
                "the messages place {wanted} images but {} were given",
                images.len()
            )));
        }
        let text = self.render_chat(messages, thinking)?;
        self.encode_with_images(&text, images, false)
    }

    /// [`Model::build_prompt`] for a user message about `images`.
    pub fn multimodal_prompt(&self, prompt: &str, images: &[Rgb], chat: bool) -> Result<(Vec<u32>, Option<Pixels>)> {
        self.build_prompt(&PromptSpec { text: prompt, images, chat, ..Default::default() })
    }

    /// Sampling options that stop at this model's end-of-sequence and end-of-turn tokens
    /// (greedy, `max_tokens` new tokens at most); `SamplingOptions::default()` has no stop
    /// tokens, since it cannot know the model's.
    pub fn sampling(&self, max_tokens: usize) -> crate::generate::SamplingOptions {
        crate::generate::SamplingOptions { max_tokens, stop: self.tokenizer.stop_tokens.clone(), ..Default::default() }
    }

    /// A batched engine over this model (taking images when it has a vision tower).
    /// It shares the model's decoder, vision tower and tokenizer (the tokenizer decodes the
    /// branches of [voting](crate::engine::Request::vote) requests).
    pub fn engine(&self, opts: crate::engine::EngineOptions) -> Result<crate::engine::Engine> {
        Ok(crate::engine::Engine::new(self.decoder.clone(), opts)?
            .with_vision(self.vision.clone())
            .with_tokenizer(Some(self.tokenizer.clone())))
    }

    /// A generation session with room for `capacity` tokens, sharing the model's decoder and
    /// vision tower.
    pub fn session(&self, capacity: usize) -> Result<Session> {
        Ok(Session::new(self.decoder.clone(), capacity)?.with_vision(self.vision.clone()))
    }

    /// Logits at every position of `ids`, f32 `[ids.len(), vocab]` row-major.
    pub fn logits(&self, ids: &[u32]) -> Result<Vec<f32>> {
        self.logits_with(ids, None)
    }

    /// Logits at every position of `ids` whose image tokens take `pixels`.
    pub fn logits_with(&self, ids: &[u32], pixels: Option<&Pixels>) -> Result<Vec<f32>> {
        let dev = self.decoder.device().clone();
        let mut session = self.session(ids.len())?;
        let mut rec = Recorder::new(&dev);
        let h = session.forward_with(&mut rec, ids, pixels)?;
        let logits = self.decoder.logits(&mut rec, &h, 0..ids.len())?;
        rec.submit()?.wait()?;
        Ok(dev.read_f32(&logits)?)
    }
}
