//! Decode steps replayed from plans, with the sampled ids kept on the GPU and read back a step or
//! two behind, against each step recorded afresh and waited for (StepMode::Immediate), on
//! SmolLM2-135M (fetched on first use): the same tokens, log-probabilities (to the bit) and stop
//! reasons in every case: greedy, sampled, a stop token in the middle (steps run past it are
//! discarded and their KV positions released, so a second generation on the session continues
//! from the same cache), the context filling up; and through the engine with requests joining
//! in waves, branches sharing a prefix, stop tokens, budgets that end at different steps and a
//! cancel. A failed step fails every running request and leaves the KV pool as it was.

mod common;

use std::collections::HashMap;

use common::model;
use flint_runtime::engine::{Engine, EngineOptions, Event, Request, RequestId};
use flint_runtime::generate::{Generation, SamplingOptions, StopReason};
use flint_runtime::stepper::StepMode;

fn ids(text: &str) -> Vec<u32> {
    model().prompt_ids(text, false).unwrap()
}

/// Two generations on one session of `capacity` tokens (the second continues the first's cache).
fn session_run(
    mode: StepMode,
    capacity: usize,
    prompts: &[&[u32]],
    opts: &SamplingOptions,
) -> Vec<(Generation, usize)> {
    let mut s = model().session(capacity).unwrap().with_mode(mode);
    // A planned session makes its batch-1 plan when it is created, and its greedy steps
    // (prompts and outputs under 256 tokens: one key split) all replay it; sampled steps read
    // the logits rather than the head's argmax tiles, a plan of their own.
    let plans = if mode == StepMode::Planned { 1 } else { 0 };
    let plans_end = plans + u64::from(mode == StepMode::Planned && opts.temperature > 0.0);
    assert_eq!(s.step_stats().plans_made, plans, "plans made with the session");
    let mut out = Vec::new();
    for &p in prompts {
        let mut streamed = Vec::new();
        let g = s.generate(p, opts, |t| streamed.push(t)).unwrap();
        assert_eq!(streamed, g.tokens, "the callback saw the tokens in order");
        out.push((g, s.len()));
    }
    assert_eq!(s.step_stats().plans_made, plans_end, "plans made by the end");
    out
}

fn assert_same(planned: &[(Generation, usize)], immediate: &[(Generation, usize)], what: &str) {
    for (i, ((p, plen), (q, qlen))) in planned.iter().zip(immediate).enumerate() {
        assert_eq!(p.tokens, q.tokens, "{what}, generation {i}: tokens");
        let bits = |g: &Generation| g.logprobs.iter().map(|l| l.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(p), bits(q), "{what}, generation {i}: log-probabilities");
        assert_eq!(p.stop, q.stop, "{what}, generation {i}: stop reason");
        assert_eq!(plen, qlen, "{what}, generation {i}: cache length after");
    }
}

#[test]
fn session_planned_equals_immediate() {
    let (a, b) = (ids("The capital of France is"), ids(" And the capital of Italy is"));
    let greedy = SamplingOptions { max_tokens: 12, ..Default::default() };
    let sampled = SamplingOptions { temperature: 0.8, top_k: 40, top_p: 0.95, seed: 7, max_tokens: 12, stop: vec![] };
    // A stop token the greedy run meets at its sixth token.
    let reference = session_run(StepMode::Immediate, 256, &[&a], &greedy);
    let stop_at = reference[0].0.tokens[5];
    let stopping = SamplingOptions { stop: vec![stop_at], ..greedy.clone() };
    for (what, capacity, opts) in [
        ("greedy", 256, &greedy),
        ("sampled", 256, &sampled),
        ("stop token", 256, &stopping),
        // Room for the prompt and a few tokens: the context ends the first generation.
        ("context", a.len() + 7, &greedy),
    ] {
        let immediate = session_run(StepMode::Immediate, capacity, &[&a], opts);
        let planned = session_run(StepMode::Planned, capacity, &[&a], opts);
        assert_same(&planned, &immediate, what);
        match what {
            "stop token" => assert_eq!(planned[0].0.stop, StopReason::Stop),
            "context" => assert_eq!(planned[0].0.stop, StopReason::Context),
            _ => assert_eq!(planned[0].0.stop, StopReason::Length),
        }
    }
    // A second prompt on the same session after a stop: the cache the first left is the same.
    let prompts: [&[u32]; 2] = [&a, &b];
    let immediate = session_run(StepMode::Immediate, 256, &prompts, &stopping);
    let planned = session_run(StepMode::Planned, 256, &prompts, &stopping);
    assert_same(&planned, &immediate, "stop, then a second prompt");
}

