//! Tokenizers from GGUF metadata, built the way Hugging Face transformers builds them when it
//! loads a GGUF file, so that ids match: byte-level BPE from the vocabulary and merges for `gpt2`
//! vocabularies (SmolLM2), and sentencepiece-style BPE with byte fallback for Gemma, whose file
//! lists no merges (they are recovered from the vocabulary, ordered by the tokens' positions).
//! Control tokens are special added tokens, user-defined ones plain added tokens. Chat templates
//! are the Jinja templates in the metadata, rendered with minijinja.

use std::collections::HashMap;

use serde_json::{Value as Json, json};

use crate::gguf::{Gguf, Value};
use crate::{Result, RuntimeError};

fn tok_err(e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Tokenizer(e.to_string())
}

/// GPT-2's reversible map from bytes to printable characters.
fn bytes_to_unicode() -> Vec<char> {
    let printable = |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
    let mut extra = 0;
    (0u32..256)
        .map(|b| {
            if printable(b) {
                char::from_u32(b).expect("latin-1")
            } else {
                extra += 1;
                char::from_u32(255 + extra).expect("in range")
            }
        })
        .collect()
}

/// BPE merges implied by a vocabulary: every split of every token into two tokens, ordered by
/// `score` (higher first), then longer left part, then longer right part, ties in vocabulary
/// order. This is transformers' `generate_merges` with scores.
fn merges_from_vocab(
    tokens: &[String],
    vocab: &HashMap<&str, u32>,
    score: &dyn Fn(usize) -> i64,
) -> Vec<(String, String)> {
    let mut merges: Vec<(i64, usize, usize, String, String)> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (i, token) in tokens.iter().enumerate() {
        // A dict keyed by token keeps its first position and its last value.
        if !seen.insert(token.as_str()) {
            continue;
        }
        let s = score(vocab.get(token.as_str()).map_or(i, |&v| v as usize));
        let chars: Vec<(usize, char)> = token.char_indices().collect();
        let mut local: Vec<(u32, u32, &str, &str)> = Vec::new();
        for &(at, _) in chars.iter().skip(1) {
            let (l, r) = token.split_at(at);
            if let (Some(&li), Some(&ri)) = (vocab.get(l), vocab.get(r)) {
                local.push((li, ri, l, r));
            }
        }
        local.sort_by_key(|&(li, ri, _, _)| (li, ri));
        merges.extend(
            local
                .into_iter()
                .map(|(_, _, l, r)| (s, l.chars().count(), r.chars().count(), l.to_string(), r.to_string())),
        );
    }
    // Stable sort, descending on (score, |l|, |r|).
    merges.sort_by_key(|m| std::cmp::Reverse((m.0, m.1, m.2)));
    merges.into_iter().map(|(_, _, _, l, r)| (l, r)).collect()
}

/// A tokenizer and what a generator needs to know about its special tokens.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// Beginning-of-sequence token.
    pub bos: Option<u32>,
    /// End-of-sequence token.
    pub eos: Option<u32>,
    /// Whether encoding adds the BOS token.
    pub add_bos: bool,
    /// Tokens that end a turn (EOS and, where the vocabulary has them, `<|im_end|>`,
    /// `<end_of_turn>`, `<|eot_id|>`).
    pub stop_tokens: Vec<u32>,
    /// The Jinja chat template, if the model has one.
    pub chat_template: Option<String>,
    tokens: Vec<String>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab", &self.tokens.len())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .finish()
    }
}

fn strings(g: &Gguf, key: &str) -> Result<Vec<String>> {
    let arr = g.get(key)?.as_array().ok_or_else(|| g.error(format!("metadata {key:?} is not an array")))?;
    arr.iter()
        .map(|v| {
            v.as_str().map(str::to_string).ok_or_else(|| g.error(format!("metadata {key:?} holds a non-string")).into())
        })
        .collect()
}

fn optional_id(g: &Gguf, key: &str, vocab: usize) -> Result<Option<u32>> {
    match g.metadata.get(key) {
        None => Ok(None),
        Some(v) => match v.as_u64() {
            Some(id) if (id as usize) < vocab => Ok(Some(id as u32)),
            _ => Err(g.error(format!("metadata {key:?} is {v:?}, not a token id below {vocab}")).into()),
        },
    }
}

