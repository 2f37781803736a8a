//! The batched engine against single-sequence generation with SmolLM2-135M (fetched on first
//! use): batches of up to 16 sequences of different lengths that join and leave between steps
//! give the same greedy tokens as each sequence run alone; branches forked from one prompt share
//! its KV pages and decode through cascade attention, giving copies of the greedy answer at
//! temperature 0 and different, reproducible answers with a temperature; requests the engine
//! cannot serve are refused one by one while the others carry on.

mod common;
mod host;

use std::collections::HashMap;

use common::model;
use flint_runtime::engine::{Engine, EngineOptions, Event, Request, RequestId, RequestOutput};
use flint_runtime::generate::{SamplingOptions, StopReason};
use flint_runtime::{RequestError, RuntimeError};

const PROMPTS: [&str; 16] = [
    "The capital of France is",
    "1, 2, 3, 4,",
    "Once upon a time",
    "The quick brown fox",
    "def fibonacci(n):",
    "Water boils at",
    "In 1492, Columbus",
    "The largest planet in the solar system is",
    "Roses are red,",
    "SELECT * FROM",
    "The opposite of hot is",
    "My favourite colour is",
    "To be or not to be,",
    "The chemical symbol for gold is",
    "A B C D E F",
    "The first president of the United States was George Washington. The second",
];

fn greedy(max_tokens: usize) -> SamplingOptions {
    SamplingOptions { max_tokens, ..Default::default() }
}

fn alone(prompt: &[u32], opts: &SamplingOptions) -> Vec<u32> {
    let m = model();
    let mut s = m.session(prompt.len() + opts.max_tokens).unwrap();
    s.generate(prompt, opts, |_| {}).unwrap().tokens
}

/// Run the engine until idle; return each request's output and the tokens its events streamed.
fn drain(
    engine: &mut Engine,
    outputs: &mut HashMap<RequestId, RequestOutput>,
    streamed: &mut HashMap<(RequestId, usize), Vec<u32>>,
) {
    engine
        .run(|e| match e {
            Event::Token { request, branch, token, .. } => streamed.entry((request, branch)).or_default().push(token),
            Event::Finished { request, output } => {
                outputs.insert(request, output);
            }
            Event::Failed { request, error } => panic!("request {request:?} failed: {error}"),
        })
        .unwrap();
}

#[test]
fn batched_decode_equals_each_sequence_alone() {
    let m = model();
    let mut engine =
        Engine::new(m.decoder().clone(), EngineOptions { kv_tokens: 4096, page_size: 16, max_batch: 16 }).unwrap();
    let prompts: Vec<Vec<u32>> = PROMPTS.iter().map(|p| m.prompt_ids(p, false).unwrap()).collect();
    // Budgets differ so that sequences leave at different steps.
    let budget = |i: usize| 4 + (i * 5) % 13;
    let mut ids = Vec::new();
    let mut outputs = HashMap::new();
    let mut streamed: HashMap<(RequestId, usize), Vec<u32>> = HashMap::new();
    // Ten join at once; after three steps the other six join while the first are mid-way.
    for (i, p) in prompts.iter().enumerate().take(10) {
        ids.push(engine.submit(Request::new(p.clone(), greedy(budget(i)))).unwrap());
    }
    for _ in 0..3 {
        for e in engine.step().unwrap() {
            match e {
                Event::Token { request, branch, token, .. } => {
                    streamed.entry((request, branch)).or_default().push(token)
                }
                Event::Finished { request, output } => {
                    outputs.insert(request, output);
                }
                Event::Failed { request, error } => panic!("request {request:?} failed: {error}"),
            }
        }
    }
    // Each has 4 tokens now (one from its prefill, three from the steps).
    assert_eq!(engine.live_branches(), (0..10).filter(|&i| budget(i) > 4).count());
    for (i, p) in prompts.iter().enumerate().skip(10) {
        ids.push(engine.submit(Request::new(p.clone(), greedy(budget(i)))).unwrap());
    }
    drain(&mut engine, &mut outputs, &mut streamed);
    assert_eq!(engine.kv_bytes(), 0, "every page is free again");
    for (i, (id, p)) in ids.iter().zip(&prompts).enumerate() {
        let got = &outputs[id].branches[0];
        assert_eq!(got.tokens, alone(p, &greedy(budget(i))), "sequence {i} ({:?})", PROMPTS[i]);
        assert_eq!(got.tokens, streamed[&(*id, 0)], "streamed tokens of sequence {i}");
        assert_eq!(got.stop, StopReason::Length);
    }
}

