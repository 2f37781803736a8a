//! Reasoning modes: how a question becomes a prompt, how a reply splits into reasoning and
//! answer, and how the branches of contemplating mode are aggregated.
//!
//! - [`Mode::Instant`]: one greedy answer with a short budget.
//! - [`Mode::Think`]: a long budget in the model's reasoning format when its chat template has
//!   one (a template that reads `enable_thinking` or writes `<think>`); otherwise a system
//!   message asks for the reasoning first and a last line starting with `Answer:`. The reply
//!   is split into the reasoning and the answer, whole or as it streams ([`ReplySplitter`]).
//! - [`Mode::Contemplate`]: the thinking prompt prefilled once, N branches sampled from it in
//!   parallel (each with its own seed), then a majority vote over the branches' final answers
//!   (self-consistency), ties broken by the mean token log-probability.

use std::collections::HashMap;

use crate::audio::Audio;
use crate::image::Rgb;
use crate::model::{Model, PromptSpec};
use crate::multimodal::Media;
use crate::{Result, RuntimeError};

/// The system message that asks a model without a reasoning format for reasoning, then an answer.
pub const REASONING_SYSTEM: &str = "Think step by step. Write your reasoning first, then give the final answer on a last line that starts with \"Answer:\".";

/// A reasoning mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// One greedy answer, short budget.
    Instant,
    /// A long reasoning budget, the reasoning shown apart from the answer.
    Think,
    /// Several branches from one prefill, aggregated by vote.
    Contemplate {
        /// Branches (at least 1).
        branches: usize,
    },
}

impl Mode {
    /// Parse `instant`, `think` or `contemplate` (with `branches` for the last).
    pub fn parse(name: &str, branches: usize) -> Result<Mode> {
        match name {
            "instant" => Ok(Mode::Instant),
            "think" => Ok(Mode::Think),
            "contemplate" if branches == 0 => Err(RuntimeError::Request("contemplate needs at least 1 branch".into())),
            "contemplate" => Ok(Mode::Contemplate { branches }),
            other => Err(RuntimeError::Request(format!("unknown mode {other:?} (instant, think or contemplate)"))),
        }
    }

    /// The mode's name.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Instant => "instant",
            Mode::Think => "think",
            Mode::Contemplate { .. } => "contemplate",
        }
    }

    /// Branches decoded for the mode.
    pub fn branches(self) -> usize {
        match self {
            Mode::Contemplate { branches } => branches,
            _ => 1,
        }
    }

    /// Token budget when none is given.
    pub fn default_max_tokens(self) -> usize {
        match self {
            Mode::Instant => 256,
            Mode::Think => 2048,
            Mode::Contemplate { .. } => 1024,
        }
    }

    /// Temperature when none is given: greedy, but for contemplating, whose branches must differ.
    pub fn default_temperature(self) -> f32 {
        match self {
            Mode::Contemplate { .. } => 0.7,
            _ => 0.0,
        }
    }

    /// Whether the mode asks the model to reason before answering.
    pub fn reasons(self) -> bool {
        !matches!(self, Mode::Instant)
    }

    /// The engine request of a prompt made for this mode ([`prompt_ids`], [`prompt`]): one
    /// branch, or for contemplating mode its branches decoded from the one prefill and voted on
    /// by the engine ([`Request::contemplate`](crate::engine::Request::contemplate); the
    /// finished output carries the [`Vote`]).
    pub fn request(self, prompt: Vec<u32>, sampling: crate::generate::SamplingOptions) -> crate::engine::Request {
        let req = crate::engine::Request::new(prompt, sampling);
        match self {
            Mode::Contemplate { branches } => req.contemplate(branches),
            _ => req,
        }
    }
}

/// Whether a chat template has a reasoning format of its own.
pub fn template_reasons(template: &str) -> bool {
    template.contains("enable_thinking") || template.contains("<think>")
}

/// Token ids of `question` asked in `mode`. With `chat` (implied by the reasoning modes when
/// the model has a chat template) the question is a user message in the model's template.
pub fn prompt_ids(model: &Model, mode: Mode, question: &str, chat: bool) -> Result<Vec<u32>> {
    Ok(prompt(model, mode, question, &[], &[], chat)?.0)
}

