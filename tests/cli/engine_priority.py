"""Priority classes end to end: real clients -> tollgate -> its local engine (CPU, a small generated
checkpoint), over real sockets.

1. Saturated: 12 low-priority clients fill a local_engine backend of max_batch 2 (2 run, the rest
   wait in the engine's queue); 3 high-priority clients then arrive and every one of them starts
   before any low one that was still waiting. Every request is answered 200.
2. A full queue sheds from the bottom (max_batch 1, max_queue 2): a high one displaces the oldest
   waiting low one, which gets 503 overloaded with Retry-After at once; a low newcomer to a queue
   holding nothing below it gets the same answer; the high one starts before the low one left.
3. The engine's queue_timeout: requests still waiting after 1 s get 503 with Retry-After, in the
   caller's protocol (OpenAI chat completions: 503 `overloaded`; Anthropic Messages: 529
   `overloaded_error`), while the one running goes on; afterwards the backend serves again.
Nothing is lost: each request is answered 200, or 503/529 with Retry-After.

usage: engine_priority.py BUILD_DIR
"""
import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

build = os.path.abspath(sys.argv[1])
here = os.path.dirname(os.path.abspath(__file__))
LOW, HIGH, NORMAL = "tg-engine-batch-key-0", "tg-engine-chat-key-00", "tg-engine-team-key-00"


def fail(message):
    print("FAIL: " + message)
    sys.exit(1)


def check(cond, message):
    if not cond:
        fail(message)


class request(threading.Thread):
    """One streamed request on its own connection; records when its head came (the first token:
    the engine answers only once it has one) and when it ended."""

    def __init__(self, name, model, key, max_tokens=24, path="/v1/chat/completions"):
        super().__init__(daemon=True)
        self.name, self.path, self.key = name, path, key
        if path == "/v1/messages":
            self.body = {"model": model, "max_tokens": max_tokens, "stream": True,
                         "messages": [{"role": "user", "content": name}]}
        else:
            self.body = {"model": model, "max_tokens": max_tokens, "stream": True, "ignore_eos": True,
                         "temperature": 0, "messages": [{"role": "user", "content": name}]}
        self.status = None
        self.retry_after = None
        self.error = None
        self.t_sent = self.t_head = self.t_end = None
        self.text = b""
        self.conn = None

    def run(self):
        self.t_sent = time.monotonic()
        self.conn = http.client.HTTPConnection(host, port, timeout=120)
        try:
            headers = {"Content-Type": "application/json"}
            headers["x-api-key" if self.path == "/v1/messages" else "Authorization"] = (
                self.key if self.path == "/v1/messages" else "Bearer " + self.key)
            self.conn.request("POST", self.path, json.dumps(self.body), headers)
            r = self.conn.getresponse()
            self.t_head = time.monotonic()
            self.status = r.status
            self.retry_after = r.getheader("retry-after")
            self.text = r.read()
        except (OSError, http.client.HTTPException) as e:
            self.error = e
        finally:
            self.t_end = time.monotonic()
            self.conn.close()

    def leave(self):
        """The client goes away mid-stream."""
        try:
            self.conn.sock.shutdown(socket.SHUT_RDWR)
        except (OSError, AttributeError):
            pass

    def json_error(self):
        try:
            return json.loads(self.text)
        except ValueError:
            fail(f"{self.name}: a body that is not JSON: {self.text[:300]!r}")