#[test]
fn branches_share_the_prompt_and_agree_at_temperature_zero() {
    let m = model();
    // Pages of 16: a 40-token prompt leaves two full shared pages and a partial one.
    let mut engine =
        Engine::new(m.decoder().clone(), EngineOptions { kv_tokens: 2048, page_size: 16, max_batch: 16 }).unwrap();
    let prompt = m
        .prompt_ids(
            "Question: Tom has 3 apples and buys 5 more, then gives 2 to Ann. How many apples does Tom have now? Think it through. Answer:",
            false,
        )
        .unwrap();
    assert!(prompt.len() > 32, "{} prompt tokens", prompt.len());
    let want = alone(&prompt, &greedy(12));
    let id = engine.submit(Request::new(prompt.clone(), greedy(12)).branches(5)).unwrap();
    let (mut outputs, mut streamed) = (HashMap::new(), HashMap::new());
    drain(&mut engine, &mut outputs, &mut streamed);
    let out = &outputs[&id];
    assert_eq!(out.branches.len(), 5);
    for (b, br) in out.branches.iter().enumerate() {
        assert_eq!(br.tokens, want, "branch {b} at temperature 0 is the greedy answer");
    }
    // The prompt's K/V is stored once: 5 branches of (prompt + 12) tokens stored separately
    // would need 5 x 4 pages; shared, the two full prompt pages are counted once.
    let separate = 5 * (prompt.len() + 12).div_ceil(16);
    let shared = prompt.len() / 16 + 5 * ((prompt.len() + 12).div_ceil(16) - prompt.len() / 16);
    let per_page = 2
        * m.decoder().cfg.layers
        * 16
        * m.decoder().cfg.kv_heads
        * m.decoder().cfg.head_dim
        * m.decoder().kv_dtype.size();
    assert_eq!(engine.peak_kv_bytes(), shared * per_page, "peak KV: {shared} pages (not {separate})");
    assert_eq!(engine.kv_bytes(), 0);
}

#[test]
fn sampled_branches_differ_and_are_reproducible() {
    let m = model();
    let prompt = m.prompt_ids("Here is a short story about a dragon:", false).unwrap();
    let sampling =
        |seed| SamplingOptions { temperature: 0.9, top_k: 40, top_p: 0.95, seed, max_tokens: 10, stop: vec![] };
    let run = |seed| {
        let mut engine =
            Engine::new(m.decoder().clone(), EngineOptions { kv_tokens: 1024, page_size: 16, max_batch: 8 }).unwrap();
        let id = engine.submit(Request::new(prompt.clone(), sampling(seed)).branches(4)).unwrap();
        let (mut outputs, mut streamed) = (HashMap::new(), HashMap::new());
        drain(&mut engine, &mut outputs, &mut streamed);
        outputs.remove(&id).unwrap().branches.into_iter().map(|b| b.tokens).collect::<Vec<_>>()
    };
    let a = run(7);
    assert_eq!(a, run(7), "the same seed gives the same branches");
    let distinct: std::collections::HashSet<&Vec<u32>> = a.iter().collect();
    assert!(distinct.len() >= 3, "branches with their own seeds differ: {a:?}");
    assert_ne!(a, run(8), "another seed gives other branches");
    // Branch 0 draws with the request's seed, exactly as a single sequence does.
    let mut s = m.session(prompt.len() + 10).unwrap();
    assert_eq!(a[0], s.generate(&prompt, &sampling(7), |_| {}).unwrap().tokens);
}