/// Per (request, branch): streamed tokens and log-probability bits; per request: the outputs.
type Trace = (HashMap<(u64, usize), Vec<(u32, u32)>>, HashMap<u64, Vec<(Vec<u32>, StopReason)>>);

fn engine_run(mode: StepMode, failing: bool) -> Trace {
    let m = model();
    let opts = EngineOptions { kv_tokens: 2048, page_size: 16, max_batch: 12 };
    let mut engine = Engine::new(m.decoder().clone(), opts).unwrap().with_mode(mode).unwrap();
    let greedy = |max_tokens| SamplingOptions { max_tokens, ..Default::default() };
    let first = ids("1, 2, 3, 4,");
    let counting = {
        // The greedy continuation of a count, to stop at its fourth token.
        let mut s = m.session(64).unwrap().with_mode(StepMode::Immediate);
        s.generate(&first, &greedy(8), |_| {}).unwrap().tokens
    };
    let wave1 = vec![
        Request::new(ids("The capital of France is"), greedy(12)),
        Request::new(first.clone(), SamplingOptions { stop: vec![counting[3]], ..greedy(16) }),
        Request::new(ids("Once upon a time"), SamplingOptions { temperature: 0.7, seed: 3, ..greedy(10) }).branches(3),
        Request::new(ids("def fibonacci(n):"), greedy(20)),
    ];
    let wave2 = vec![
        Request::new(ids("The quick brown fox"), greedy(6)),
        Request::new(ids("Water boils at"), SamplingOptions { temperature: 0.9, top_k: 20, seed: 11, ..greedy(9) })
            .branches(2),
    ];
    let mut trace: Trace = (HashMap::new(), HashMap::new());
    let record = |events: Vec<Event>, trace: &mut Trace| {
        for e in events {
            match e {
                Event::Token { request, branch, token, logprob } => {
                    trace.0.entry((request.0, branch)).or_default().push((token, logprob.to_bits()))
                }
                Event::Finished { request, output } => {
                    trace.1.insert(request.0, output.branches.iter().map(|b| (b.tokens.clone(), b.stop)).collect());
                }
                Event::Failed { request, error } => {
                    assert!(failing, "request {request:?} failed: {error}");
                    trace.1.insert(request.0, vec![]);
                }
            }
        }
    };
    let ids1: Vec<RequestId> = wave1.into_iter().map(|r| engine.submit(r).unwrap()).collect();
    for i in 0..4 {
        if failing && i == 3 {
            engine.inject_submit_failure();
        }
        let events = engine.step().unwrap();
        record(events, &mut trace);
    }
    if failing {
        // Every request still running failed (one may have finished before); the pool holds
        // nothing, and the engine still serves.
        assert!(ids1.iter().all(|id| trace.1.contains_key(&id.0)), "every request finished or failed");
        assert!(ids1.iter().filter(|id| trace.1[&id.0].is_empty()).count() >= 3, "the running requests failed");
        assert_eq!(engine.kv_bytes(), 0, "the failed requests' pages are free");
        assert_eq!(engine.live_branches(), 0);
    }
    let later: Vec<RequestId> = wave2.into_iter().map(|r| engine.submit(r).unwrap()).collect();
    engine.step().map(|e| record(e, &mut trace)).unwrap();
    if !failing {
        assert!(engine.cancel(ids1[3]).unwrap(), "the long request is still running");
    }
    while !engine.is_idle() {
        let events = engine.step().unwrap();
        record(events, &mut trace);
    }
    assert_eq!(engine.kv_bytes(), 0, "every page is free at the end");
    assert!(later.iter().all(|id| trace.1.contains_key(&id.0)), "the second wave finished");
    if !failing {
        // How many of the cancelled request's tokens arrive before the cancel depends on how far
        // behind the results run; the others' do not.
        trace.0.retain(|&(r, _), _| r != ids1[3].0);
    }
    trace
}

#[test]
fn engine_planned_equals_immediate() {
    let immediate = engine_run(StepMode::Immediate, false);
    let planned = engine_run(StepMode::Planned, false);
    assert_eq!(planned.1, immediate.1, "outputs and stop reasons per request and branch");
    assert_eq!(planned.0, immediate.0, "streamed tokens and log-probabilities");
    // The cases the run was built to cover did happen.
    let stops: Vec<StopReason> = planned.1.values().flatten().map(|(_, s)| *s).collect();
    assert!(stops.contains(&StopReason::Stop) && stops.contains(&StopReason::Length));
    assert_eq!(planned.1.len(), 5, "the cancelled request reports nothing");
}

#[test]
fn a_failed_step_fails_every_running_request() {
    engine_run(StepMode::Planned, true);
}

