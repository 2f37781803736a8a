//! `/metrics` in Prometheus' text format: the engine's gauges (queue depth, live sequences, KV
//! pages, tokens per second), request counts by endpoint and status, token counters, and
//! histograms of request latency and time to first token.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

use crate::worker::EngineGauges;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 12] = [0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0];

#[derive(Clone, Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, secs: f64) {
        for (c, &b) in self.counts.iter_mut().zip(&BUCKETS) {
            if secs <= b {
                *c += 1;
            }
        }
        self.sum += secs;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (c, b) in self.counts.iter().zip(&BUCKETS) {
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {c}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}", self.count);
        let braces = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

/// What the HTTP side counts.
#[derive(Default)]
pub(crate) struct HttpMetrics {
    requests: BTreeMap<(&'static str, u16), u64>,
    latency: BTreeMap<&'static str, Histogram>,
    ttft: Histogram,
    prompt_tokens: u64,
    completion_tokens: u64,
}

impl HttpMetrics {
    /// A request answered with `status` after `took`.
    pub fn request(&mut self, endpoint: &'static str, status: u16, took: Duration) {
        self.status(endpoint, status);
        self.duration(endpoint, took);
    }

    /// A request answered with `status` (a stream's time is recorded when it ends).
    pub fn status(&mut self, endpoint: &'static str, status: u16) {
        *self.requests.entry((endpoint, status)).or_default() += 1;
    }

    /// A request's whole time.
    pub fn duration(&mut self, endpoint: &'static str, took: Duration) {
        self.latency.entry(endpoint).or_default().observe(took.as_secs_f64());
    }

    /// A finished run's tokens and time to first token.
    pub fn tokens(&mut self, run: &crate::Run) {
        self.prompt_tokens += run.job.prompt.len() as u64;
        self.completion_tokens += run.choices.iter().map(|c| c.tokens.len() as u64).sum::<u64>();
        if let Some(t) = run.first_token {
            self.ttft.observe(t.duration_since(run.start).as_secs_f64());
        }
    }

    /// The HTTP part of the exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP flint_http_requests_total Requests answered, by endpoint and status.\n");
        out.push_str("# TYPE flint_http_requests_total counter\n");
        for ((e, s), n) in &self.requests {
            let _ = writeln!(out, "flint_http_requests_total{{endpoint=\"{e}\",status=\"{s}\"}} {n}");
        }
        out.push_str("# HELP flint_request_duration_seconds Time from a request's arrival to its last byte.\n");
        out.push_str("# TYPE flint_request_duration_seconds histogram\n");
        for (e, h) in &self.latency {
            h.render(&mut out, "flint_request_duration_seconds", &format!("endpoint=\"{e}\""));
        }
        out.push_str("# HELP flint_time_to_first_token_seconds Time from a request's arrival to its first token.\n");
        out.push_str("# TYPE flint_time_to_first_token_seconds histogram\n");
        self.ttft.render(&mut out, "flint_time_to_first_token_seconds", "");
        out.push_str("# HELP flint_prompt_tokens_total Prompt tokens of finished requests.\n");
        out.push_str("# TYPE flint_prompt_tokens_total counter\n");
        let _ = writeln!(out, "flint_prompt_tokens_total {}", self.prompt_tokens);
        out.push_str("# HELP flint_completion_tokens_total Tokens returned to clients.\n");
        out.push_str("# TYPE flint_completion_tokens_total counter\n");
        let _ = writeln!(out, "flint_completion_tokens_total {}", self.completion_tokens);
        out
    }
}

/// The whole exposition: the engine's gauges, then the HTTP part.
pub(crate) fn render(g: &EngineGauges, in_system: usize, http: &str) -> String {
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, v: f64| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
    };
    gauge(
        "flint_requests_in_system",
        "Requests queued or running (the concurrency limit counts these).",
        in_system as f64,
    );
    gauge("flint_queue_depth", "Requests waiting for KV pages or batch room.", g.waiting as f64);
    gauge("flint_requests_running", "Requests admitted and decoding.", g.running_requests as f64);
    gauge("flint_sequences_live", "Sequences (branches) decoding now.", g.live_sequences as f64);
    gauge("flint_kv_pages_used", "KV cache pages in use (shared pages once).", g.kv_pages_used as f64);
    gauge("flint_kv_pages_free", "KV cache pages free.", g.kv_pages_total.saturating_sub(g.kv_pages_used) as f64);
    gauge("flint_tokens_per_second", "Tokens generated per second over the last 5 seconds.", g.tokens_per_s);
    let _ = writeln!(
        out,
        "# HELP flint_decode_steps_total Batched decode steps.\n# TYPE flint_decode_steps_total counter\nflint_decode_steps_total {}",
        g.steps
    );
    let _ = writeln!(
        out,
        "# HELP flint_generated_tokens_total Tokens the engine generated (stopped branches' last step included).\n# TYPE flint_generated_tokens_total counter\nflint_generated_tokens_total {}",
        g.generated_tokens
    );
    out.push_str(http);
    out
}
