//! One request as a line of JSON, the form `flint generate --prompts FILE.jsonl` reads: parsed
//! and checked here, before any image is opened or any token is run for it, so a malformed line
//! is an error naming the field and the limit.

use serde::Deserialize;

use crate::reasoning::Mode;
use crate::tokenizer::MAX_TEXT_BYTES;
use crate::{Result, RuntimeError};

/// The most images one request may name.
pub const MAX_IMAGES: usize = 64;
/// The most audio clips one request may name.
pub const MAX_AUDIO: usize = 16;
/// The most branches one contemplating request may ask for.
pub const MAX_BRANCHES: usize = 1024;

/// One request line: `{"prompt": "...", "mode": "think", "max_tokens": 64, ...}`. Every field
/// but `prompt` is optional (the command line's value applies); unknown fields are refused.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestLine {
    /// The prompt text.
    pub prompt: String,
    /// `instant`, `think` or `contemplate`.
    #[serde(default)]
    pub mode: Option<String>,
    /// Branches for `contemplate`.
    #[serde(default)]
    pub branches: Option<usize>,
    /// Most new tokens.
    #[serde(default)]
    pub max_tokens: Option<usize>,
    /// Sampling temperature (0: greedy).
    #[serde(default)]
    pub temperature: Option<f32>,
    /// Keep the k most likely tokens (0: all).
    #[serde(default)]
    pub top_k: Option<usize>,
    /// Nucleus cut in (0, 1].
    #[serde(default)]
    pub top_p: Option<f32>,
    /// Seed of the draws.
    #[serde(default)]
    pub seed: Option<u32>,
    /// Whether to apply the chat template.
    #[serde(default)]
    pub chat: Option<bool>,
    /// Image files, one `<image>` each.
    #[serde(default)]
    pub images: Vec<String>,
    /// WAV files, one `<|AUDIO|>` each (audio-language models).
    #[serde(default)]
    pub audio: Vec<String>,
}

fn bad(message: String) -> RuntimeError {
    RuntimeError::Request(message)
}

impl RequestLine {
    /// Parse and check one line.
    pub fn parse(line: &str) -> Result<RequestLine> {
        if line.len() > MAX_TEXT_BYTES {
            return Err(bad(format!("a request of {} bytes is over the limit of {MAX_TEXT_BYTES} bytes", line.len())));
        }
        let l: RequestLine = serde_json::from_str(line).map_err(|e| bad(format!("malformed request: {e}")))?;
        if let Some(t) = l.temperature
            && !(t.is_finite() && t >= 0.0)
        {
            return Err(bad(format!("\"temperature\" is {t}; it must be finite and at least 0")));
        }
        if let Some(p) = l.top_p
            && !(p > 0.0 && p <= 1.0)
        {
            return Err(bad(format!("\"top_p\" is {p}; it must be in (0, 1]")));
        }
        if let Some(b) = l.branches
            && !(1..=MAX_BRANCHES).contains(&b)
        {
            return Err(bad(format!("\"branches\" is {b}; it must be 1 to {MAX_BRANCHES}")));
        }
        if l.max_tokens == Some(0) {
            return Err(bad("\"max_tokens\" is 0; a request generates at least one token".into()));
        }
        if l.images.len() > MAX_IMAGES {
            return Err(bad(format!("{} images is over the limit of {MAX_IMAGES} per request", l.images.len())));
        }
        if l.audio.len() > MAX_AUDIO {
            return Err(bad(format!("{} audio clips is over the limit of {MAX_AUDIO} per request", l.audio.len())));
        }
        if let Some(m) = &l.mode {
            Mode::parse(m, l.branches.unwrap_or(1))?;
        }
        Ok(l)
    }

    /// The request's mode: its own, else `default_mode` (a name) with `default_branches`.
    pub fn mode(&self, default_mode: &str, default_branches: usize) -> Result<Mode> {
        Mode::parse(self.mode.as_deref().unwrap_or(default_mode), self.branches.unwrap_or(default_branches))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_parsed_and_checked() {
        let l = RequestLine::parse(r#"{"prompt": "hi", "mode": "contemplate", "branches": 4, "top_p": 0.9}"#).unwrap();
        assert_eq!((l.prompt.as_str(), l.branches, l.top_p), ("hi", Some(4), Some(0.9)));
        assert_eq!(l.mode("instant", 1).unwrap(), Mode::Contemplate { branches: 4 });
        for (line, says) in [
            (r#"{"prompt": "hi", "colour": 1}"#, "unknown field `colour`"),
            (r#"{"mode": "think"}"#, "missing field `prompt`"),
            (r#"{"prompt": "hi", "temperature": -1}"#, "\"temperature\" is -1"),
            (r#"{"prompt": "hi", "top_p": 0}"#, "\"top_p\" is 0"),
            (r#"{"prompt": "hi", "branches": 0}"#, "\"branches\" is 0"),
            (r#"{"prompt": "hi", "branches": 18446744073709551615}"#, "must be 1 to 1024"),
            (r#"{"prompt": "hi", "max_tokens": 0}"#, "\"max_tokens\" is 0"),
            (r#"{"prompt": "hi", "max_tokens": 18446744073709551616}"#, "malformed request"),
            (r#"{"prompt": "hi", "mode": "ponder"}"#, "unknown mode \"ponder\""),
            (r#"{"prompt": 3}"#, "malformed request"),
            ("[]", "malformed request"),
        ] {
            let e = RequestLine::parse(line).unwrap_err().to_string();
            assert!(e.contains(says), "{line}: {e}");
        }
        let many = format!(r#"{{"prompt": "hi", "images": [{}]}}"#, vec!["\"a.png\""; MAX_IMAGES + 1].join(","));
        assert!(RequestLine::parse(&many).unwrap_err().to_string().contains("over the limit of 64"));
    }
}