#[test]
fn a_prompt_prefilled_in_chunks_continues_as_one_prefilled_whole() {
    let m = model();
    // 39 tokens in chunks of at most 16 (three of 13) against one chunk of 39.
    let prompt = ids("The first president of the United States was George Washington. The second was John Adams, \
                      and the third was Thomas Jefferson, who wrote the Declaration of Independence in 1776. The fourth");
    assert!(prompt.len() > 32, "{} tokens", prompt.len());
    let opts = SamplingOptions { max_tokens: 10, ..Default::default() };
    let run = |chunk: usize| {
        let mut s = m.session(prompt.len() + 16).unwrap().with_prefill_chunk(chunk);
        s.generate(&prompt, &opts, |_| {}).unwrap()
    };
    let (whole, chunked) = (run(4096), run(16));
    assert_eq!(whole.tokens, chunked.tokens, "greedy tokens");
    for (a, b) in whole.logprobs.iter().zip(&chunked.logprobs) {
        assert!((a - b).abs() <= 1e-3, "log-probabilities {a} vs {b}");
    }
}

#[test]
fn an_awaited_generation_cancelled_at_a_token_releases_the_steps_after_it() {
    let prompt = ids("The capital of France is");
    let opts = SamplingOptions { max_tokens: 12, ..Default::default() };
    let whole = model().session(64).unwrap().generate(&prompt, &opts, |_| {}).unwrap();
    assert_eq!(whole.tokens.len(), 12);
    let mut s = model().session(64).unwrap();
    let mut seen = 0;
    let cut = pollster::block_on(s.generate_async(&prompt, None, &opts, |_| {
        seen += 1;
        if seen == 3 { std::ops::ControlFlow::Break(()) } else { std::ops::ControlFlow::Continue(()) }
    }))
    .unwrap();
    assert_eq!(cut.stop, StopReason::Cancelled);
    assert_eq!(cut.tokens, whole.tokens[..3], "the tokens up to the cancel");
    // The steps submitted past the cancel were discarded: the cache holds the prompt and the
    // tokens fed back (all but the last), and the session goes on from there.
    assert_eq!(s.len(), prompt.len() + 2);
    let rest = s.generate(&whole.tokens[2..3], &SamplingOptions { max_tokens: 9, ..Default::default() }, |_| {});
    assert_eq!(rest.unwrap().tokens, whole.tokens[3..], "continuing after the cancel");
}

#[test]
fn steps_of_a_layout_no_plan_holds_run_through_the_ring_in_order() {
    let prompt = ids("The capital of France is");
    let opts = SamplingOptions { max_tokens: 12, ..Default::default() };
    let planned = model().session(64).unwrap().generate(&prompt, &opts, |_| {}).unwrap();
    let mut s = model().session(64).unwrap().without_plans().unwrap();
    let recorded = s.generate(&prompt, &opts, |_| {}).unwrap();
    assert_eq!(recorded.tokens, planned.tokens);
    let bits = |g: &Generation| g.logprobs.iter().map(|l| l.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&recorded), bits(&planned), "log-probabilities");
    let stats = s.step_stats();
    assert_eq!(stats.plans_made, 0);
    assert_eq!(stats.steps, 11, "every step after the first token");
}

#[test]
fn greedy_steps_pick_from_the_heads_argmax_tiles_as_from_its_logits() {
    let prompt = ids("The capital of France is");
    let greedy = SamplingOptions { max_tokens: 16, ..Default::default() };
    let mut tiled = model().session(64).unwrap();
    let t = tiled.generate(&prompt, &greedy, |_| {}).unwrap();
    let mut full = model().session(64).unwrap().with_full_logits().unwrap();
    let f = full.generate(&prompt, &greedy, |_| {}).unwrap();
    assert_eq!(t.tokens, f.tokens, "tokens");
    assert_eq!(t.logprobs.len(), f.logprobs.len());
    for (i, (a, b)) in t.logprobs.iter().zip(&f.logprobs).enumerate() {
        // The same logits; only the order of the log-sum-exp's sums differs.
        assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "token {i}: log-probability {a} against {b}");
    }
    // Every step after the prefill's token came from tiles, none in the full-logits session.
    assert_eq!(tiled.step_stats().tiles_steps, 15);
    assert_eq!(full.step_stats().tiles_steps, 0);
    // Sampling at a temperature reads the logits.
    let sampled = SamplingOptions { temperature: 0.8, top_k: 40, seed: 3, ..greedy };
    let mut s = model().session(64).unwrap();
    s.generate(&prompt, &sampled, |_| {}).unwrap();
    assert_eq!(s.step_stats().tiles_steps, 0);
}
