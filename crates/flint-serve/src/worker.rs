//! The engine's thread: it owns the batched [`Engine`] (whose GPU work blocks), takes requests
//! and cancellations from the HTTP handlers over a channel, steps while anything is live, and
//! sends each request's tokens to its handler as they come. A handler that goes away (its
//! client disconnected) is noticed at its next token, or by its cancel message, and its request
//! is cancelled, freeing its KV pages.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flint_runtime::engine::{Engine, Event, Request, RequestId, RequestOutput};
use tokio::sync::mpsc::UnboundedSender;

/// A message from a handler.
pub(crate) enum Command {
    /// Queue `request`; its events go to `out`, under the handler's `key`.
    Submit { key: u64, request: Request, out: UnboundedSender<Out> },
    /// The handler is done with `key` (finished, stopped on stop strings, or disconnected).
    Cancel { key: u64 },
    /// Branch `branch` of `key` met a stop string: decode it no further.
    StopBranch { key: u64, branch: usize },
}

/// What a handler hears about its request.
#[derive(Debug)]
pub(crate) enum Out {
    /// The engine queued the request (the first message of every request but a refused one).
    Accepted,
    /// The engine refused the request (it can never be served as asked).
    Refused(flint_runtime::RuntimeError),
    /// A branch produced a token.
    Token { branch: usize, token: u32, logprob: f32 },
    /// Every branch stopped.
    Done(RequestOutput),
    /// The request failed after admission.
    Failed(String),
}

/// The engine's state as `/metrics` shows it, refreshed after every step.
#[derive(Clone, Debug, Default)]
pub(crate) struct EngineGauges {
    pub waiting: usize,
    pub live_sequences: usize,
    pub running_requests: usize,
    pub kv_pages_used: usize,
    pub kv_pages_total: usize,
    pub steps: u64,
    pub generated_tokens: u64,
    /// Tokens per second over the last few seconds.
    pub tokens_per_s: f64,
}

/// Run `engine` until every sender of `rx` is gone and nothing is live. `up` is cleared when
/// this returns or unwinds, so `/health` reports an engine that is gone.
pub(crate) fn run(mut engine: Engine, rx: Receiver<Command>, gauges: Arc<Mutex<EngineGauges>>, up: Arc<AtomicBool>) {
    struct Down(Arc<AtomicBool>);
    impl Drop for Down {
        fn drop(&mut self) {
            self.0.store(false, Ordering::SeqCst);
        }
    }
    let _down = Down(up);
    let mut by_key: HashMap<u64, (RequestId, UnboundedSender<Out>)> = HashMap::new();
    let mut by_id: HashMap<RequestId, u64> = HashMap::new();
    let mut window: Vec<(Instant, u64)> = Vec::new();
    let mut generated = 0u64;
    let mut open = true;
    loop {
        // Block for work when idle; otherwise take whatever has come and step.
        if engine.is_idle() {
            if !open {
                break;
            }
            {
                let mut g = gauges.lock().unwrap_or_else(|p| p.into_inner());
                g.tokens_per_s = 0.0;
                g.live_sequences = 0;
                g.running_requests = 0;
                g.waiting = 0;
                g.kv_pages_used = engine.kv_pages().0;
            }
            window.clear();
            match rx.recv() {
                Ok(c) => take(&mut engine, c, &mut by_key, &mut by_id),
                Err(_) => break,
            }
        }
        loop {
            match rx.try_recv() {
                Ok(c) => take(&mut engine, c, &mut by_key, &mut by_id),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        if engine.is_idle() {
            continue;
        }
        let events = match engine.step() {
            Ok(ev) => ev,
            Err(e) => {
                tracing::error!(error = %e, "engine step failed");
                for (_, (id, out)) in by_key.drain() {
                    let _ = out.send(Out::Failed(format!("the engine failed: {e}")));
                    let _ = engine.cancel(id);
                }
                by_id.clear();
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let mut gone = Vec::new();
        for e in events {
            match e {
                Event::Token { request, branch, token, logprob } => {
                    generated += 1;
                    if let Some(key) = by_id.get(&request)
                        && let Some((_, out)) = by_key.get(key)
                        && out.send(Out::Token { branch, token, logprob }).is_err()
                    {
                        gone.push(request);
                    }
                }
                Event::Finished { request, output } => {
                    if let Some(key) = by_id.remove(&request)
                        && let Some((_, out)) = by_key.remove(&key)
                    {
                        let _ = out.send(Out::Done(output));
                    }
                }
                Event::Failed { request, error } => {
                    if let Some(key) = by_id.remove(&request)
                        && let Some((_, out)) = by_key.remove(&key)
                    {
                        let _ = out.send(Out::Failed(error));
                    }
                }
            }
        }
        for id in gone {
            if let Some(key) = by_id.remove(&id) {
                by_key.remove(&key);
                tracing::debug!(request = id.0, "client gone; cancelling");
                if let Err(e) = engine.cancel(id) {
                    tracing::error!(error = %e, "cancelling a request");
                }
            }
        }
        let now = Instant::now();
        window.push((now, generated));
        window.retain(|(t, _)| now.duration_since(*t) <= Duration::from_secs(5));
        let mut g = gauges.lock().unwrap_or_else(|p| p.into_inner());
        let (used, total) = engine.kv_pages();
        g.waiting = engine.waiting();
        g.live_sequences = engine.live_branches();
        g.running_requests = by_key.len();
        g.kv_pages_used = used;
        g.kv_pages_total = total;
        g.steps = engine.steps();
        g.generated_tokens = generated;
        g.tokens_per_s = match (window.first(), window.last()) {
            (Some(a), Some(b)) if b.0 > a.0 => (b.1 - a.1) as f64 / b.0.duration_since(a.0).as_secs_f64(),
            _ => 0.0,
        };
    }
}

fn take(
    engine: &mut Engine,
    c: Command,
    by_key: &mut HashMap<u64, (RequestId, UnboundedSender<Out>)>,
    by_id: &mut HashMap<RequestId, u64>,
) {
    match c {
        Command::Submit { key, request, out } => match engine.submit(request) {
            Ok(id) => {
                if out.send(Out::Accepted).is_err() {
                    let _ = engine.cancel(id);
                    return;
                }
                by_key.insert(key, (id, out));
                by_id.insert(id, key);
            }
            Err(e) => {
                let _ = out.send(Out::Refused(e));
            }
        },
        Command::StopBranch { key, branch } => {
            if let Some((id, _)) = by_key.get(&key) {
                engine.stop_branch(*id, branch);
            }
        }
        Command::Cancel { key } => {
            if let Some((id, _)) = by_key.remove(&key) {
                by_id.remove(&id);
                if let Err(e) = engine.cancel(id) {
                    tracing::error!(error = %e, "cancelling a request");
                }
            }
        }
    }
}