impl Tokenizer {
    /// Build the tokenizer a GGUF file describes.
    pub fn from_gguf(g: &Gguf) -> Result<Tokenizer> {
        let model = g.get_str("tokenizer.ggml.model")?.to_string();
        let arch = g.get_str("general.architecture")?.to_string();
        let tokens = strings(g, "tokenizer.ggml.tokens")?;
        let n = tokens.len();
        let types: Vec<u64> = match g.metadata.get("tokenizer.ggml.token_type") {
            None => vec![1; n],
            Some(Value::Array(a)) => a
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    v.as_u64().ok_or_else(|| {
                        g.error(format!("tokenizer.ggml.token_type[{i}] is {v:?}, expected a non-negative integer"))
                    })
                })
                .collect::<Result<_, _>>()?,
            Some(other) => {
                return Err(g.error(format!("tokenizer.ggml.token_type is {other:?}, expected an array")).into());
            }
        };
        if types.len() != n {
            return Err(g.error(format!("{} token types for {n} tokens", types.len())).into());
        }
        let bos = optional_id(g, "tokenizer.ggml.bos_token_id", n)?;
        let eos = optional_id(g, "tokenizer.ggml.eos_token_id", n)?;
        let flag = |key: &str| g.metadata.get(key).and_then(Value::as_bool);

        let (json, add_bos) = match model.as_str() {
            "gpt2" => (byte_level_json(g, &tokens, &types)?, flag("tokenizer.ggml.add_bos_token").unwrap_or(false)),
            "llama" if arch.starts_with("gemma") => {
                (gemma_json(&tokens, &types, bos)?, flag("tokenizer.ggml.add_bos_token").unwrap_or(true))
            }
            other => {
                return Err(g.error(format!(
                    "tokenizer.ggml.model {other:?} for architecture {arch:?} is not supported (gpt2, or llama-style for gemma)"
                )).into());
            }
        };
        // The JSON is flint's own translation of the metadata: an error's position in it means
        // nothing to the user, so it is cut off and the metadata named instead.
        let inner = json.to_string().parse::<tokenizers::Tokenizer>().map_err(|e| {
            let e = e.to_string();
            let why = e.split(" at line ").next().unwrap_or(&e);
            g.error(format!("tokenizer.ggml.tokens, token_type and merges do not make a {model} tokenizer: {why}"))
        })?;
        let mut stop_tokens: Vec<u32> = eos.into_iter().collect();
        for name in ["<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|endoftext|>"] {
            if let Some(id) = tokens.iter().position(|t| t == name) {
                let id = id as u32;
                if !stop_tokens.contains(&id) && types.get(id as usize) == Some(&3) {
                    stop_tokens.push(id);
                }
            }
        }
        let chat_template = g.metadata.get("tokenizer.chat_template").and_then(Value::as_str).map(str::to_string);
        Ok(Tokenizer { inner, bos, eos, add_bos, stop_tokens, chat_template, tokens })
    }

    /// Load `tokenizer.json` of a Hugging Face directory, with the special tokens and chat
    /// template of `tokenizer_config.json` (or `chat_template.jinja` / `chat_template.json`).
    pub fn from_hf_dir(dir: &std::path::Path) -> Result<Tokenizer> {
        Tokenizer::from_hf_files(&crate::Files::dir(dir))
    }

    /// [`Tokenizer::from_hf_dir`] on a model directory's files from anywhere.
    pub fn from_hf_files(files: &crate::Files) -> Result<Tokenizer> {
        let path = files.path("tokenizer.json");
        let json = files.read_string("tokenizer.json")?;
        let inner = json.parse::<tokenizers::Tokenizer>().map_err(|e| tok_err(format!("{}: {e}", path.display())))?;
        let vocab = inner.get_vocab_size(true);
        let mut tokens = vec![String::new(); vocab];
        for (t, id) in inner.get_vocab(true) {
            if let Some(slot) = tokens.get_mut(id as usize) {
                *slot = t;
            }
        }
        let cfg =
            if files.has("tokenizer_config.json") { files.read_json("tokenizer_config.json")? } else { json!({}) };
        // A special token is written as a string or as {"content": ...}.
        let token_of = |key: &str| -> Option<u32> {
            let v = cfg.get(key)?;
            let s = v.as_str().or_else(|| v.get("content").and_then(Json::as_str))?;
            inner.token_to_id(s)
        };
        let (bos, eos) = (token_of("bos_token"), token_of("eos_token"));
        let mut chat_template = cfg.get("chat_template").and_then(Json::as_str).map(str::to_string);
        if chat_template.is_none() && files.has("chat_template.jinja") {
            chat_template = Some(files.read_string("chat_template.jinja")?);
        }
        if chat_template.is_none() && files.has("chat_template.json") {
            let v = files.read_json("chat_template.json")?;
            chat_template = v.get("chat_template").and_then(Json::as_str).map(str::to_string);
        }
        let mut stop_tokens: Vec<u32> = eos.into_iter().collect();
        for name in ["<|im_end|>", "<end_of_utterance>", "<end_of_turn>", "<|eot_id|>"] {
            if let Some(id) = inner.token_to_id(name)
                && !stop_tokens.contains(&id)
            {
                stop_tokens.push(id);
            }
        }
        // The post-processor in tokenizer.json decides what encoding with special tokens adds.
        Ok(Tokenizer { inner, bos, eos, add_bos: true, stop_tokens, chat_template, tokens })
    }

    /// The id of `token` when the vocabulary has it.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Render the chat template over messages given as JSON (`[{"role": ..., "content": ...}]`,
    /// the content a string or transformers' typed parts such as `[{"type": "image"}, {"type":
    /// "text", "text": ...}]`, the form multimodal templates iterate over), with
    /// `enable_thinking` set when given.
    pub fn apply_chat_template_json(
        &self,
        messages: Json,
        add_generation_prompt: bool,
        enable_thinking: Option<bool>,
    ) -> Result<String> {
        self.render(messages, add_generation_prompt, enable_thinking)
    }

    /// Token ids of `text`; `special` adds the model's BOS where it wants one.
    pub fn encode(&self, text: &str, special: bool) -> Result<Vec<u32>> {
        if text.len() > MAX_TEXT_BYTES {
            return Err(tok_err(format!(
                "a text of {} bytes is over the limit of {MAX_TEXT_BYTES} bytes flint tokenizes at once",
                text.len()
            )));
        }
        let enc = self.inner.encode(text, special && self.add_bos).map_err(tok_err)?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of `ids`, special tokens left out when `skip_special`.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner.decode(ids, skip_special).map_err(tok_err)
    }

    /// The vocabulary's spelling of token `id`.
    pub fn token(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }

    /// Vocabulary size.
    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    /// Render the chat template over `messages` (`(role, content)`), ending with the assistant's
    /// turn opened when `add_generation_prompt`.
    pub fn apply_chat_template(&self, messages: &[(String, String)], add_generation_prompt: bool) -> Result<String> {
        self.apply_chat_template_with(messages, add_generation_prompt, None)
    }

    /// [`Tokenizer::apply_chat_template`] with `enable_thinking` set for templates that read it
    /// (the reasoning switch of Qwen3- and SmolLM3-style templates).
    pub fn apply_chat_template_with(
        &self,
        messages: &[(String, String)],
        add_generation_prompt: bool,
        enable_thinking: Option<bool>,
    ) -> Result<String> {
        let msgs: Vec<Json> = messages.iter().map(|(r, c)| json!({"role": r, "content": c})).collect();
        self.render(json!(msgs), add_generation_prompt, enable_thinking)
    }

    fn render(&self, msgs: Json, add_generation_prompt: bool, enable_thinking: Option<bool>) -> Result<String> {
        let template = self.chat_template.as_deref().ok_or_else(|| {
            RuntimeError::Tokenizer("the model has no chat template (tokenizer.chat_template)".into())
        })?;
        let name = |id: Option<u32>| id.and_then(|i| self.token(i)).unwrap_or("").to_string();
        let mut ctx = json!({
            "messages": msgs,
            "add_generation_prompt": add_generation_prompt,
            "bos_token": name(self.bos),
            "eos_token": name(self.eos),
        });
        // Left undefined unless asked, as transformers does.
        if let Some(on) = enable_thinking {
            ctx["enable_thinking"] = json!(on);
        }
        render_chat_template(template, &ctx, TEMPLATE_FUEL)
    }
}