/// Token ids and media of `question` about `images` and audio clips `audio` asked in `mode`.
/// A tokenizer or chat template error names the model file it comes from.
pub fn prompt(
    model: &Model,
    mode: Mode,
    question: &str,
    images: &[Rgb],
    audio: &[Audio],
    chat: bool,
) -> Result<(Vec<u32>, Option<Media>)> {
    prompt_unnamed(model, mode, question, images, audio, chat).map_err(|e| match e {
        RuntimeError::Tokenizer(m) => RuntimeError::Tokenizer(format!("{}: {m}", model.path().display())),
        e => e,
    })
}

fn prompt_unnamed(
    model: &Model,
    mode: Mode,
    question: &str,
    images: &[Rgb],
    audio: &[Audio],
    chat: bool,
) -> Result<(Vec<u32>, Option<Media>)> {
    let mut spec = PromptSpec { text: question, images, audio, chat, ..Default::default() };
    let Some(template) = model.tokenizer().chat_template.as_deref() else {
        if chat || mode.reasons() {
            // A reasoning mode without a template would silently become a plain continuation.
            let why = if chat { "a chat prompt" } else { "a reasoning mode (think, contemplate)" };
            return Err(RuntimeError::Tokenizer(format!(
                "{why} needs the model's chat template, and it has none (tokenizer.chat_template)"
            )));
        }
        return model.build_prompt(&spec);
    };
    if mode.reasons() {
        spec.chat = true;
        if template_reasons(template) {
            spec.thinking = Some(true);
        } else {
            spec.system = Some(REASONING_SYSTEM);
        }
    }
    model.build_prompt(&spec)
}

/// A reply split into its reasoning and its answer.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Reply {
    /// The reasoning (empty when the reply has no marked answer).
    pub reasoning: String,
    /// The answer.
    pub answer: String,
}

/// Split a whole reply into its reasoning and its answer, as [`ReplySplitter`] splits it
/// streamed: at the first `</think>` or `Answer:` line; without either, the last paragraph is
/// the answer (inside an unclosed `<think>`, nothing is).
pub fn split_reply(text: &str) -> Reply {
    ReplySplitter::split(text)
}

/// Whether the prompt `ids` ends by opening `<think>` (some chat templates write it into the
/// generation prompt), so that the reply starts inside the reasoning.
pub fn prompt_opens_think(model: &Model, ids: &[u32]) -> bool {
    let tail = &ids[ids.len().saturating_sub(8)..];
    model.tokenizer().decode(tail, false).is_ok_and(|t| t.trim_end().ends_with("<think>"))
}

/// What a [`ReplySplitter`] lets out after a piece of text: new reasoning and new answer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplyDelta {
    /// Reasoning text to append.
    pub reasoning: String,
    /// Answer text to append.
    pub answer: String,
}

/// Splits a reply into reasoning and answer as it is generated, for streaming it: the text is
/// reasoning (a leading `<think>` dropped) until the first answer marker, `</think>` or a line
/// starting with `Answer:` (after markdown `*`, `#`), and answer after it. A reply that never
/// marks its answer is all reasoning inside an unclosed `<think>`; otherwise its last paragraph
/// (after the last blank line; all of a one-paragraph reply) is the answer, so the reasoning
/// streams a paragraph behind until a marker is seen. Text that may yet turn out to be a
/// marker or the last paragraph, and whitespace that may end a part, is held back until the
/// next piece shows what it is, so the pieces joined are the parts trimmed, however the reply
/// was cut into pieces. Inside `<think>` (opened by the reply, or by the prompt:
/// [`ReplySplitter::inside_think`]) only `</think>` ends the reasoning.
///
/// [`split_reply`] is the same split of a whole reply, so a stream and its whole agree.
#[derive(Clone, Debug, Default)]
pub struct ReplySplitter {
    text: String,
    /// Where the reasoning starts (after a leading `<think>`), once known.
    start: Option<usize>,
    /// The marker's start, where the answer starts, and whether the answer's leading `*` go.
    marker: Option<(usize, usize, bool)>,
    /// Text before this has been let out (or skipped).
    sent: usize,
    /// Whether any reasoning, and any answer, has been let out.
    reasoning_begun: bool,
    answer_begun: bool,
    /// Inside `<think>`: only `</think>` ends the reasoning.
    inside: bool,
}

