#!/usr/bin/env python3
"""Throughput and latency of `flint serve` at several numbers of concurrent clients, in one run.

    python3 benches/serve.py target/release/flint [--model smollm2-135m] [--clients 1,8,32]
        [--requests 2] [--max-tokens 64] [--adapter vulkan]

Starts the server on a free loopback port, then for each client count runs that many clients at
once, each sending --requests streamed chat requests one after another (greedy, distinct
prompts, --max-tokens each), and prints per level: requests, completion tokens, wall time,
aggregate tokens/s, p50/p99 request latency and time to first token. The last line is the
aggregate speed-up of batching: tokens/s at the most clients over tokens/s at one. Only the
standard library is used.
"""

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
import urllib.request

PROMPTS = [
    "Write a short story about a lighthouse keeper.",
    "Explain how a bicycle stays upright.",
    "List some uses of copper and why.",
    "Describe the water cycle to a child.",
    "What makes bread rise?",
    "Write a poem about autumn leaves.",
    "How do bees make honey?",
    "Why is the sky blue?",
]


def one_request(base, i, max_tokens):
    body = json.dumps({
        "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)] + f" ({i})"}],
        "max_tokens": max_tokens, "temperature": 0, "stream": True,
        "stream_options": {"include_usage": True},
    }).encode()
    req = urllib.request.Request(base + "/chat/completions", data=body, headers={"Content-Type": "application/json"})
    start = time.perf_counter()
    first = None
    tokens = 0
    with urllib.request.urlopen(req, timeout=3600) as r:
        for raw in r:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            ev = json.loads(line[6:])
            if first is None and ev.get("choices") and ev["choices"][0]["delta"].get("content"):
                first = time.perf_counter() - start
            if ev.get("usage"):
                tokens = ev["usage"]["completion_tokens"]
    return time.perf_counter() - start, first if first is not None else float("nan"), tokens


def level(base, clients, per_client, max_tokens, offset):
    results = []
    lock = threading.Lock()

    def client(c):
        for k in range(per_client):
            r = one_request(base, offset + c * per_client + k, max_tokens)
            with lock:
                results.append(r)

    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    lat = sorted(r[0] for r in results)
    ttft = sorted(r[1] for r in results)
    tokens = sum(r[2] for r in results)

    def pct(xs, p):
        return xs[min(len(xs) - 1, int(p * len(xs)))]

    return {
        "clients": clients, "requests": len(results), "tokens": tokens, "wall_s": wall,
        "tokens_per_s": tokens / wall, "p50_s": statistics.median(lat), "p99_s": pct(lat, 0.99),
        "ttft_p50_s": statistics.median(ttft),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("flint")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--clients", default="1,8,32")
    ap.add_argument("--requests", type=int, default=2, help="requests per client, one after another")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--adapter", default="")
    a = ap.parse_args()
    levels = [int(x) for x in a.clients.split(",")]
    srv = subprocess.Popen([a.flint, "serve", "--model", a.model, "--port", "0", "--adapter", a.adapter,
                            "--max-batch", str(max(32, max(levels)))], stdout=subprocess.PIPE, text=True)
    try:
        line = srv.stdout.readline()
        if "http://" not in line:
            sys.exit(f"flint serve did not start: {line!r}")
        base = line.split("on ", 1)[1].split()[0]
        print(f"# {line.strip()}")
        # Warm up: the first steps of each batch size compile their pipelines.
        level(base, max(levels), 1, 4, 10_000)
        rows = []
        for i, n in enumerate(levels):
            r = level(base, n, a.requests, a.max_tokens, i * 1000)
            rows.append(r)
            print(f"{n:>3} clients: {r['requests']:>3} requests, {r['tokens']:>5} tokens in {r['wall_s']:7.1f} s = "
                  f"{r['tokens_per_s']:6.1f} tok/s; latency p50 {r['p50_s']:6.2f} s, p99 {r['p99_s']:6.2f} s; "
                  f"first token p50 {r['ttft_p50_s']:6.2f} s", flush=True)
        print(f"batching speed-up: {rows[-1]['tokens_per_s'] / rows[0]['tokens_per_s']:.2f}x tokens/s at "
              f"{levels[-1]} clients over 1")
        print(json.dumps(rows))
    finally:
        srv.terminate()
        srv.wait(timeout=120)


if __name__ == "__main__":
    main()