/// Render a chat template (Jinja, as transformers runs it: minijinja with its Python-compatible
/// methods and `raise_exception`) over `context` (`messages`, `add_generation_prompt`,
/// `bos_token`, ...). The template comes from a model file, so its work is bounded by `fuel`
/// instructions (the tokenizer uses [`TEMPLATE_FUEL`]) and its output by
/// [`MAX_TEMPLATE_OUTPUT`] bytes; either limit, or any template error, is an error value.
pub fn render_chat_template(template: &str, context: &Json, fuel: u64) -> Result<String> {
    let mut env = minijinja::Environment::new();
    minijinja_contrib::add_to_environment(&mut env);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", |msg: String| -> std::result::Result<String, minijinja::Error> {
        Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
    });
    env.add_template("chat", template).map_err(|e| tok_err(format!("chat template: {e}")))?;
    let ctx = minijinja::Value::from_serialize(context);
    env.set_fuel(Some(fuel));
    let mut out = Bounded(Vec::new());
    let rendered = env.get_template("chat").and_then(|t| t.render_captured_to(ctx, &mut out).map(|_| ()));
    if let Err(e) = rendered {
        if out.0.len() > MAX_TEMPLATE_OUTPUT {
            return Err(tok_err(format!("chat template: its output is over the limit of {MAX_TEMPLATE_OUTPUT} bytes")));
        }
        let why = if e.kind() == minijinja::ErrorKind::OutOfFuel {
            format!("it ran out of fuel ({fuel} instructions)")
        } else {
            e.to_string()
        };
        return Err(tok_err(format!("chat template: {why}")));
    }
    String::from_utf8(out.0).map_err(|e| tok_err(format!("chat template: output is not UTF-8: {e}")))
}