impl ReplySplitter {
    /// A splitter with nothing seen.
    pub fn new() -> ReplySplitter {
        ReplySplitter::default()
    }

    /// A splitter for a reply whose prompt ended by opening `<think>` (see
    /// [`prompt_opens_think`]): the reply starts inside it.
    pub fn inside_think() -> ReplySplitter {
        ReplySplitter { start: Some(0), inside: true, ..ReplySplitter::default() }
    }

    /// The splitter for the reply to the prompt `ids` of `model`: inside `<think>` when the
    /// prompt opened it, else a fresh one.
    pub fn for_prompt(model: &Model, ids: &[u32]) -> ReplySplitter {
        if prompt_opens_think(model, ids) { ReplySplitter::inside_think() } else { ReplySplitter::new() }
    }

    /// The reasoning and answer of a whole reply, as a stream of it gives them.
    pub fn split(text: &str) -> Reply {
        ReplySplitter::new().whole(text)
    }

    /// This splitter's split of a whole reply (nothing pushed before).
    pub fn whole(mut self, text: &str) -> Reply {
        let (a, b) = (self.push(text), self.finish());
        Reply { reasoning: a.reasoning + &b.reasoning, answer: a.answer + &b.answer }
    }

    /// Take the next piece of the reply; returns what can be let out now.
    pub fn push(&mut self, piece: &str) -> ReplyDelta {
        self.text.push_str(piece);
        self.advance(false)
    }

    /// The reply has ended: let out what was held back (trailing whitespace dropped).
    pub fn finish(&mut self) -> ReplyDelta {
        self.advance(true)
    }

    fn advance(&mut self, last: bool) -> ReplyDelta {
        let mut out = ReplyDelta::default();
        let text = self.text.as_str();
        let start = match self.start {
            Some(s) => s,
            None => {
                let rest = text.trim_start();
                let lead = text.len() - rest.len();
                if rest.starts_with("<think>") {
                    self.inside = true;
                    lead + "<think>".len()
                } else if !last && "<think>".starts_with(rest) {
                    return out; // maybe a `<think>` still coming
                } else {
                    0
                }
            }
        };
        self.start = Some(start);
        self.sent = self.sent.max(start);
        if self.marker.is_none() {
            // Nothing let out can be part of a marker, so the search starts at the line of
            // the first unsent byte.
            let from = text[..self.sent].rfind('\n').map_or(start, |n| n + 1).max(start);
            self.marker = find_marker(text, from, self.inside);
        }
        // Inside `<think>` the reasoning runs to the marker; otherwise, with no marker, the
        // last paragraph is the answer.
        let opened = self.inside;
        if self.marker.is_none() && last && !opened {
            let p = last_paragraph(text, start);
            self.marker = Some((p, p, false));
        }
        // The reasoning: up to the marker, or to what may still become one or the answer.
        let end = match self.marker {
            Some((m, _, _)) => m,
            None if last => text.len(),
            None if opened => undecided(text, start, true),
            None => undecided(text, start, false).min(last_paragraph(text, start)),
        };
        if self.sent < end {
            let part = &text[self.sent..end];
            let lead = if self.reasoning_begun { 0 } else { part.len() - part.trim_start().len() };
            let body = part[lead..].trim_end();
            if !body.is_empty() {
                out.reasoning = body.to_string();
                self.reasoning_begun = true;
                self.sent += lead + body.len();
            }
        }
        let Some((_, answer, stars)) = self.marker else { return out };
        self.sent = self.sent.max(answer);
        let part = &text[self.sent..];
        let lead = if self.answer_begun {
            0
        } else {
            let rest = part.trim_start();
            let rest = if stars { rest.trim_start_matches('*').trim_start() } else { rest };
            if rest.is_empty() && !last {
                return out; // only what a trimmed answer starts without, so far
            }
            part.len() - rest.len()
        };
        let body = part[lead..].trim_end();
        if !body.is_empty() {
            out.answer = body.to_string();
            self.answer_begun = true;
            self.sent += lead + body.len();
        }
        out
    }
}

