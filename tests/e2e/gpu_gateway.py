"""The gateway serving a local_engine backend on cuda:0, driven over HTTP: whole answers and
streams equal the engine CLI's greedy output on the same GPU, usage is exact, stop strings cut,
a client that leaves cancels its sequence, 64 concurrent clients each get their own answer, and
every KV block is free at the end. Standard library only (the GPU machine has no Node).

usage: gpu_gateway.py GATEWAY_URL KEY REFS_JSON
"""
import http.client
import json
import sys
import threading
import time
import urllib.parse

base, key, refs_path = sys.argv[1], sys.argv[2], sys.argv[3]
refs = json.load(open(refs_path))
url = urllib.parse.urlparse(base)
failures = []


def check(ok, what):
    if not ok:
        failures.append(what)
        print("FAIL:", what, flush=True)


def post(path, body, stream=False):
    c = http.client.HTTPConnection(url.hostname, url.port, timeout=120)
    c.request("POST", path, json.dumps(body), {"Authorization": "Bearer " + key, "Content-Type": "application/json"})
    r = c.getresponse()
    if stream:
        return c, r
    data = r.read()
    c.close()
    return r.status, json.loads(data)


def chat(model, prompt, **kw):
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "temperature": 0, **kw}
    return post("/v1/chat/completions", body)


def stream_chat(model, prompt, **kw):
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}, **kw}
    c, r = post("/v1/chat/completions", body, stream=True)
    text, usage, events = "", None, 0
    for line in r:
        line = line.decode().strip()
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        ev = json.loads(line[6:])
        events += 1
        for ch in ev.get("choices", []):
            text += ch.get("delta", {}).get("content") or ""
        usage = ev.get("usage") or usage
    c.close()
    return text, usage, events


def metrics():
    c = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    c.request("GET", "/metrics")
    return c.getresponse().read().decode()


# Whole answers and streams against the CLI's greedy references (float32 on the same GPU).
for ref in refs:
    status, ans = chat("gpu32", ref["prompt"], max_tokens=24)
    check(status == 200, f"whole answer status {status}")
    got = ans["choices"][0]["message"]["content"]
    check(got == ref["text"], f"whole answer {ref['prompt']!r}: {got!r} != {ref['text']!r}")
    check(ans["usage"]["completion_tokens"] == len(ref["tokens"]), f"usage {ans['usage']} vs {len(ref['tokens'])} tokens")
    text, usage, events = stream_chat("gpu32", ref["prompt"], max_tokens=24)
    check(text == ref["text"], f"stream {ref['prompt']!r}: {text!r} != {ref['text']!r}")
    check(usage is not None and usage["completion_tokens"] == len(ref["tokens"]), f"stream usage {usage}")
    check(events >= 2, "stream sent fewer than two events")

# A stop string cuts the answer before it.
ref = max(refs, key=lambda r: len(r["text"]))
cut = ref["text"][len(ref["text"]) // 2:len(ref["text"]) // 2 + 3]
if cut.strip():
    status, ans = chat("gpu32", ref["prompt"], max_tokens=24, stop=[cut])
    got = ans["choices"][0]["message"]["content"]
    check(got == ref["text"][:ref["text"].find(cut)] and ans["choices"][0]["finish_reason"] == "stop",
          f"stop {cut!r}: {got!r}")

# bf16 serves too (its tokens may differ from float32's; it must answer in full).
status, ans = chat("gpu16", "hello there", max_tokens=16, ignore_eos=True)
check(status == 200 and ans["usage"]["completion_tokens"] == 16, f"bf16 answer {status} {ans.get('usage')}")

# 64 concurrent clients: each gets exactly the answer it gets alone.
prompts = [f"client {i} asks about gateways and engines" for i in range(64)]
alone = {}
for p in prompts[:8]:
    alone[p] = chat("gpu32", p, max_tokens=16)[1]["choices"][0]["message"]["content"]
results = {}


def client(p):
    try:
        results[p] = chat("gpu32", p, max_tokens=16)[1]["choices"][0]["message"]["content"]
    except Exception as e:  # noqa: BLE001 - reported as a failure below
        results[p] = f"error {e}"


t0 = time.time()
threads = [threading.Thread(target=client, args=(p,)) for p in prompts]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(f"64 concurrent clients answered in {time.time() - t0:.2f} s", flush=True)
check(len(results) == 64 and not any(v.startswith("error") for v in results.values()), "a concurrent client failed")
for p in prompts[:8]:
    check(results[p] == alone[p], f"concurrent answer differs for {p!r}")

# A client that leaves mid-stream cancels its sequence.
c, r = post("/v1/chat/completions", {"model": "gpu16", "stream": True, "max_tokens": 4000, "ignore_eos": True,
                                     "messages": [{"role": "user", "content": "go on"}]}, stream=True)
for _ in range(3):
    r.readline()
c.sock.close()
c.close()
deadline = time.time() + 10
while time.time() < deadline:
    m = metrics()
    if 'tollgate_engine_sequences_total{backend="gpu16",outcome="cancelled"} 1' in m:
        break
    time.sleep(0.2)
m = metrics()
check('tollgate_engine_sequences_total{backend="gpu16",outcome="cancelled"} 1' in m, "no cancelled sequence in metrics")

# Nothing leaked: every KV block is free again.
time.sleep(0.5)
m = metrics()
for b in ("gpu32", "gpu16"):
    check(f'tollgate_engine_kv_blocks{{backend="{b}",state="used"}} 0' in m, f"{b}: KV blocks still used")
print("\n".join(l for l in m.splitlines() if l.startswith("tollgate_engine_kv_blocks")), flush=True)

print(f"gpu gateway e2e: {'ok' if not failures else str(len(failures)) + ' failures'}", flush=True)
sys.exit(1 if failures else 0)