/// The most instructions a chat template may run (minijinja's fuel): a real template over a
/// long conversation uses a few thousand; a template that loops without end stops here.
pub const TEMPLATE_FUEL: u64 = 20_000_000;
/// The most bytes a chat template may print.
pub const MAX_TEMPLATE_OUTPUT: usize = 4 << 20;
/// The most bytes of text [`Tokenizer::encode`] takes at once (measured before tokenizing).
pub const MAX_TEXT_BYTES: usize = 16 << 20;

/// A writer that refuses to grow past [`MAX_TEMPLATE_OUTPUT`] (by one byte, so the caller can
/// tell why it stopped).
struct Bounded(Vec<u8>);

impl std::io::Write for Bounded {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.0.len() + buf.len() > MAX_TEMPLATE_OUTPUT {
            self.0.resize(MAX_TEMPLATE_OUTPUT + 1, 0);
            return Err(std::io::Error::other("chat template output over the limit"));
        }
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn added_token(id: usize, content: &str, special: bool) -> Json {
    json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": special})
}

/// `gpt2` vocabularies: byte-level BPE from the file's merges.
fn byte_level_json(g: &Gguf, tokens: &[String], types: &[u64]) -> Result<Json> {
    let spelling = bytes_to_unicode();
    let alphabet: std::collections::HashSet<char> = spelling.iter().copied().collect();
    let in_alphabet = |t: &str| t.chars().all(|c| alphabet.contains(&c));
    let mut vocab = serde_json::Map::new();
    for (i, t) in tokens.iter().enumerate() {
        let spelled = if in_alphabet(t) { t.clone() } else { t.bytes().map(|b| spelling[b as usize]).collect() };
        vocab.insert(spelled, json!(i));
    }
    let merges = strings(g, "tokenizer.ggml.merges")?;
    // Without merges, byte-level BPE splits every word into single bytes: valid ids, wrong text.
    if merges.is_empty() && tokens.len() > 256 {
        return Err(g
            .error(format!("tokenizer.ggml.merges is empty for a byte-level BPE of {} tokens", tokens.len()))
            .into());
    }
    let merges: Vec<Json> = merges
        .iter()
        .map(|m| {
            let (l, r) = m.split_once(' ').unwrap_or((m, ""));
            json!([l, r])
        })
        .collect();
    let mut added = Vec::new();
    for (i, (t, &ty)) in tokens.iter().zip(types).enumerate() {
        if ty == 3 && in_alphabet(t) {
            added.push(added_token(i, t, true));
        } else if ty == 4 {
            added.push(added_token(i, t, false));
        }
    }
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": {"type": "TemplateProcessing",
            "single": [{"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {}},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": "",
            "end_of_word_suffix": "", "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": merges}
    }))
}