/// The first answer marker of `text` at or after the line starting at `from`: its start,
/// where the answer starts, and whether the answer's leading `*` are markdown to drop.
fn find_marker(text: &str, from: usize, think_only: bool) -> Option<(usize, usize, bool)> {
    let think = text[from..].find("</think>").map(|i| (from + i, from + i + "</think>".len(), false));
    if think_only {
        return think;
    }
    let mut line = from;
    let mut answer = None;
    loop {
        let rest = &text[line..];
        let stripped = rest.trim_start_matches(['*', '#', ' ']);
        let at = line + rest.len() - stripped.len();
        if stripped.get(..7).is_some_and(|p| p.eq_ignore_ascii_case("answer:")) {
            answer = Some((line, at + 7, true));
            break;
        }
        match rest.find('\n') {
            Some(n) if think.is_none_or(|(t, _, _)| line + n < t) => line += n + 1,
            _ => break,
        }
    }
    match (think, answer) {
        (Some(t), Some(a)) => Some(if a.0 < t.0 { a } else { t }),
        (t, a) => t.or(a),
    }
}

/// Where the last paragraph of `text` (after `start`) begins: after the last blank line
/// before its trailing whitespace, or at `start`.
fn last_paragraph(text: &str, start: usize) -> usize {
    text.trim_end().rfind("\n\n").map_or(start, |i| i + 2).max(start)
}

/// Where the reasoning must stop being let out while no marker is seen: before a last line
/// that may still grow into an `Answer:` line, and before an end that may be the start of
/// `</think>`.
fn undecided(text: &str, start: usize, think_only: bool) -> usize {
    let line = text.rfind('\n').map_or(start, |n| n + 1).max(start);
    let stripped = text[line..].trim_start_matches(['*', '#', ' ']);
    let could_answer = stripped.len() < 7 && "answer:".starts_with(&stripped.to_ascii_lowercase());
    if could_answer && !think_only {
        return line;
    }
    let partial = (1.."</think>".len()).rev().find(|&k| text.ends_with(&"</think>"[..k])).unwrap_or(0);
    (text.len() - partial).max(start)
}

/// The final answer of a reply, normalised for voting: the last `\boxed{...}`, else what
/// follows the last "answer:" or "answer is", else the last number, else the last non-empty
/// line. Outside a box, a number in the answer stands for it ("6 apples." and "6" agree); other
/// answers are compared lowercased, without surrounding punctuation and markdown. `None` for an empty reply.
pub fn final_answer(text: &str) -> Option<String> {
    let text = text.split("</think>").last().unwrap_or(text);
    let lower = text.to_lowercase();
    let raw: String = if let Some(i) = lower.rfind("\\boxed{") {
        let rest = &text[i + "\\boxed{".len()..];
        let mut depth = 1;
        let end = rest
            .char_indices()
            .find(|&(_, c)| {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    _ => {}
                }
                depth == 0
            })
            .map_or(rest.len(), |(j, _)| j);
        return normalise(&rest[..end]);
    } else if let Some((i, marker)) =
        ["answer:", "answer is"].iter().filter_map(|m| lower.rfind(m).map(|i| (i, m.len()))).max_by_key(|&(i, _)| i)
    {
        text[i + marker..].lines().next().unwrap_or("").to_string()
    } else if let Some(n) = last_number(text) {
        n
    } else {
        text.lines().rev().find(|l| !l.trim().is_empty())?.to_string()
    };
    if let Some(n) = first_number(&raw) {
        return Some(n);
    }
    normalise(&raw)
}