#[test]
fn bad_requests_are_refused_while_others_carry_on() {
    let m = model();
    let mut engine =
        Engine::new(m.decoder().clone(), EngineOptions { kv_tokens: 256, page_size: 16, max_batch: 4 }).unwrap();
    let prompt = m.prompt_ids("The capital of France is", false).unwrap();
    let good = engine.submit(Request::new(prompt.clone(), greedy(3))).unwrap();
    let refused = |r: Request| engine_err(m.decoder().clone(), r);
    assert!(refused(Request { branches: 0, ..Request::new(prompt.clone(), greedy(3)) }).contains("0 branches"));
    assert!(refused(Request { branches: 5, ..Request::new(prompt.clone(), greedy(3)) }).contains("batch of 4"));
    assert!(refused(Request::new(prompt.clone(), greedy(1000))).contains("KV pages"));
    assert!(refused(Request::new(prompt.clone(), greedy(usize::MAX))).contains("KV pages"));
    assert!(refused(Request::new(vec![], greedy(3))).contains("no tokens"));
    assert!(refused(Request::new(vec![1; 9000], greedy(3))).contains("context"));
    assert!(refused(Request::new(vec![1, 99_999], greedy(3))).contains("vocabulary"));
    // The refusals are kinds a host can match on.
    let kind = |r: Request| {
        let mut e =
            Engine::new(m.decoder().clone(), EngineOptions { kv_tokens: 256, page_size: 16, max_batch: 4 }).unwrap();
        e.submit(r).unwrap_err()
    };
    let e = kind(Request::new(prompt.clone(), greedy(1000)));
    assert!(
        matches!(e, RuntimeError::Refused(RequestError::OverKvBudget { pages, pool_pages: 16, .. }) if pages > 16),
        "{e:?}"
    );
    let e = kind(Request::new(vec![1; 9000], greedy(3)));
    assert!(matches!(e, RuntimeError::Refused(RequestError::TooLong { tokens: 9000, .. })), "{e:?}");
    let e = kind(Request { branches: 5, ..Request::new(prompt.clone(), greedy(3)) });
    assert!(matches!(e, RuntimeError::Refused(RequestError::Branches { branches: 5, max: 4 })), "{e:?}");
    // 16 pages: `good` reserves 1 and `big` 14; `cancelled` (4) waits and is cancelled while
    // waiting; `late` (2) waits until `good` has finished, then runs.
    let big = engine.submit(Request::new(prompt.clone(), greedy(100)).branches(2)).unwrap();
    let cancelled = engine.submit(Request::new(prompt.clone(), greedy(50))).unwrap();
    let first = engine.step().unwrap();
    assert!(first.iter().any(|e| matches!(e, Event::Token { request, .. } if *request == good)));
    assert!(!first.iter().any(|e| matches!(e, Event::Token { request, .. } if *request == cancelled)));
    assert_eq!(engine.waiting(), 1);
    assert!(engine.cancel(cancelled).unwrap());
    assert!(!engine.cancel(cancelled).unwrap());
    let late = engine.submit(Request::new(prompt.clone(), greedy(20))).unwrap();
    let (mut outputs, mut streamed) = (HashMap::new(), HashMap::new());
    drain(&mut engine, &mut outputs, &mut streamed);
    assert!(outputs[&late].timings.queued > outputs[&good].timings.queued, "late waited for room");
    assert_eq!(outputs[&late].branches[0].tokens[..3], outputs[&good].branches[0].tokens[..]);
    let text = m.tokenizer().decode(&outputs[&good].branches[0].tokens, true).unwrap();
    assert!(text.starts_with(" Paris"), "{text:?}");
    assert_eq!(outputs[&big].branches.len(), 2);
    assert!(!outputs.contains_key(&cancelled));
    assert_eq!(engine.kv_bytes(), 0);
}

fn engine_err(decoder: std::sync::Arc<flint_runtime::model::decoder::Decoder>, r: Request) -> String {
    let mut e = Engine::new(decoder, EngineOptions { kv_tokens: 256, page_size: 16, max_batch: 4 }).unwrap();
    e.submit(r).unwrap_err().to_string()
}

/// The tokens of every request, stepping one step at a time; `on_step` sees each step's events.
fn steps_until_idle(engine: &mut Engine, mut on_step: impl FnMut(&[Event])) -> HashMap<RequestId, Vec<u32>> {
    let mut out = HashMap::new();
    while !engine.is_idle() {
        let events = engine.step().unwrap();
        on_step(&events);
        for e in events {
            match e {
                Event::Finished { request, output } => {
                    out.insert(request, output.branches[0].tokens.clone());
                }
                Event::Failed { request, error } => panic!("request {request:?} failed: {error}"),
                Event::Token { .. } => {}
            }
        }
    }
    out
}