/// Gemma: sentencepiece-style BPE with byte fallback; tokens made of spaces are spelled with
/// `▁`, and merges come from the vocabulary ordered by position in the file.
fn gemma_json(tokens: &[String], types: &[u64], bos: Option<u32>) -> Result<Json> {
    let respelled: Vec<String> = tokens
        .iter()
        .map(|t| if t.contains(' ') && t.trim().is_empty() { "\u{2581}".repeat(t.chars().count()) } else { t.clone() })
        .collect();
    let mut index: HashMap<&str, u32> = HashMap::with_capacity(respelled.len());
    for (i, t) in respelled.iter().enumerate() {
        index.insert(t.as_str(), i as u32);
    }
    let merges = merges_from_vocab(&respelled, &index, &|i| -(i as i64));
    let mut vocab = serde_json::Map::new();
    for (t, &i) in &index {
        vocab.insert((*t).to_string(), json!(i));
    }
    let mut added = Vec::new();
    for (i, (t, &ty)) in tokens.iter().zip(types).enumerate() {
        if ty == 3 {
            added.push(added_token(i, &respelled[i], true));
        } else if ty == 4 && index.contains_key(t.as_str()) {
            added.push(added_token(i, t, false));
        }
    }
    let bos_name = bos.map(|b| respelled[b as usize].clone()).unwrap_or_else(|| "<bos>".into());
    let bos_id = bos.unwrap_or(2);
    let merges: Vec<Json> = merges.into_iter().map(|(l, r)| json!([l, r])).collect();
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": {"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"},
        "pre_tokenizer": {"type": "Split", "pattern": {"String": " "}, "behavior": "MergedWithPrevious", "invert": false},
        "post_processor": {"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": bos_name, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": bos_name, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": bos_name, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {bos_name.clone(): {"id": bos_name, "ids": [bos_id], "tokens": [bos_name]}}},
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"}]},
        "model": {"type": "BPE", "dropout": null, "unk_token": "<unk>", "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
            "vocab": vocab, "merges": merges}
    }))
}

/// Turns a stream of token ids into text as it becomes complete, never splitting a character
/// that spans several tokens.
#[derive(Debug, Default)]
pub struct StreamDecoder {
    ids: Vec<u32>,
    emitted: usize,
}