/// Lowercase, single spaces, without surrounding markdown, quotes and final punctuation.
fn normalise(raw: &str) -> Option<String> {
    let mut s = raw;
    loop {
        let t = s
            .trim()
            .trim_matches(|c: char| matches!(c, '*' | '`' | '"' | '\'' | '$' | '_'))
            .trim_end_matches(['.', '!', '?', ',', ';', ':']);
        if t == s {
            break;
        }
        s = t;
    }
    let norm = s.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase();
    (!norm.is_empty()).then_some(norm)
}

/// Numbers in `s` as written (digits, one decimal point, a leading minus), commas between
/// digit groups dropped and trailing zeros of a fraction trimmed.
fn numbers(s: &str) -> Vec<String> {
    let chars: Vec<char> = s.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        if chars[i].is_ascii_digit() {
            let neg = i > 0 && chars[i - 1] == '-' && (i < 2 || !chars[i - 2].is_alphanumeric());
            let mut n = String::new();
            if neg {
                n.push('-');
            }
            while i < chars.len() {
                let c = chars[i];
                let next_digit = chars.get(i + 1).is_some_and(char::is_ascii_digit);
                if c.is_ascii_digit() {
                    n.push(c);
                } else if c == ',' && next_digit {
                } else if c == '.' && next_digit && !n.contains('.') {
                    n.push('.');
                } else {
                    break;
                }
                i += 1;
            }
            if n.contains('.') {
                n = n.trim_end_matches('0').trim_end_matches('.').to_string();
            }
            out.push(n);
        } else {
            i += 1;
        }
    }
    out
}

fn first_number(s: &str) -> Option<String> {
    numbers(s).into_iter().next()
}

fn last_number(s: &str) -> Option<String> {
    numbers(s).pop()
}

/// One answer's share of a vote.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Tally {
    /// The normalised answer.
    pub answer: String,
    /// Branches that gave it.
    pub votes: usize,
    /// Mean over those branches of their mean token log-probability.
    pub mean_logprob: f32,
}

/// The outcome of a vote over branches.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Vote {
    /// The winning answer (normalised), `None` when no branch gave one.
    pub answer: Option<String>,
    /// The branch shown for it: of those that gave the answer, the most likely one.
    pub chosen: usize,
    /// Every answer given, most votes first.
    pub tally: Vec<Tally>,
}

/// Majority vote over branches given as (reply text, mean token log-probability); ties go to
/// the answer whose branches have the higher mean log-probability. Branches without an answer
/// do not vote; when none has one, the most likely branch is chosen.
pub fn vote(branches: &[(String, f32)]) -> Vote {
    let mut groups: HashMap<String, Vec<usize>> = HashMap::new();
    for (i, (text, _)) in branches.iter().enumerate() {
        if let Some(a) = final_answer(text) {
            groups.entry(a).or_default().push(i);
        }
    }
    let lp = |i: usize| branches[i].1;
    let mut tally: Vec<(Tally, usize)> = groups
        .into_iter()
        .map(|(answer, members)| {
            let mean = members.iter().map(|&i| lp(i)).sum::<f32>() / members.len() as f32;
            let best = *members.iter().max_by(|&&a, &&b| lp(a).total_cmp(&lp(b)).then(b.cmp(&a))).expect("non-empty");
            (Tally { answer, votes: members.len(), mean_logprob: mean }, best)
        })
        .collect();
    tally.sort_by(|(a, _), (b, _)| {
        b.votes.cmp(&a.votes).then(b.mean_logprob.total_cmp(&a.mean_logprob)).then(a.answer.cmp(&b.answer))
    });
    let most_likely = (0..branches.len()).max_by(|&a, &b| lp(a).total_cmp(&lp(b)).then(b.cmp(&a))).unwrap_or(0);
    match tally.first() {
        Some((t, best)) => {
            Vote { answer: Some(t.answer.clone()), chosen: *best, tally: tally.into_iter().map(|(t, _)| t).collect() }
        }
        None => Vote { answer: None, chosen: most_likely, tally: Vec::new() },
    }
}

