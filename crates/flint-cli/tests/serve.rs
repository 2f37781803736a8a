//! `flint serve` from the outside: the binary started on a loopback port, spoken to over HTTP as
//! a client would (a small HTTP/1.1 client here; the `openai` Python package in
//! `openai_client.py` when it is installed). The models are the one-layer Llama seed of the GGUF
//! fuzz corpus (context 64) and the tiny Idefics3 fixture.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const FLINT: &str = env!("CARGO_BIN_EXE_flint");

fn seed_model() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/gguf/llama-q4_1.gguf").to_string_lossy().into()
}

/// A `flint serve` process, killed when dropped; a [`Client`] of it.
struct Server {
    child: Child,
    client: Client,
}

impl std::ops::Deref for Server {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

/// Speaks HTTP/1.1 to a server, one connection per request.
#[derive(Clone)]
struct Client {
    addr: String,
}

impl Server {
    fn start(model: &str, extra: &[&str]) -> Server {
        let mut child = Command::new(FLINT)
            .args(["serve", "--model", model, "--port", "0"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("flint serve starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let addr = line
            .split("http://")
            .nth(1)
            .and_then(|r| r.split('/').next())
            .unwrap_or_else(|| panic!("flint serve said {line:?}"))
            .to_string();
        Server { child, client: Client { addr } }
    }
}

impl Client {
    fn post(&self, path: &str, body: &Value) -> Reply {
        self.request("POST", path, &body.to_string(), &[])
    }

    fn get(&self, path: &str) -> Reply {
        self.request("GET", path, "", &[])
    }

    /// One request on its own connection; the whole response.
    fn request(&self, method: &str, path: &str, body: &str, headers: &[(&str, &str)]) -> Reply {
        let mut s = TcpStream::connect(&self.addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(300))).unwrap();
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.addr,
            body.len()
        );
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        s.write_all(head.as_bytes()).unwrap();
        // A body over the server's limit may be refused before it is all sent.
        let _ = s.write_all(body.as_bytes());
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).expect("a response, not a dropped connection");
        Reply::parse(&raw)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Reply {
    status: u16,
    body: String,
}

impl Reply {
    fn parse(raw: &[u8]) -> Reply {
        let text = String::from_utf8_lossy(raw).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no HTTP head in {text:?}"));
        let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status");
        let body =
            if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(body) } else { body.into() };
        Reply { status, body }
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    /// The `data:` events of a server-sent-event stream.
    fn events(&self) -> Vec<String> {
        self.body.lines().filter_map(|l| l.strip_prefix("data: ")).map(str::to_string).collect()
    }
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        body = &rest[n + 2..];
    }
    out
}

fn ids(choice: &Value) -> Vec<u64> {
    choice["token_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect()
}

fn chat(text: &str, extra: Value) -> Value {
    let mut v = json!({"messages": [{"role": "user", "content": text}], "max_tokens": 20});
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    v
}

#[test]
fn chat_and_completions_answer_in_openai_form_and_branches_equal_greedy() {
    let srv = Server::start(&seed_model(), &[]);
    assert_eq!(srv.get("/health").json()["status"], "ok");
    let models = srv.get("/v1/models").json();
    assert_eq!(models["data"][0]["id"], "llama-q4_1");

    // A plain chat answer, greedy by default, with log-probabilities.
    let one = srv.post("/v1/chat/completions", &chat("ab bc", json!({"logprobs": true, "max_tokens": 30})));
    assert_eq!(one.status, 200, "{}", one.body);
    let one = one.json();
    assert_eq!(one["object"], "chat.completion");
    let c = &one["choices"][0];
    assert_eq!(c["message"]["role"], "assistant");
    let greedy = ids(c);
    assert!(!greedy.is_empty(), "{one}");
    assert_eq!(c["logprobs"]["content"].as_array().unwrap().len(), greedy.len());
    assert_eq!(one["usage"]["completion_tokens"], greedy.len());
    assert!(one["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
    assert!(matches!(c["finish_reason"].as_str(), Some("stop" | "length")));

    // n = 4 at temperature 0: four branches of one prefill, each the greedy answer.
    let four =
        srv.post("/v1/chat/completions", &chat("ab bc", json!({"n": 4, "temperature": 0, "max_tokens": 30}))).json();
    let choices = four["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 4);
    for (i, c) in choices.iter().enumerate() {
        assert_eq!(c["index"], i);
        assert_eq!(ids(c), greedy, "branch {i} differs from greedy");
    }

    // The same answer streamed: the deltas put together are the text, in order, then [DONE].
    let streamed = srv.post(
        "/v1/chat/completions",
        &chat(
            "ab bc",
            json!({"stream": true, "max_tokens": 30,
        "stream_options": {"include_usage": true}}),
        ),
    );
    assert_eq!(streamed.status, 200);
    let events = streamed.events();
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{}", streamed.body);
    let chunks: Vec<Value> = events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"].get(0).and_then(|c| c["delta"]["content"].as_str()).map(str::to_string))
        .collect();
    assert_eq!(text, c["message"]["content"].as_str().unwrap());
    let usage = chunks.last().unwrap();
    assert_eq!(usage["usage"]["completion_tokens"], greedy.len(), "{usage}");
    assert_eq!(chunks.iter().filter(|c| c["choices"].get(0).is_some_and(|c| !c["finish_reason"].is_null())).count(), 1);

    // Completions: text in, text out; the prompt's token ids (as `flint tokenize` gives
    // them) in place of its text give the same tokens.
    let text_one = srv.post("/v1/completions", &json!({"prompt": "ab bc", "max_tokens": 12, "logprobs": 1})).json();
    assert_eq!(text_one["object"], "text_completion");
    let tc = &text_one["choices"][0];
    assert_eq!(tc["logprobs"]["tokens"].as_array().unwrap().len(), ids(tc).len());
    let tokenize =
        Command::new(FLINT).args(["tokenize", "--model", &seed_model(), "--text", "ab bc", "--json"]).output();
    let prompt_ids: Value = serde_json::from_slice(&tokenize.unwrap().stdout).unwrap();
    let by_ids = srv.post("/v1/completions", &json!({"prompt": prompt_ids["ids"], "max_tokens": 12})).json();
    assert_eq!(ids(&by_ids["choices"][0]), ids(tc));

    // Seeded sampling is reproducible.
    let seeded = json!({"prompt": "ab bc", "max_tokens": 12, "n": 2, "seed": 7, "temperature": 0.9});
    let first = srv.post("/v1/completions", &seeded).json();
    assert_eq!(first["choices"].as_array().unwrap().len(), 2);
    let again = srv.post("/v1/completions", &seeded).json();
    assert_eq!(ids(&again["choices"][0]), ids(&first["choices"][0]));
    assert_eq!(ids(&again["choices"][1]), ids(&first["choices"][1]));

    // Reasoning modes: think answers apart from its reasoning; contemplate votes over branches.
    let think = srv.post("/v1/chat/completions", &chat("a b", json!({"mode": "think", "max_tokens": 16})));
    assert_eq!(think.status, 200, "{}", think.body);
    let think = think.json();
    assert!(think["choices"][0]["message"]["content"].is_string());
    // Streamed, the reasoning comes as `reasoning_content` deltas and the answer as `content`
    // deltas, split as the whole answer is.
    let body = chat("a b", json!({"mode": "think", "max_tokens": 16, "stream": true}));
    let (mut thought, mut said) = (String::new(), String::new());
    for e in srv.post("/v1/chat/completions", &body).events().iter().filter(|e| *e != "[DONE]") {
        let v: Value = serde_json::from_str(e).unwrap();
        thought += v["choices"][0]["delta"]["reasoning_content"].as_str().unwrap_or("");
        said += v["choices"][0]["delta"]["content"].as_str().unwrap_or("");
    }
    let message = &think["choices"][0]["message"];
    assert_eq!(said, message["content"].as_str().unwrap());
    assert_eq!(thought, message["reasoning_content"].as_str().unwrap_or(""));
    let cont = srv.post(
        "/v1/chat/completions",
        &chat(
            "a b",
            json!({"mode": "contemplate", "branches": 3,
        "max_tokens": 16, "seed": 1}),
        ),
    );
    assert_eq!(cont.status, 200, "{}", cont.body);
    let cont = cont.json();
    assert_eq!(cont["choices"].as_array().unwrap().len(), 1);
    assert_eq!(cont["flint"]["branches"].as_array().unwrap().len(), 3);
    let effort = srv.post("/v1/chat/completions", &chat("a b", json!({"reasoning_effort": "high", "max_tokens": 8})));
    assert_eq!(effort.json()["flint"]["mode"], "contemplate");
    // Streamed, contemplate sends its one voted choice, whole, with the same vote.
    let body = chat("a b", json!({"mode": "contemplate", "branches": 3, "max_tokens": 16, "seed": 1, "stream": true}));
    let events = srv.post("/v1/chat/completions", &body).events();
    let chunks: Vec<Value> =
        events.iter().filter(|e| *e != "[DONE]").map(|e| serde_json::from_str(e).unwrap()).collect();
    assert_eq!(chunks.len(), 1, "{events:?}");
    assert_eq!(chunks[0]["choices"][0]["index"], 0);
    assert_eq!(chunks[0]["choices"][0]["delta"]["content"], cont["choices"][0]["message"]["content"]);
    assert_eq!(chunks[0]["flint"]["chosen"], cont["flint"]["chosen"]);

    // Metrics speak Prometheus, and the requests above were counted.
    let m = srv.get("/metrics");
    assert_eq!(m.status, 200);
    for name in [
        "flint_queue_depth",
        "flint_sequences_live",
        "flint_kv_pages_used",
        "flint_kv_pages_free",
        "flint_tokens_per_second",
        "flint_request_duration_seconds_bucket",
        "flint_time_to_first_token_seconds_count",
    ] {
        assert!(m.body.contains(name), "no {name} in\n{}", m.body);
    }
    assert!(m.body.contains("flint_http_requests_total{endpoint=\"chat\",status=\"200\"}"), "{}", m.body);
}

#[test]
fn stop_strings_cut_the_text_and_end_the_choice() {
    let srv = Server::start(&seed_model(), &[]);
    // Find a piece of the greedy text, then ask to stop at it.
    let full = srv.post("/v1/completions", &json!({"prompt": "ab", "max_tokens": 40, "temperature": 0})).json();
    let text = full["choices"][0]["text"].as_str().unwrap().to_string();
    let Some(stop) =
        text.char_indices().nth(text.chars().count() / 2).map(|(i, _)| text[i..].chars().take(2).collect::<String>())
    else {
        eprintln!("skipped: the seed model's greedy text is empty ({full}), no stop string to cut at");
        return;
    };
    let cut = srv
        .post("/v1/completions", &json!({"prompt": "ab", "max_tokens": 40, "temperature": 0, "stop": [stop]}))
        .json();
    let c = &cut["choices"][0];
    let at = text.find(&stop).unwrap();
    assert_eq!(c["text"].as_str().unwrap(), &text[..at], "stop {stop:?} in {text:?}");
    assert_eq!(c["finish_reason"], "stop");
    // Streamed, the same cut, and nothing of the stop string is sent.
    let s = srv.post(
        "/v1/completions",
        &json!({"prompt": "ab", "max_tokens": 40, "temperature": 0, "stop": stop,
        "stream": true}),
    );
    let got: String = s
        .events()
        .iter()
        .filter(|e| *e != "[DONE]")
        .map(|e| serde_json::from_str::<Value>(e).unwrap()["choices"][0]["text"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(got, &text[..at]);
    // Two sampled branches with a stop string: each streamed choice equals its whole answer.
    let body = json!({"prompt": "ab", "max_tokens": 40, "temperature": 0.9, "seed": 3, "n": 2, "stop": [stop]});
    let whole = srv.post("/v1/completions", &body).json();
    let mut sb = body.clone();
    sb["stream"] = json!(true);
    let mut parts = [String::new(), String::new()];
    for e in srv.post("/v1/completions", &sb).events().iter().filter(|e| *e != "[DONE]") {
        let v: Value = serde_json::from_str(e).unwrap();
        let c = &v["choices"][0];
        parts[c["index"].as_u64().unwrap() as usize].push_str(c["text"].as_str().unwrap_or(""));
    }
    for (i, p) in parts.iter().enumerate() {
        assert_eq!(p, whole["choices"][i]["text"].as_str().unwrap(), "choice {i}");
        assert!(!p.contains(&stop), "choice {i} holds the stop string: {p:?}");
    }
}

#[test]
fn bad_requests_get_the_right_status_and_an_error_object() {
    let srv = Server::start(&seed_model(), &["--max-body-bytes", "4096", "--max-tokens", "50"]);
    let cases: Vec<(&str, String, u16, &str)> = vec![
        ("not JSON", "{\"messages\": [".into(), 400, "not valid JSON"),
        ("no messages", json!({"messages": []}).to_string(), 400, "no messages"),
        ("messages not a list", json!({"messages": 3}).to_string(), 400, "malformed"),
        ("n 0", chat("a", json!({"n": 0})).to_string(), 400, "n is 0"),
        ("n over the batch", chat("a", json!({"n": 1000})).to_string(), 400, "batch"),
        ("max_tokens over the limit", chat("a", json!({"max_tokens": 51})).to_string(), 400, "limit of 50"),
        ("temperature 5", chat("a", json!({"temperature": 5})).to_string(), 400, "outside 0 to 2"),
        ("top_p 0", chat("a", json!({"top_p": 0})).to_string(), 400, "top_p"),
        ("a negative seed", chat("a", json!({"seed": -1})).to_string(), 400, "seed"),
        ("an unknown mode", chat("a", json!({"mode": "ponder"})).to_string(), 400, "unknown mode"),
        ("an unknown role", json!({"messages": [{"role": "robot", "content": "a"}]}).to_string(), 400, "robot"),
        ("top_logprobs", chat("a", json!({"logprobs": true, "top_logprobs": 3})).to_string(), 400, "top_logprobs"),
        ("penalties", chat("a", json!({"presence_penalty": 1.0})).to_string(), 400, "penalties"),
        ("another model", chat("a", json!({"model": "gpt-9"})).to_string(), 404, "not served here"),
        ("an image for a text model", json!({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}, {"type": "text", "text": "a"}]}]})
            .to_string(), 400, "text-only"),
        ("audio for a model without an audio tower", json!({"messages": [{"role": "user", "content": [
            {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}, {"type": "text", "text": "a"}]}]})
            .to_string(), 400, "no audio tower"),
        ("a prompt over the context", chat(&"ab ".repeat(200), json!({})).to_string(), 400, "context_length_exceeded"),
        ("a body over the limit", chat(&"a".repeat(8000), json!({})).to_string(), 413, "over the limit"),
    ];
    for (name, body, status, says) in cases {
        let r = srv.request("POST", "/v1/chat/completions", &body, &[]);
        assert_eq!(r.status, status, "{name}: {}", r.body);
        let v = r.json();
        let text = v.to_string();
        assert!(v["error"]["message"].is_string(), "{name}: {text}");
        assert!(text.contains(says), "{name}: the error does not say {says:?}: {text}");
    }
    let r = srv.post("/v1/completions", &json!({"prompt": {"x": 1}}));
    assert_eq!(r.status, 400, "{}", r.body);
    let r = srv.post("/v1/completions", &json!({"prompt": "a", "echo": true}));
    assert_eq!(r.status, 400, "{}", r.body);
    // Refused by the engine (a token outside the vocabulary), streamed or not: a 400 either way.
    for stream in [false, true] {
        let r = srv.post("/v1/completions", &json!({"prompt": [999_999_999u32], "max_tokens": 2, "stream": stream}));
        assert_eq!(r.status, 400, "stream {stream}: {}", r.body);
        assert!(r.json()["error"]["message"].as_str().unwrap().contains("outside the vocabulary"), "{}", r.body);
    }
    // `null` for a boolean is false, as OpenAI's API takes it.
    let r = srv.post("/v1/completions", &json!({"prompt": "ab", "max_tokens": 2, "stream": null, "echo": null}));
    assert_eq!(r.status, 200, "{}", r.body);
    let r = srv.get("/v2/nothing");
    assert_eq!(r.status, 404);
    assert!(r.json()["error"]["message"].is_string());
    let r = srv.get("/v1/chat/completions");
    assert_eq!(r.status, 405);
    assert!(r.json()["error"]["message"].is_string());
    // The server is still well after all of that.
    assert_eq!(srv.post("/v1/completions", &json!({"prompt": "ab", "max_tokens": 4})).status, 200);
}

/// A request whose KV need is larger than the engine's whole pool is refused by kind.
#[test]
fn a_request_over_the_kv_pool_is_a_400_with_its_code() {
    // One page of 64 tokens: two branches need two.
    let srv = Server::start(&seed_model(), &["--kv-tokens", "64"]);
    let r = srv.post("/v1/completions", &json!({"prompt": "ab", "max_tokens": 8, "n": 2}));
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.json()["error"]["code"], "kv_budget_exceeded", "{}", r.body);
    assert_eq!(srv.post("/v1/completions", &json!({"prompt": "ab", "max_tokens": 8})).status, 200);
}

#[test]
fn an_api_key_guards_everything_but_health() {
    let srv = Server::start(&seed_model(), &["--api-key", "sekrit"]);
    assert_eq!(srv.get("/health").status, 200);
    let body = chat("a", json!({"max_tokens": 2})).to_string();
    let none = srv.request("POST", "/v1/chat/completions", &body, &[]);
    assert_eq!(none.status, 401);
    assert_eq!(none.json()["error"]["code"], "invalid_api_key");
    let wrong = srv.request("POST", "/v1/chat/completions", &body, &[("Authorization", "Bearer nope")]);
    assert_eq!(wrong.status, 401);
    assert_eq!(srv.request("GET", "/v1/models", "", &[]).status, 401);
    assert_eq!(srv.request("GET", "/metrics", "", &[]).status, 401);
    let right = srv.request("POST", "/v1/chat/completions", &body, &[("Authorization", "Bearer sekrit")]);
    assert_eq!(right.status, 200, "{}", right.body);
}

/// 64 clients at once, mixed lengths, modes and sampling: every request is answered (or, past
/// the concurrency limit, refused with 429), none lost, and each answer equals the same request
/// sent alone afterwards.
#[test]
fn sixty_four_concurrent_clients_are_all_answered_as_alone() {
    let srv = Server::start(&seed_model(), &["--kv-tokens", "512", "--max-batch", "16"]);
    let request = |i: usize| -> (&'static str, Value) {
        let prompt = ["ab", "abc bc", "a", "bc ab ab c"][i % 4];
        let temperature = if i.is_multiple_of(3) { 0.0 } else { 0.8 };
        let max_tokens = 1 + (i * 7) % 40;
        match i % 4 {
            0 => (
                "/v1/completions",
                json!({"prompt": prompt, "max_tokens": max_tokens, "temperature": temperature, "seed": i}),
            ),
            1 => (
                "/v1/chat/completions",
                chat(
                    prompt,
                    json!({"max_tokens": max_tokens, "n": 1 + i % 3,
                "temperature": temperature, "seed": i}),
                ),
            ),
            2 => (
                "/v1/chat/completions",
                chat(
                    prompt,
                    json!({"max_tokens": max_tokens, "mode": "contemplate",
                "branches": 2, "seed": i}),
                ),
            ),
            _ => (
                "/v1/chat/completions",
                chat(
                    prompt,
                    json!({"max_tokens": max_tokens, "stream": i % 8 == 3,
                "temperature": temperature, "seed": i}),
                ),
            ),
        }
    };
    let answer_of = |path: &str, r: &Reply| -> Value {
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        if r.body.starts_with("data: ") {
            // A stream: its text per choice.
            let mut text = String::new();
            for e in r.events().iter().filter(|e| *e != "[DONE]") {
                let v: Value = serde_json::from_str(e).unwrap();
                if let Some(t) = v["choices"].get(0).and_then(|c| c["delta"]["content"].as_str()) {
                    text.push_str(t);
                }
            }
            json!(text)
        } else {
            let v = r.json();
            json!(v["choices"].as_array().unwrap().iter().map(ids).collect::<Vec<_>>())
        }
    };
    let start = Instant::now();
    let handles: Vec<_> = (0..64)
        .map(|i| {
            let (path, body) = request(i);
            let addr = srv.addr.clone();
            std::thread::spawn(move || {
                let t = Instant::now();
                let r = Client { addr }.post(path, &body);
                (r, t.elapsed())
            })
        })
        .collect();
    let mut results = Vec::new();
    for h in handles {
        results.push(h.join().expect("a client thread"));
    }
    let wall = start.elapsed();
    let mut lat: Vec<Duration> = results.iter().map(|(_, t)| *t).collect();
    lat.sort();
    eprintln!(
        "64 concurrent requests in {wall:?}: p50 {:?}, p99 {:?}, {:.1} requests/s",
        lat[31],
        lat[63],
        64.0 / wall.as_secs_f64()
    );
    for (i, (r, _)) in results.iter().enumerate() {
        let (path, body) = request(i);
        let together = answer_of(path, r);
        let alone = answer_of(path, &srv.post(path, &body));
        assert_eq!(together, alone, "request {i} among 64 and alone: {body}");
    }
}

#[test]
fn a_client_that_disconnects_frees_its_request_and_shutdown_finishes_streams() {
    let srv = Server::start(&seed_model(), &[]);
    // Ask for a long stream, read its first event, hang up.
    {
        let body = json!({"prompt": "ab", "max_tokens": 60, "stream": true, "stop": ["zzzz"]}).to_string();
        let mut s = TcpStream::connect(&srv.addr).unwrap();
        write!(s, "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
        let mut buf = [0u8; 64];
        let _ = s.read(&mut buf).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let m = srv.get("/metrics").body;
        let gauge = |name: &str| -> f64 {
            m.lines().find_map(|l| l.strip_prefix(&format!("{name} "))).and_then(|v| v.parse().ok()).unwrap_or(-1.0)
        };
        if gauge("flint_requests_in_system") == 0.0 && gauge("flint_kv_pages_used") == 0.0 {
            break;
        }
        assert!(Instant::now() < deadline, "the request was not freed:\n{m}");
        std::thread::sleep(Duration::from_millis(50));
    }

    // SIGTERM while a stream runs: the stream still ends with [DONE], the process exits 0.
    let addr = srv.addr.clone();
    let streaming = std::thread::spawn(move || {
        Client { addr }
            .post("/v1/completions", &json!({"prompt": "ab", "max_tokens": 60, "stream": true, "temperature": 0.5}))
    });
    std::thread::sleep(Duration::from_millis(300));
    let mut srv = srv;
    let pid = srv.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let r = streaming.join().unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.events().last().map(String::as_str), Some("[DONE]"), "{}", r.body);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = srv.child.try_wait().unwrap() {
            assert!(status.success(), "flint serve exited with {status}");
            break;
        }
        assert!(Instant::now() < deadline, "flint serve did not stop after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An image as a data URL on the tiny Idefics3 fixture gives the tokens `flint generate` gives
/// for the same image and question.
#[test]
fn an_image_request_equals_flint_generate() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/idefics3");
    let model = dir.join("tiny-a").to_string_lossy().into_owned();
    let image = dir.join("tiny-a.image1.png");
    let question = "What is in this image?";
    let out = Command::new(FLINT)
        .args(["generate", "--model", &model, "--image", &image.to_string_lossy(), "--prompt", question, "--chat"])
        .args(["--max-tokens", "12", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let native: Value = serde_json::from_slice(&out.stdout).unwrap();
    let srv = Server::start(&model, &[]);
    use base64::Engine as _;
    let url = format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(std::fs::read(&image).unwrap())
    );
    let r = srv.post(
        "/v1/chat/completions",
        &json!({"max_tokens": 12, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": question}]}]}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let served: Vec<u64> = ids(&r.json()["choices"][0]);
    let native: Vec<u64> = native["generated_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    assert_eq!(served, native);
    // A file path is refused unless the server allows local files.
    let r = srv.post(
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": image.to_string_lossy()}}, {"type": "text", "text": "a"}]}]}),
    );
    assert_eq!(r.status, 400);
    assert!(r.body.contains("allow-local-files"), "{}", r.body);
}

/// A WAV clip as OpenAI's `input_audio` on the tiny Qwen2-Audio fixture gives the tokens
/// transformers gives (and `flint generate --audio` gives) for the same clip and question; an
/// mp3, bad base64 and a file that is not WAV are refused with a 400 naming the part.
#[test]
fn an_audio_request_equals_transformers() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
    let model = dir.join("qwen2-audio/a").to_string_lossy().into_owned();
    let wav = std::fs::read(dir.join("audio/fox.16k.wav")).unwrap();
    let expected = std::fs::read(dir.join("qwen2-audio/a.expected.safetensors")).unwrap();
    let greedy = safetensors::SafeTensors::deserialize(&expected).unwrap().tensor("greedy").unwrap().data().to_vec();
    let greedy: Vec<u64> = greedy.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap()) as u64).collect();
    let srv = Server::start(&model, &[]);
    use base64::Engine as _;
    let clip = |data: String, format: &str| {
        json!({"max_tokens": 8, "messages": [{"role": "user", "content": [
            {"type": "input_audio", "input_audio": {"data": data, "format": format}},
            {"type": "text", "text": "What does the speaker say?"}]}]})
    };
    let r = srv.post("/v1/chat/completions", &clip(base64::engine::general_purpose::STANDARD.encode(&wav), "wav"));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(ids(&r.json()["choices"][0]), greedy);
    for (data, format, want) in [
        ("AAAA".to_string(), "mp3", "flint reads wav"),
        ("not base64!".to_string(), "wav", "not valid base64"),
        (base64::engine::general_purpose::STANDARD.encode(b"RIFF....WAVEjunk"), "wav", "input_audio"),
    ] {
        let r = srv.post("/v1/chat/completions", &clip(data, format));
        assert_eq!(r.status, 400, "{format}: {}", r.body);
        assert!(r.body.contains(want), "{}", r.body);
    }
}

/// The `openai` Python package against the server, when it is installed (`.ci/run` installs it).
#[test]
fn the_openai_python_client_works_against_it() {
    let has = Command::new("python3").args(["-c", "import openai"]).status().is_ok_and(|s| s.success());
    if !has {
        eprintln!("skipped: the openai Python package is not installed (pip install openai)");
        return;
    }
    let srv = Server::start(&seed_model(), &["--api-key", "k"]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/openai_client.py");
    let out = Command::new("python3")
        .arg(&script)
        .env("FLINT_URL", format!("http://{}/v1", srv.addr))
        .env("FLINT_KEY", "k")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

/// Past `--max-concurrent` requests in the system, the rest are refused with 429 and the
/// rate-limit error object, never dropped; the admitted ones are answered.
#[test]
fn requests_past_the_concurrency_limit_get_429() {
    let srv = Server::start(&seed_model(), &["--max-concurrent", "2"]);
    let handles: Vec<_> = (0..12)
        .map(|i| {
            let c = srv.client.clone();
            std::thread::spawn(move || {
                c.post(
                    "/v1/completions",
                    &json!({"prompt": "ab", "max_tokens": 50, "temperature": 0.8, "seed": i,
                    "stop": ["never said"]}),
                )
            })
        })
        .collect();
    let replies: Vec<Reply> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let ok = replies.iter().filter(|r| r.status == 200).count();
    let limited: Vec<&Reply> = replies.iter().filter(|r| r.status == 429).collect();
    assert_eq!(ok + limited.len(), 12, "{:?}", replies.iter().map(|r| (r.status, &r.body)).collect::<Vec<_>>());
    assert!(ok >= 1 && !limited.is_empty(), "{ok} answered, {} refused", limited.len());
    for r in limited {
        assert_eq!(r.json()["error"]["code"], "rate_limit_exceeded", "{}", r.body);
    }
}

/// An engine that cannot be made (a KV pool no device holds) is an error at start, naming
/// why, not a server whose `/health` says ok while every request fails.
#[test]
fn an_engine_that_cannot_be_made_stops_the_server_at_start() {
    let out = Command::new(FLINT)
        .args(["serve", "--model", &seed_model(), "--port", "0", "--kv-tokens", "1073741824"])
        .stdin(Stdio::null())
        .output()
        .expect("flint serve runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("the engine could not be made"), "{stderr}");
    assert!(out.stdout.is_empty(), "no address was announced: {:?}", String::from_utf8_lossy(&out.stdout));
}

/// Think mode on SmolLM2-135M (fetched on first use), whose replies run to several paragraphs:
/// streamed, the reasoning comes as `reasoning_content` deltas ahead of the answer's `content`
/// deltas, and they join to the whole answer's fields.
#[test]
fn streamed_thinking_sends_reasoning_apart_and_agrees_with_the_whole_answer() {
    let srv = Server::start("smollm2-135m", &[]);
    let ask = |stream: bool| chat("What is 3 + 5?", json!({"mode": "think", "max_tokens": 96, "stream": stream}));
    let whole = srv.post("/v1/chat/completions", &ask(false));
    assert_eq!(whole.status, 200, "{}", whole.body);
    let whole = whole.json();
    let message = &whole["choices"][0]["message"];
    let (reasoning, content) =
        (message["reasoning_content"].as_str().unwrap_or(""), message["content"].as_str().unwrap());
    assert!(!reasoning.is_empty() && !content.is_empty(), "a reply of several paragraphs splits: {message}");
    let events = srv.post("/v1/chat/completions", &ask(true)).events();
    let (mut thought, mut said, mut order) = (String::new(), String::new(), String::new());
    for e in events.iter().filter(|e| *e != "[DONE]") {
        let v: Value = serde_json::from_str(e).unwrap();
        let delta = &v["choices"][0]["delta"];
        if let Some(t) = delta["reasoning_content"].as_str() {
            thought += t;
            order.push('r');
        }
        if let Some(t) = delta["content"].as_str().filter(|t| !t.is_empty()) {
            said += t;
            order.push('c');
        }
    }
    assert_eq!((thought.as_str(), said.as_str()), (reasoning, content));
    assert!(order.starts_with('r') && !order.contains("cr"), "reasoning first, then the answer: {order}");
    assert!(order.matches('r').count() > 1, "the reasoning streams in pieces: {order}");
}