impl StreamDecoder {
    /// Add a token; returns the new text it completes (possibly empty).
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> Result<String> {
        self.ids.push(id);
        let text = tok.decode(&self.ids, true)?;
        if text.ends_with('\u{fffd}') || text.len() < self.emitted || !text.is_char_boundary(self.emitted) {
            return Ok(String::new());
        }
        let new = text[self.emitted..].to_string();
        self.emitted = text.len();
        Ok(new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A word-level tokenizer in a temporary directory, with `template` as its chat template.
    fn with_template(template: &str) -> Tokenizer {
        let dir = std::env::temp_dir().join(format!("flint-tok-test-{}-{}", std::process::id(), template.len()));
        std::fs::create_dir_all(&dir).unwrap();
        let tok = json!({"version": "1.0", "model": {"type": "WordLevel", "vocab": {"a": 0, "<unk>": 1}, "unk_token": "<unk>"},
            "pre_tokenizer": {"type": "Whitespace"}});
        std::fs::write(dir.join("tokenizer.json"), tok.to_string()).unwrap();
        std::fs::write(dir.join("tokenizer_config.json"), json!({"chat_template": template}).to_string()).unwrap();
        let t = Tokenizer::from_hf_dir(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        t
    }

    #[test]
    fn a_chat_template_runs_with_bounded_work_and_output() {
        let msgs = [("user".to_string(), "a".to_string())];
        let ok = with_template("{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}");
        assert_eq!(ok.apply_chat_template(&msgs, false).unwrap(), "<user>a");
        // Nested loops that would run for hours stop on fuel.
        let spin = with_template(
            "{% for i in range(10000) %}{% for j in range(10000) %}{% for k in range(10000) %}{% endfor %}{% endfor %}{% endfor %}",
        );
        let e = spin.apply_chat_template(&msgs, false).unwrap_err().to_string();
        assert!(e.contains("ran out of fuel"), "{e}");
        // Output is cut at the limit, long before memory runs out.
        let big = with_template(
            "{% for i in range(10000) %}{% for j in range(10000) %}{{ 'x' * 1000 }}{% endfor %}{% endfor %}",
        );
        let e = big.apply_chat_template(&msgs, false).unwrap_err().to_string();
        assert!(e.contains("output is over the limit"), "{e}");
        // Text is measured before it is tokenized.
        let e = ok.encode(&"a ".repeat(MAX_TEXT_BYTES / 2 + 1), false).unwrap_err().to_string();
        assert!(e.contains("over the limit"), "{e}");
    }

    /// A GGUF image of a `gpt2` vocabulary of `n` tokens with `merges`, and `types` as the
    /// token types (strings, to be refused) when given.
    fn gpt2_gguf(n: usize, merges: &[&str], string_types: bool) -> Gguf {
        let mut b = Vec::new();
        let s = |b: &mut Vec<u8>, s: &str| {
            b.extend((s.len() as u64).to_le_bytes());
            b.extend(s.as_bytes());
        };
        let strs = |b: &mut Vec<u8>, items: &[String]| {
            b.extend(9u32.to_le_bytes());
            b.extend(8u32.to_le_bytes());
            b.extend((items.len() as u64).to_le_bytes());
            for i in items {
                b.extend((i.len() as u64).to_le_bytes());
                b.extend(i.as_bytes());
            }
        };
        b.extend(b"GGUF");
        b.extend(3u32.to_le_bytes());
        b.extend(0u64.to_le_bytes());
        b.extend((4u64 + u64::from(string_types)).to_le_bytes());
        for (k, v) in [("general.architecture", "llama"), ("tokenizer.ggml.model", "gpt2")] {
            s(&mut b, k);
            b.extend(8u32.to_le_bytes());
            s(&mut b, v);
        }
        let tokens: Vec<String> =
            ["a", "b", "ab"].iter().map(|t| t.to_string()).chain((3..n).map(|i| format!("t{i}"))).collect();
        s(&mut b, "tokenizer.ggml.tokens");
        strs(&mut b, &tokens);
        s(&mut b, "tokenizer.ggml.merges");
        strs(&mut b, &merges.iter().map(|m| m.to_string()).collect::<Vec<_>>());
        if string_types {
            s(&mut b, "tokenizer.ggml.token_type");
            strs(&mut b, &vec!["normal".to_string(); n]);
        }
        Gguf::from_bytes("tok.gguf", b).unwrap()
    }

    #[test]
    fn vocabularies_that_would_tokenize_wrongly_are_refused() {
        if let Err(e) = Tokenizer::from_gguf(&gpt2_gguf(300, &["a b"], false)) {
            panic!("{e}");
        }
        let e = Tokenizer::from_gguf(&gpt2_gguf(300, &[], false)).unwrap_err().to_string();
        assert!(e.contains("tok.gguf: tokenizer.ggml.merges is empty for a byte-level BPE of 300 tokens"), "{e}");
        let e = Tokenizer::from_gguf(&gpt2_gguf(300, &["a b"], true)).unwrap_err().to_string();
        assert!(e.contains("tokenizer.ggml.token_type[0] is Str(\"normal\"), expected a non-negative integer"), "{e}");
    }

    #[test]
    fn byte_map_is_a_bijection() {
        let m = bytes_to_unicode();
        let set: std::collections::HashSet<char> = m.iter().copied().collect();
        assert_eq!(set.len(), 256);
        assert_eq!(m[b'A' as usize], 'A');
        assert_eq!(m[b' ' as usize], '\u{120}');
    }

    #[test]
    fn merges_follow_score_then_lengths() {
        let tokens: Vec<String> = ["a", "b", "c", "ab", "bc", "abc"].iter().map(|s| s.to_string()).collect();
        let index: HashMap<&str, u32> = tokens.iter().enumerate().map(|(i, t)| (t.as_str(), i as u32)).collect();
        let m = merges_from_vocab(&tokens, &index, &|i| -(i as i64));
        let pairs: Vec<(&str, &str)> = m.iter().map(|(l, r)| (l.as_str(), r.as_str())).collect();
        // "ab" (position 3) before "bc" (4) before "abc" (5), whose splits put the longer left first.
        assert_eq!(pairs, vec![("a", "b"), ("b", "c"), ("ab", "c"), ("a", "bc")]);
    }
}