/// A finished request as JSON: every branch with its text, answer and log-probability, the
/// vote for contemplating mode, the reasoning split for thinking mode, and timings.
pub fn describe(model: &Model, mode: Mode, out: &crate::engine::RequestOutput) -> Result<serde_json::Value> {
    let texts: Vec<String> =
        out.branches.iter().map(|b| model.tokenizer().decode(&b.tokens, true)).collect::<Result<_, _>>()?;
    let t = &out.timings;
    let mut v = serde_json::json!({
        "mode": mode.name(),
        "timings": {
            "prompt_tokens": t.prompt_tokens,
            "generated_tokens": t.generated_tokens,
            "queued_ms": t.queued.as_secs_f64() * 1e3,
            "prefill_ms": t.prefill.as_secs_f64() * 1e3,
            "decode_ms": t.decode.as_secs_f64() * 1e3,
            "decode_tokens_per_s": t.decode_tokens_per_s(out.branches.len()),
        },
    });
    if let Mode::Contemplate { .. } = mode {
        let Some(vote) = &out.vote else {
            return Err(RuntimeError::Request("a contemplating request finished without its vote".into()));
        };
        v["answer"] = serde_json::json!(vote.answer);
        v["chosen"] = serde_json::json!(vote.chosen);
        v["text"] = serde_json::json!(texts[vote.chosen]);
        v["tally"] = serde_json::json!(vote.tally);
        v["branches"] = texts
            .iter()
            .zip(&out.branches)
            .map(|(text, b)| {
                serde_json::json!({
                    "text": text,
                    "answer": final_answer(text),
                    "generated_ids": b.tokens,
                    "mean_logprob": b.mean_logprob(),
                    "logprob": b.logprobs.iter().sum::<f32>(),
                    "stop": b.stop,
                })
            })
            .collect();
    } else {
        let b = &out.branches[0];
        v["text"] = serde_json::json!(texts[0]);
        v["generated_ids"] = serde_json::json!(b.tokens);
        v["mean_logprob"] = serde_json::json!(b.mean_logprob());
        v["stop"] = serde_json::json!(b.stop);
        if mode.reasons() {
            let r = split_reply(&texts[0]);
            v["reasoning"] = serde_json::json!(r.reasoning);
            v["answer"] = serde_json::json!(r.answer);
        }
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_found_and_normalised() {
        assert_eq!(final_answer("so 3 + 5 = 8, minus 2.\nAnswer: 6 apples."), Some("6".into()));
        assert_eq!(final_answer("The answer is **Paris**."), Some("paris".into()));
        assert_eq!(final_answer("x = \\boxed{\\frac{1}{2}} done"), Some("\\frac{1}{2}".into()));
        assert_eq!(final_answer("<think>maybe 5</think> It is 1,234.50"), Some("1234.5".into()));
        assert_eq!(final_answer("We get -3 in the end"), Some("-3".into()));
        assert_eq!(final_answer("first line\n\nBlue\n"), Some("blue".into()));
        assert_eq!(final_answer("  \n "), None);
    }

    #[test]
    fn replies_split_at_the_marker() {
        let r = split_reply("<think>\n2 and 2 make 4\n</think>\nFour.");
        assert_eq!((r.reasoning.as_str(), r.answer.as_str()), ("2 and 2 make 4", "Four."));
        let r = split_reply("First, 3 + 5 = 8.\nThen 8 - 2 = 6.\n**Answer:** 6");
        assert_eq!((r.reasoning.as_str(), r.answer.as_str()), ("First, 3 + 5 = 8.\nThen 8 - 2 = 6.", "6"));
        let r = split_reply("Just 6.");
        assert_eq!((r.reasoning.as_str(), r.answer.as_str()), ("", "Just 6."));
    }

    /// `text` pushed through `s` in pieces of `size` characters: the reasoning and answer let out.
    fn streamed(mut s: ReplySplitter, text: &str, size: usize) -> (String, String) {
        let chars: Vec<char> = text.chars().collect();
        let (mut r, mut a) = (String::new(), String::new());
        for piece in chars.chunks(size) {
            let d = s.push(&piece.iter().collect::<String>());
            r += &d.reasoning;
            a += &d.answer;
        }
        let d = s.finish();
        (r + &d.reasoning, a + &d.answer)
    }

    #[test]
    fn a_streamed_reply_splits_as_the_whole_does_however_it_is_cut() {
        let cases = [
            ("<think>\n2 and 2 make 4\n</think>\nFour.", "2 and 2 make 4", "Four."),
            ("First, 3 + 5 = 8.\nThen 8 - 2 = 6.\n**Answer:** 6  \n", "First, 3 + 5 = 8.\nThen 8 - 2 = 6.", "6"),
            ("Some thought\n\n## ANSWER: Paris, France", "Some thought", "Paris, France"),
            ("answer: at once", "", "at once"),
            ("no marker at all\nanswer is 5", "", "no marker at all\nanswer is 5"),
            ("p1\n\np2 x\n\n  p3 \n\n ", "p1\n\np2 x", "p3"),
            ("<think>p1\n\np2 cut by the budget", "p1\n\np2 cut by the budget", ""),
            ("a < b and </thin is not it\nAnswer: 1\nAnswer: 2", "a < b and </thin is not it", "1\nAnswer: 2"),
            ("  <thi", "", "<thi"),
            ("Ünïcödé — reasoning…\n*Answer:* ü", "Ünïcödé — reasoning…", "ü"),
            ("", "", ""),
            ("<think>a\nAnswer: maybe 5\n</think>\nIt is 6", "a\nAnswer: maybe 5", "It is 6"),
            ("<think>p1\n\nAnswer: p2", "p1\n\nAnswer: p2", ""),
        ];
        for (text, reasoning, answer) in cases {
            let whole = ReplySplitter::split(text);
            assert_eq!((whole.reasoning.as_str(), whole.answer.as_str()), (reasoning, answer), "{text:?}");
            // Every cut into pieces at character boundaries: one character at a time, and
            // pieces of 2, 3 and 5 characters.
            for size in [1, 2, 3, 5] {
                let (r, a) = streamed(ReplySplitter::new(), text, size);
                assert_eq!((r.as_str(), a.as_str()), (reasoning, answer), "{text:?} in pieces of {size}");
            }
        }
    }

    #[test]
    fn a_reply_inside_a_think_the_prompt_opened_ends_only_at_its_close() {
        for (text, reasoning, answer) in [
            ("x\nAnswer: not yet\n</think>\n\nSix.", "x\nAnswer: not yet", "Six."),
            ("cut by the budget\n\nstill thinking", "cut by the budget\n\nstill thinking", ""),
        ] {
            let r = ReplySplitter::inside_think().whole(text);
            assert_eq!((r.reasoning.as_str(), r.answer.as_str()), (reasoning, answer), "{text:?}");
            let (r, a) = streamed(ReplySplitter::inside_think(), text, 1);
            assert_eq!((r.as_str(), a.as_str()), (reasoning, answer), "{text:?} a character at a time");
        }
    }

    #[test]
    fn majority_wins_and_ties_go_to_the_likelier() {
        let b = |t: &str, lp: f32| (t.to_string(), lp);
        let v = vote(&[b("Answer: 6", -0.9), b("Answer: 7", -0.1), b("so it is 6.", -0.5), b("???", -0.2)]);
        assert_eq!(v.answer.as_deref(), Some("6"));
        assert_eq!(v.chosen, 2, "the likelier of the two branches that said 6");
        assert_eq!(v.tally[0].votes, 2);
        let v = vote(&[b("Answer: 6", -0.9), b("Answer: 7", -0.1)]);
        assert_eq!((v.answer.as_deref(), v.chosen), (Some("7"), 1));
        let v = vote(&[b("", -0.9), b(" ", -0.1)]);
        assert_eq!((v.answer, v.chosen), (None, 1));
    }

    #[test]
    fn modes_parse() {
        assert_eq!(Mode::parse("contemplate", 4).unwrap().branches(), 4);
        assert!(Mode::parse("contemplate", 0).is_err());
        assert!(Mode::parse("ponder", 1).unwrap_err().to_string().contains("unknown mode"));
    }
}
