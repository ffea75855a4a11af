"""Closed-loop streaming load against an OpenAI-style endpoint, for the GPU machine (which has no
Node): C clients each send chat completions back to back for a fixed time; prompt and answer
lengths are drawn uniformly from ranges (ShareGPT-like by default). Reports, per concurrency level,
TTFT (request sent to first content token) and TPOT ((last token - first token) / (tokens - 1),
tokens from the answer's usage) p50/p99, output tokens/s over the level's wall time, and errors.
Standard library only.

Prompts are words of three random lowercase letters: with the engine's generated tokenizer
(`tollgate-engine make-tokenizer`) each is two tokens, so a prompt of N tokens is about N/2 words.

usage: gateway_load.py URL KEY MODEL [--clients 1,16,64] [--seconds 15] [--prompt 200-1000]
                       [--answer 100-500] [--seed 1] [--json OUT]
"""
import argparse
import http.client
import json
import random
import statistics
import threading
import time
import urllib.parse

ap = argparse.ArgumentParser()
ap.add_argument("url")
ap.add_argument("key")
ap.add_argument("model")
ap.add_argument("--clients", default="1,16,64")
ap.add_argument("--seconds", type=float, default=15)
ap.add_argument("--prompt", default="200-1000", help="prompt tokens, LO-HI (uniform)")
ap.add_argument("--answer", default="100-500", help="max_tokens, LO-HI (uniform)")
ap.add_argument("--seed", type=int, default=1)
ap.add_argument("--json")
a = ap.parse_args()
url = urllib.parse.urlparse(a.url)


def span(s):
    lo, _, hi = s.partition("-")
    return int(lo), int(hi or lo)


def pct(xs, p):
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def one_request(rng):
    plo, phi = span(a.prompt)
    alo, ahi = span(a.answer)
    words = rng.randint(plo, phi) // 2
    prompt = " ".join("".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(3)) for _ in range(words))
    body = {"model": a.model, "messages": [{"role": "user", "content": prompt}], "stream": True,
            "max_tokens": rng.randint(alo, ahi), "temperature": 0.8, "seed": rng.randint(0, 1 << 30),
            "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    c = http.client.HTTPConnection(url.hostname, url.port, timeout=300)
    try:
        c.request("POST", "/v1/chat/completions", json.dumps(body),
                  {"Authorization": "Bearer " + a.key, "Content-Type": "application/json"})
        r = c.getresponse()
        if r.status != 200:
            return {"error": f"http {r.status}: {r.read()[:200]!r}"}
        first = last = None
        usage = None
        for line in r:
            line = line.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            ev = json.loads(line[6:])
            if any((ch.get("delta") or {}).get("content") for ch in ev.get("choices", [])):
                now = time.perf_counter()
                first = first if first is not None else now
                last = now
            usage = ev.get("usage") or usage
        if first is None or not usage:
            return {"error": "no tokens or no usage"}
        n = usage["completion_tokens"]
        return {"ttft": first - t0, "tpot": (last - first) / (n - 1) if n > 1 else None, "tokens": n,
                "prompt_tokens": usage["prompt_tokens"], "end": time.perf_counter()}
    except Exception as e:  # a failed request is counted, not fatal
        return {"error": type(e).__name__ + ": " + str(e)}
    finally:
        c.close()


report = {"url": a.url, "model": a.model, "prompt": a.prompt, "answer": a.answer, "levels": []}
for clients in [int(x) for x in a.clients.split(",")]:
    results, lock = [], threading.Lock()
    start = time.perf_counter()
    deadline = start + a.seconds

    def client(i):
        rng = random.Random(a.seed * 1000 + clients * 100 + i)
        while time.perf_counter() < deadline:
            r = one_request(rng)
            with lock:
                results.append(r)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    ok = [r for r in results if "error" not in r]
    errors = [r["error"] for r in results if "error" in r]
    ttft = [r["ttft"] for r in ok]
    tpot = [r["tpot"] for r in ok if r["tpot"] is not None]
    level = {"clients": clients, "requests": len(results), "errors": len(errors), "error_samples": errors[:3],
             "wall_s": wall, "output_tokens": sum(r["tokens"] for r in ok),
             "output_tokens_per_s": sum(r["tokens"] for r in ok) / wall,
             "prompt_tokens_mean": statistics.mean(r["prompt_tokens"] for r in ok) if ok else None,
             "ttft_p50_ms": 1e3 * pct(ttft, 50) if ttft else None, "ttft_p99_ms": 1e3 * pct(ttft, 99) if ttft else None,
             "tpot_p50_ms": 1e3 * pct(tpot, 50) if tpot else None, "tpot_p99_ms": 1e3 * pct(tpot, 99) if tpot else None}
    report["levels"].append(level)
    print(json.dumps(level), flush=True)
if a.json:
    json.dump(report, open(a.json, "w"), indent=2)
