//! The OpenAI request bodies flint reads (chat completions and completions, with flint's own
//! fields for the reasoning modes) and the error object it answers with.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

/// An error answered as OpenAI's error object with an HTTP status.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// What went wrong, for a person.
    pub message: String,
    /// The request field at fault, if one is.
    pub param: Option<&'static str>,
    /// A machine-readable code (`context_length_exceeded`, `rate_limit_exceeded`, ...).
    pub code: Option<&'static str>,
}

impl ApiError {
    /// A 400 about `param`.
    pub fn bad(param: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status: StatusCode::BAD_REQUEST, message: message.into(), param: Some(param), code: None }
    }

    /// An error with `status` and no field.
    pub fn status(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError { status, message: message.into(), param: None, code: None }
    }

    /// The same error with a code.
    pub fn code(mut self, code: &'static str) -> ApiError {
        self.code = Some(code);
        self
    }

    fn kind(&self) -> &'static str {
        match self.status {
            StatusCode::UNAUTHORIZED => "authentication_error",
            StatusCode::TOO_MANY_REQUESTS => "rate_limit_error",
            StatusCode::PAYLOAD_TOO_LARGE
            | StatusCode::BAD_REQUEST
            | StatusCode::NOT_FOUND
            | StatusCode::METHOD_NOT_ALLOWED => "invalid_request_error",
            StatusCode::SERVICE_UNAVAILABLE => "unavailable_error",
            _ => "server_error",
        }
    }

    /// The error object's JSON.
    pub fn body(&self) -> Value {
        json!({"error": {"message": self.message, "type": self.kind(), "param": self.param, "code": self.code}})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body())).into_response()
    }
}

/// `stop`: one string or several.
#[derive(Debug, Deserialize, Clone)]
#[serde(untagged)]
pub enum Stop {
    /// One stop string.
    One(String),
    /// Several.
    Many(Vec<String>),
}

impl Stop {
    /// The strings.
    pub fn strings(&self) -> Vec<String> {
        match self {
            Stop::One(s) => vec![s.clone()],
            Stop::Many(v) => v.clone(),
        }
    }
}

/// Fields both endpoints share.
#[derive(Debug, Deserialize, Default, Clone)]
pub struct Common {
    /// The model's name (checked against the served one when given).
    pub model: Option<String>,
    /// Sampling temperature; 0 is greedy. Default: the mode's (0 for instant).
    pub temperature: Option<f32>,
    /// Nucleus cut.
    pub top_p: Option<f32>,
    /// Keep the k most likely tokens (flint and llama.cpp's extension).
    pub top_k: Option<usize>,
    /// Seed of the draws; choice `i` draws with `seed + i`.
    pub seed: Option<i64>,
    /// Most new tokens per choice.
    pub max_tokens: Option<usize>,
    /// The newer name of `max_tokens` in chat completions.
    pub max_completion_tokens: Option<usize>,
    /// Strings that end a choice (not included in its text).
    pub stop: Option<Stop>,
    /// Choices, decoded as branches of one prefill sharing its KV pages.
    pub n: Option<usize>,
    /// Stream server-sent events.
    #[serde(default, deserialize_with = "null_is_false")]
    pub stream: bool,
    /// `include_usage` asks for a last chunk with the usage.
    pub stream_options: Option<Value>,
    /// flint's reasoning mode: "instant", "think" or "contemplate".
    pub mode: Option<String>,
    /// Branches of contemplate.
    pub branches: Option<usize>,
    /// OpenAI's reasoning switch, mapped to flint's modes: low instant, medium think, high
    /// contemplate.
    pub reasoning_effort: Option<String>,
    /// Penalties: accepted at 0 only (flint's sampler has none).
    pub presence_penalty: Option<f32>,
    /// See `presence_penalty`.
    pub frequency_penalty: Option<f32>,
}

/// `POST /v1/chat/completions`.
#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    /// The conversation.
    pub messages: Vec<Message>,
    /// Log-probability of each chosen token.
    #[serde(default, deserialize_with = "null_is_false")]
    pub logprobs: bool,
    /// Alternatives per position: not supported beyond 0.
    pub top_logprobs: Option<usize>,
    /// Shared fields.
    #[serde(flatten)]
    pub common: Common,
}

/// One chat message.
#[derive(Debug, Deserialize)]
pub struct Message {
    /// system, user, assistant (or developer, taken as system).
    pub role: String,
    /// Text, or typed parts (text and image_url).
    #[serde(default)]
    pub content: Option<Content>,
}

/// A message's content.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    /// Plain text.
    Text(String),
    /// Typed parts.
    Parts(Vec<Part>),
}

/// A typed content part.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Part {
    /// Text.
    Text {
        /// The text.
        text: String,
    },
    /// An image: a `data:` URL, or a local file with `--allow-local-files`.
    ImageUrl {
        /// Where the image is.
        image_url: ImageUrl,
    },
    /// An audio clip, base64 in the request (OpenAI's `input_audio`), for audio-language models.
    InputAudio {
        /// The clip.
        input_audio: InputAudio,
    },
}

/// `input_audio` of a part.
#[derive(Debug, Deserialize)]
pub struct InputAudio {
    /// The file's bytes, base64.
    pub data: String,
    /// Its format: `wav` (the one flint reads).
    pub format: String,
}

/// `image_url` of a part.
#[derive(Debug, Deserialize)]
pub struct ImageUrl {
    /// `data:image/png;base64,...` (or a path / `file://` URL with `--allow-local-files`).
    pub url: String,
}

/// `POST /v1/completions`.
#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    /// Text, one text in an array, or token ids.
    pub prompt: Value,
    /// Log-probabilities: any number asks for the chosen tokens' (alternatives are not given).
    pub logprobs: Option<usize>,
    /// Echo the prompt: not supported.
    #[serde(default, deserialize_with = "null_is_false")]
    pub echo: bool,
    /// Shared fields.
    #[serde(flatten)]
    pub common: Common,
}

/// A boolean that clients may also send as `null` (meaning false).
fn null_is_false<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(Option::<bool>::deserialize(d)?.unwrap_or(false))
}

/// Parse a JSON body, a 400 naming the fault when it is not what `T` wants.
pub fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        let what = if e.is_syntax() || e.is_eof() { "the body is not valid JSON" } else { "the request is malformed" };
        ApiError::status(StatusCode::BAD_REQUEST, format!("{what}: {e}"))
    })
}