/// A long prompt joins in chunks (64 tokens a step here) while another sequence decodes, which
/// gets its tokens between the chunks instead of waiting for the whole prompt; both answers
/// equal the same requests run alone (the long one prefilled in the same chunks).
#[test]
fn a_long_prompt_joins_in_chunks_while_others_decode() {
    let m = model();
    let opts = EngineOptions { kv_tokens: 2048, page_size: 16, max_batch: 4 };
    let mut engine = Engine::new(m.decoder().clone(), opts).unwrap().with_prefill_chunk(64);
    let short = m.prompt_ids(PROMPTS[1], false).unwrap();
    let long: Vec<u32> = (0..16).flat_map(|_| m.prompt_ids(PROMPTS[15], false).unwrap()).collect();
    assert!(long.len() > 3 * 64, "{} tokens", long.len());
    let a = engine.submit(Request::new(short.clone(), greedy(40))).unwrap();
    engine.step().unwrap();
    engine.step().unwrap();
    let b = engine.submit(Request::new(long.clone(), greedy(6))).unwrap();
    let mut waiting_steps_with_a_token = 0;
    let mut b_started = false;
    let tokens = steps_until_idle(&mut engine, |events| {
        if events.iter().any(|e| matches!(e, Event::Token { request, .. } if *request == b)) {
            b_started = true;
        }
        if !b_started && events.iter().any(|e| matches!(e, Event::Token { request, .. } if *request == a)) {
            waiting_steps_with_a_token += 1;
        }
    });
    assert!(
        waiting_steps_with_a_token >= 3,
        "the running sequence decoded in {waiting_steps_with_a_token} steps while the long prompt joined"
    );
    assert_eq!(tokens[&a], alone(&short, &greedy(40)));
    let mut s = m.session(long.len() + 6).unwrap().with_prefill_chunk(64);
    assert_eq!(tokens[&b], s.generate(&long, &greedy(6), |_| {}).unwrap().tokens);
}

/// When the head of the queue does not fit in the KV pool, a small request behind it goes
/// first; the head is served when pages free up.
#[test]
fn a_small_request_passes_a_head_that_does_not_fit() {
    let m = model();
    // 6 pages of 16 tokens: the running request holds 2, the head needs 5, the small one 1.
    let mut engine =
        Engine::new(m.decoder().clone(), EngineOptions { kv_tokens: 96, page_size: 16, max_batch: 4 }).unwrap();
    let p = m.prompt_ids(PROMPTS[0], false).unwrap();
    assert!(p.len() <= 8, "{} prompt tokens", p.len());
    let running = engine.submit(Request::new(p.clone(), greedy(24))).unwrap();
    engine.step().unwrap();
    let head = engine.submit(Request::new(p.clone(), greedy(60))).unwrap();
    let small = engine.submit(Request::new(p.clone(), greedy(8))).unwrap();
    let mut first: Vec<RequestId> = Vec::new();
    let tokens = steps_until_idle(&mut engine, |events| {
        for e in events {
            if let Event::Token { request, .. } = e
                && !first.contains(request)
            {
                first.push(*request);
            }
        }
    });
    let at = |id| first.iter().position(|r| *r == id).unwrap();
    assert!(
        at(small) < at(head),
        "order of first tokens: {first:?} (running {running:?}, head {head:?}, small {small:?})"
    );
    assert_eq!(tokens[&head], alone(&p, &greedy(60)));
    assert_eq!(tokens[&small], alone(&p, &greedy(8)));
}

