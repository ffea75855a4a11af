"""Priority classes under overload: time to first token per class, with priorities on and off.

Starts the fake upstream (every answer waits --service-ms before its first byte) and a tollgate
whose one backend takes --concurrency requests at once; then, in each mode, --low clients of a
low-priority key and --high clients of a high-priority key send streamed chat completions back to
back for --seconds (closed loop). "off" is the same run with both keys at the default priority.
Reports, per mode and class, requests answered, TTFT (request sent to the first content event)
p50/p99, and 503s. Standard library only.

With --engine, the backend is the gateway's own local engine on the CPU instead (a checkpoint made
with `tollgate-engine make-tiny` from tests/e2e/slow_model_recipe.json, 44 MB): max_batch is
--concurrency, every request asks for --tokens tokens (ignore_eos), and the engine's scheduler
admits waiting sequences by priority.

usage: priority_bench.py BUILD_DIR [--seconds 20] [--low 32] [--high 4] [--concurrency 4]
                         [--service-ms 200] [--engine] [--tokens 64] [--json OUT]
"""
import argparse
import http.client
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time

ap = argparse.ArgumentParser()
ap.add_argument("build")
ap.add_argument("--seconds", type=float, default=20)
ap.add_argument("--low", type=int, default=32)
ap.add_argument("--high", type=int, default=4)
ap.add_argument("--concurrency", type=int, default=4)
ap.add_argument("--service-ms", type=int, default=200)
ap.add_argument("--engine", action="store_true", help="the backend is the local engine on the CPU")
ap.add_argument("--tokens", type=int, default=64, help="--engine: tokens each request generates")
ap.add_argument("--json")
a = ap.parse_args()


def pct(xs, p):
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def listening(proc):
    for line in proc.stdout:
        m = re.search(r"listening on (http://[0-9.]+:[0-9]+)", line)
        if m:
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
            return m.group(1)
    raise SystemExit("no 'listening on' line from " + " ".join(proc.args))


def one(host, port, key, stats):
    req = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hello there"}]}
    if a.engine:
        req.update({"max_tokens": a.tokens, "ignore_eos": True})
    body = json.dumps(req)
    t0 = time.perf_counter()
    c = http.client.HTTPConnection(host, port, timeout=120)
    try:
        c.request("POST", "/v1/chat/completions", body,
                  {"Authorization": "Bearer " + key, "Content-Type": "application/json"})
        r = c.getresponse()
        if r.status != 200:
            r.read()
            stats["errors"][r.status] = stats["errors"].get(r.status, 0) + 1
            return
        ttft = None
        for line in r:
            if ttft is None and line.startswith(b"data: {") and b'"content"' in line:
                ttft = time.perf_counter() - t0
        if ttft is not None:
            stats["ttft"].append(ttft)
    except OSError as e:
        stats["errors"][type(e).__name__] = stats["errors"].get(type(e).__name__, 0) + 1
    finally:
        c.close()


def run(mode, upstream, work):
    if a.engine:
        backend = (f"{{name: engine, kind: local_engine, checkpoint: {upstream}, max_batch: {a.concurrency}, "
                   f"max_queue: 10000, timeouts: {{first_token: 300s, total: 300s}}}}")
    else:
        backend = (f"{{name: fake, kind: openai, base_url: \"{upstream}/v1\", max_concurrency: {a.concurrency}, "
                   f"max_queue: 10000,\n     queue_timeout: 120s, timeouts: {{total: 300s}}}}")
    low_priority, high_priority = ("low", "high") if mode == "on" else ("normal", "normal")
    cfg = os.path.join(work, f"tollgate-{mode}.yaml")
    with open(cfg, "w") as f:
        f.write(f"""server: {{listen: "127.0.0.1:0", threads: 1, access_log: "off"}}
keys:
  - {{name: batch, key: tg-bench-batch-key-1, priority: {low_priority}}}
  - {{name: chat, key: tg-bench-chat-key-01, priority: {high_priority}}}
backends:
  - {backend}
routes: [{{model: m, targets: [{{backend: {"engine" if a.engine else "fake"}}}]}}]
""")
    gw = subprocess.Popen([os.path.join(a.build, "tollgate"), "serve", "--config", cfg], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
    try:
        url = listening(gw)
        host, port = url[len("http://"):].split(":")
        port = int(port)
        classes = {"low": {"ttft": [], "errors": {}}, "high": {"ttft": [], "errors": {}}}
        stop = time.perf_counter() + a.seconds

        def client(key, stats):
            while time.perf_counter() < stop:
                one(host, port, key, stats)

        threads = [threading.Thread(target=client, args=("tg-bench-batch-key-1", classes["low"]))
                   for _ in range(a.low)]
        for t in threads:
            t.start()
        time.sleep(2 * a.service_ms / 1000)  # the low clients fill the queue first
        highs = [threading.Thread(target=client, args=("tg-bench-chat-key-01", classes["high"]))
                 for _ in range(a.high)]
        for t in highs:
            t.start()
        for t in threads + highs:
            t.join()
        return classes
    finally:
        gw.terminate()
        gw.wait()


def main():
    work = tempfile.mkdtemp()
    if a.engine:
        ck = os.path.join(work, "slow")
        subprocess.run([os.path.join(a.build, "tollgate-engine"), "make-tiny", "--recipe",
                        os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "e2e", "slow_model_recipe.json"),
                        "--out", ck], check=True, stdout=subprocess.DEVNULL)
        results = {mode: run(mode, ck, work) for mode in ("off", "on")}
        report(results, f"local engine on the CPU, max_batch {a.concurrency}, {a.tokens} tokens a request")
        return
    up = subprocess.Popen([os.path.join(a.build, "tollgate-fake-upstream"), "--port", "0", "--delay-ms",
                           str(a.service_ms)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        upstream = listening(up)
        results = {mode: run(mode, upstream, work) for mode in ("off", "on")}
    finally:
        up.terminate()
        up.wait()
    report(results, f"backend max_concurrency {a.concurrency}, upstream first byte after {a.service_ms} ms")


def report(results, backend):
    print(f"{a.low} low + {a.high} high clients, closed loop, {a.seconds:g} s; {backend}")
    print(f"{'priorities':<11}{'class':<7}{'answered':>9}{'TTFT p50 ms':>13}{'TTFT p99 ms':>13}  errors")
    out = {}
    for mode, classes in results.items():
        for name, s in classes.items():
            p50, p99 = pct(s["ttft"], 50), pct(s["ttft"], 99)
            out[f"{mode}/{name}"] = {"answered": len(s["ttft"]), "ttft_p50_s": p50, "ttft_p99_s": p99,
                                     "errors": s["errors"]}
            fmt = lambda x: f"{x * 1000:.0f}" if x is not None else "-"
            print(f"{mode:<11}{name:<7}{len(s['ttft']):>9}{fmt(p50):>13}{fmt(p99):>13}  {s['errors'] or ''}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


main()