def metric(line):
    c = http.client.HTTPConnection(host, port, timeout=10)
    c.request("GET", "/metrics")
    text = c.getresponse().read().decode()
    c.close()
    m = re.search("^" + re.escape(line) + r" ([0-9.e+-]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def wait_for(cond, what, seconds=60):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.01)
    fail("timed out waiting for " + what)


def start(*reqs):
    for r in reqs:
        r.start()
    return list(reqs)


def overloaded(r, status=503, message=None):
    check(r.error is None, f"{r.name}: {r.error}")
    check(r.status == status, f"{r.name}: status {r.status}, expected {status}: {r.text[:300]!r}")
    check(r.retry_after == "1", f"{r.name}: Retry-After {r.retry_after!r}")
    e = r.json_error()
    if status == 529:
        check(e.get("type") == "error" and e["error"]["type"] == "overloaded_error", f"{r.name}: {e}")
    else:
        check(e["error"]["code"] == "overloaded", f"{r.name}: {e}")
    text = e["error"]["message"]
    check(message is None or message in text, f"{r.name}: message {text!r} lacks {message!r}")


def answered(r):
    check(r.error is None, f"{r.name}: {r.error}")
    check(r.status == 200, f"{r.name}: status {r.status}: {r.text[:300]!r}")
    check(b"data: [DONE]" in r.text, f"{r.name}: the stream did not end")


work = tempfile.mkdtemp()
procs = []
try:
    ck = os.path.join(work, "slow")
    subprocess.run([os.path.join(build, "tollgate-engine"), "make-tiny", "--recipe",
                    os.path.join(here, "..", "e2e", "slow_model_recipe.json"), "--out", ck], check=True,
                   stdout=subprocess.DEVNULL)
    cfg = os.path.join(work, "tollgate.yaml")
    with open(cfg, "w") as f:
        f.write(f"""server: {{listen: "127.0.0.1:0", threads: 2, access_log: "off"}}
keys:
  - {{name: batch, key: {LOW}, priority: low}}
  - {{name: chat, key: {HIGH}, priority: high}}
  - {{name: team, key: {NORMAL}}}
backends:
  - {{name: busy, kind: local_engine, checkpoint: {ck}, max_batch: 2, max_queue: 100, queue_timeout: 120s,
     queue_aging: 60s}}
  - {{name: tight, kind: local_engine, checkpoint: {ck}, max_batch: 1, max_queue: 2}}
  - {{name: timed, kind: local_engine, checkpoint: {ck}, max_batch: 1, queue_timeout: 1s, queue_aging: 60s}}
routes:
  - {{model: busy, targets: [{{backend: busy}}]}}
  - {{model: tight, targets: [{{backend: tight}}]}}
  - {{model: timed, targets: [{{backend: timed}}]}}
""")
    log = open(os.path.join(work, "tollgate.log"), "w+")
    gw = subprocess.Popen([os.path.join(build, "tollgate"), "serve", "--config", cfg], stdout=log,
                          stderr=subprocess.STDOUT)
    procs.append(gw)
    for _ in range(600):
        log.seek(0)
        m = re.search(r"listening on http://([0-9.]+):([0-9]+)", log.read())
        if m:
            host, port = m.group(1), int(m.group(2))
            break
        time.sleep(0.05)
    else:
        fail("tollgate did not start")

    # 1. Saturated by low priority, then high priority arrives.
    lows = start(*[request(f"low {i}", "busy", LOW, max_tokens=120) for i in range(12)])
    wait_for(lambda: metric('tollgate_engine_requests_queued{backend="busy"}') >= 8, "8 low requests queued")
    t_high = time.monotonic()
    highs = start(*[request(f"high {i}", "busy", HIGH, max_tokens=120) for i in range(3)])
    for r in lows + highs:
        r.join(120)
    for r in lows + highs:
        answered(r)
    # The low ones that started well after the high ones came had waited in the engine's queue
    # when they came (one that took a place freed while the high ones were on their way may start
    # just after them: it is not counted).
    waited = [r for r in lows if r.t_head > t_high + 0.3]
    check(len(waited) >= 6, f"only {len(waited)} low requests were still waiting: the engine was not saturated")
    last_high = max(r.t_head for r in highs)
    first_waited = min(r.t_head for r in waited)
    print(f"saturated: high waits {[round((r.t_head - r.t_sent) * 1000) for r in highs]} ms; "
          f"{len(waited)} low ones waiting when they came started {round((first_waited - t_high) * 1000)} to "
          f"{round((max(r.t_head for r in waited) - t_high) * 1000)} ms after")
    # A low one admitted in the same engine step as the last high one starts with it: their
    # heads reach the clients in either order, a few ms apart. Earlier than that would be a step
    # before it.
    check(last_high < first_waited + 0.02, "a low request that waited started before a high one "
          f"({round((last_high - t_high) * 1000)} ms > {round((first_waited - t_high) * 1000)} ms)")

    # 2. A full queue sheds from the bottom: one runs (long), two low ones wait; a high one comes.
    running = start(request("tight running", "tight", LOW, max_tokens=2000))[0]
    wait_for(lambda: running.t_head is not None, "the long request to start")
    w1 = start(request("tight low 1", "tight", LOW))[0]
    wait_for(lambda: metric('tollgate_engine_requests_queued{backend="tight"}') >= 1, "low 1 queued")
    w2 = start(request("tight low 2", "tight", LOW))[0]
    wait_for(lambda: metric('tollgate_engine_requests_queued{backend="tight"}') >= 2, "low 2 queued")
    wait_for(lambda: metric('tollgate_engine_queue_waiting{backend="tight",priority="0"}') == 2,
             "both low ones counted waiting at priority 0")
    h = start(request("tight high", "tight", HIGH))[0]
    w1.join(30)
    overloaded(w1, message="higher priority")
    check(running.t_end is None, "the displaced request was answered only after the running one ended")
    refused = start(request("tight low 3", "tight", LOW))[0]
    refused.join(30)
    overloaded(refused, message="queue is full")
    same = start(request("tight normal", "tight", NORMAL))[0]  # displaces low 2, never the high one
    w2.join(30)
    overloaded(w2, message="higher priority")
    check(running.t_end is None, "the running request ended before the queue was tested")
    running.leave()  # its client goes away: the place frees
    for r in (h, same, running):
        r.join(60)
    answered(h)
    answered(same)
    check(h.t_head < same.t_head, "the normal request started before the high one")
    check(running.status == 200, f"the long request got {running.status}")
    print(f"full queue: low 1 displaced {round((w1.t_end - w1.t_sent) * 1000)} ms after it came, "
          f"low 3 refused in {round((refused.t_end - refused.t_sent) * 1000)} ms")

    # 3. queue_timeout: one runs (long); a chat completion and a Messages request wait past 1 s.
    running = start(request("timed running", "timed", LOW, max_tokens=2000))[0]
    wait_for(lambda: running.t_head is not None, "the long request to start")
    late = start(request("timed chat", "timed", NORMAL), request("timed messages", "timed", HIGH, path="/v1/messages"))
    for r in late:
        r.join(30)
    overloaded(late[0], 503, "queue_timeout")
    overloaded(late[1], 529, "queue_timeout")
    for r in late:
        waited_s = r.t_end - r.t_sent
        check(1.0 <= waited_s < 10, f"{r.name}: refused after {waited_s:.2f} s, queue_timeout is 1 s")
    check(running.t_end is None, "the running request ended before the waiting ones timed out")
    print(f"queue_timeout 1 s: refused after {[round((r.t_end - r.t_sent) * 1000) for r in late]} ms")
    running.leave()
    running.join(60)
    after = start(request("timed after", "timed", LOW))[0]
    after.join(60)
    answered(after)

    # Every refusal is counted; nothing failed.
    for backend, n in (("busy", 0), ("tight", 3), ("timed", 2)):
        got = metric(f'tollgate_engine_sequences_total{{backend="{backend}",outcome="overloaded"}}')
        check(got == n, f"{backend}: {got} overloaded, expected {n}")
        check(metric(f'tollgate_engine_sequences_total{{backend="{backend}",outcome="failed"}}') == 0,
              f"{backend}: failed sequences")
    # ... and shows by priority and reason: the two low ones displaced, the low one refused at once,
    # the normal and high ones past queue_timeout.
    expected = {("tight", 0, "displaced"): 2, ("tight", 0, "full"): 1, ("timed", 1, "timeout"): 1,
                ("timed", 2, "timeout"): 1}
    for backend in ("busy", "tight", "timed"):
        for p in range(3):
            for reason in ("full", "displaced", "timeout"):
                got = metric(f'tollgate_engine_shed_total{{backend="{backend}",priority="{p}",reason="{reason}"}}')
                want = expected.get((backend, p, reason), 0)
                check(got == want, f"{backend}: {got} shed at priority {p} ({reason}), expected {want}")
    print("engine_priority: 1 passed, 0 failed")
finally:
    for p in procs:
        p.terminate()
        p.wait()
    shutil.rmtree(work, ignore_errors=True)