/// A host keeps engines in shared state and runs them on worker threads: an engine made by
/// `Model::engine` owns what it needs (`'static`, `Send`), and a contemplating request is one
/// engine call, its vote in the output.
#[test]
fn an_engine_runs_on_a_worker_thread_and_votes() {
    let m = model();
    let prompt = m.prompt_ids("Question: what is 3 + 5? Answer:", false).unwrap();
    let mut engine = m.engine(EngineOptions { kv_tokens: 1024, page_size: 16, max_batch: 4 }).unwrap();
    let req = Request::new(prompt.clone(), greedy(8)).contemplate(3);
    let worker = std::thread::spawn(move || {
        let id = engine.submit(req).unwrap();
        let (mut outputs, mut streamed) = (HashMap::new(), HashMap::new());
        drain(&mut engine, &mut outputs, &mut streamed);
        (engine, outputs.remove(&id).unwrap())
    });
    let (engine, out) = worker.join().unwrap();
    assert_eq!(engine.kv_bytes(), 0);
    let want = alone(&prompt, &greedy(8));
    let text = m.tokenizer().decode(&want, true).unwrap();
    let vote = out.vote.as_ref().expect("a contemplating request is voted on");
    // Greedy branches are equal: one answer with all three votes, shown from the first branch.
    assert_eq!(vote.answer, flint_runtime::reasoning::final_answer(&text), "{text:?}");
    assert_eq!((vote.tally.len(), vote.tally[0].votes, vote.chosen), (1, 3, 0), "{vote:?}");
    assert_eq!(out.chosen().unwrap().tokens, want);
    // A plain request has no vote.
    let mut engine = m.engine(EngineOptions { kv_tokens: 256, page_size: 16, max_batch: 4 }).unwrap();
    let id = engine.submit(Request::new(prompt.clone(), greedy(2)).branches(2)).unwrap();
    let (mut outputs, mut streamed) = (HashMap::new(), HashMap::new());
    drain(&mut engine, &mut outputs, &mut streamed);
    assert_eq!(outputs[&id].vote, None);
    // An engine over a bare decoder has no tokenizer to read answers with: voting is refused.
    let e = engine_err(m.decoder().clone(), Request::new(prompt, greedy(2)).contemplate(2));
    assert!(e.contains("tokenizer"), "{e}");
    // A session moves to another thread the same way.
    let mut s = m.session(64).unwrap();
    let ids = m.prompt_ids("Water boils at", false).unwrap();
    let got = std::thread::spawn(move || s.generate(&ids, &greedy(4), |_| {}).unwrap().tokens).join().unwrap();
    assert_eq!(got, alone(&m.prompt_ids("Water boils at", false).unwrap(), &greedy(4)));
}

/// What `examples/host_frames.rs` does: a host creates its own wgpu device, draws a frame with
/// it, and between frames has flint's engine advance a model loaded onto that device by one
/// step; the tokens are those of flint on its own device.
#[test]
fn a_host_that_owns_the_device_runs_a_model_between_its_frames() {
    use flint_runtime::gpu::{Device, wgpu};
    let (adapter, device, queue) = host::device();
    let host_errors = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = host_errors.clone();
    device.on_uncaptured_error(std::sync::Arc::new(move |_| {
        seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }));
    let dev = Device::from_wgpu(device.clone(), queue.clone(), &adapter.get_info());
    let path = flint_runtime::fetch::resolve(Some("smollm2-135m"), &mut |_| {}).unwrap();
    let hosted = flint_runtime::model::Model::load(&dev, &path).unwrap();
    let mut engine = hosted.engine(EngineOptions { kv_tokens: 1024, page_size: 16, max_batch: 4 }).unwrap();
    let prompts: Vec<Vec<u32>> = PROMPTS[..2].iter().map(|p| hosted.prompt_ids(p, false).unwrap()).collect();
    let ids: Vec<RequestId> =
        prompts.iter().map(|p| engine.submit(Request::new(p.clone(), greedy(6))).unwrap()).collect();
    let view = host::frame(&device);
    let (mut frames, mut outputs) = (0, HashMap::new());
    while !engine.is_idle() {
        let mut enc = device.create_command_encoder(&Default::default());
        host::draw(&mut enc, &view, wgpu::Color::GREEN);
        queue.submit([enc.finish()]);
        for e in engine.step().unwrap() {
            match e {
                Event::Finished { request, output } => {
                    outputs.insert(request, output);
                }
                Event::Failed { error, .. } => panic!("{error}"),
                Event::Token { .. } => {}
            }
        }
        frames += 1;
        assert!(frames < 100, "the engine does not finish");
    }
    // The first frame prefills and steps once; each later frame steps once.
    assert_eq!(frames, 5, "a token per request per frame");
    for (id, p) in ids.iter().zip(&prompts) {
        assert_eq!(outputs[id].branches[0].tokens, alone(p, &greedy(6)));
    }
    assert_eq!(host_errors.load(std::sync::atomic::Ordering::SeqCst), 0);
}
