"""CPU a relayed stream event costs the proxy: C clients each stream chat completions through the
proxy from an upstream that answers every request with E events as fast as it can (plus the usage
event and [DONE]); the proxy's CPU time over the run (its threads' on-CPU time as the scheduler
counts it, exact to the nanosecond; the user and system parts from the kernel's ticks), divided
by the events the clients received, is its cost an event. tollgate (which also splits the events
and reads the usage) beside nginx proxying the same upstream without buffering, in one run.

usage: tests/perf/sse_relay.py BUILD_DIR [--clients 32] [--events 2000] [--requests 4] [--threads 1]
                               [--interval-ms 0] [--no-nginx]

--interval-ms 0 sends the events back to back, 16 to a write (the proxy's cost a byte shows);
--interval-ms 20 sends each event alone, 20 ms apart, as a model streams tokens (its cost a
wakeup shows: a read and a write an event).
--rounds N measures each proxy N times, interleaved (tollgate, [baseline,] nginx, each round
starting with the next one), and prints the medians; --baseline OTHER_BUILD adds that build's tollgate to every round.
--callgrind instead counts tollgate's user-space instructions an event under callgrind
(instrumentation on for the measured streams only, after one warm-up stream); with --baseline,
that build's too. --profile-dir DIR keeps the profiles (callgrind_annotate DIR/tollgate.out).
--usage-null sends each event with `"usage":null`, as OpenAI does when usage is asked for.
--per-chunk N: back-to-back events go N to an HTTP chunk (16; OpenAI's and vLLM's streams send 1).
--perf-dir DIR, after the rounds, runs each proxy once more under `perf record -e cpu-clock`
(time samples, user space and kernel): DIR/NAME.txt lists where its time went by function;
PERF_CALL_GRAPH=dwarf (perf record's --call-graph) records call graphs too.
--cache-sim adds callgrind's cache simulation (first level, and one core's 512 KB L2 as the last)
and prints its reads, writes and misses an event.

Loopback only; the upstream runs in its own processes. Standard library only.
"""
import argparse
import asyncio
import multiprocessing
import os
import shutil
import signal
import statistics
import subprocess
import tempfile
import time

from proxies import cpu_ns, cpu_split, free_port, raise_nofile, read_request, start_nginx, start_tollgate

EVENT = (b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"m",'
         b'"choices":[{"index":0,"delta":{"content":"word "},"finish_reason":null}]}\n\n')
USAGE = (b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[],'
         b'"usage":{"prompt_tokens":5,"completion_tokens":%d,"total_tokens":%d}}\n\ndata: [DONE]\n\n')


# OpenAI's chunks when usage is asked for (as the gateway does): a null usage in each but the last.
EVENT_USAGE_NULL = EVENT[:-3] + b',"usage":null}\n\n'


def upstream_main(port, events, interval, ready, usage_null=False, per_chunk=16):
    raise_nofile()
    # The whole answer, chunked in writes of per_chunk events (1 when paced).
    group = 1 if interval > 0 else per_chunk
    chunk = (EVENT_USAGE_NULL if usage_null else EVENT) * group
    body = [b"%x\r\n%s\r\n" % (len(chunk), chunk)] * (events // group)
    tail = USAGE % (events, events + 5)
    body.append(b"%x\r\n%s\r\n0\r\n\r\n" % (len(tail), tail))

    async def handle(reader, writer):
        try:
            while True:
                await read_request(reader)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
                for part in body:
                    writer.write(part)
                    await writer.drain()
                    if interval > 0:
                        await asyncio.sleep(interval)
        except Exception:
            pass
        writer.close()

    async def serve():
        server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=4096, reuse_port=True)
        ready.set()
        async with server:
            await server.serve_forever()

    asyncio.run(serve())


async def client(port, requests):
    """Streams `requests` answers one after another on one connection; returns the events read."""
    body = b'{"model":"bench","stream":true,"messages":[{"role":"user","content":"hi"}]}'
    req = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
           b"Authorization: Bearer tg-bench\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    events = 0
    for _ in range(requests):
        writer.write(req)
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(head.decode(errors="replace"))
        while True:  # chunked body
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            data = await reader.readexactly(size + 2)
            events += data.count(b"data: ")
    writer.close()
    return events


def measure(name, start, clients, requests, profile_to=None):
    port, pids_fn, stop = start()
    recorder = None
    try:
        time.sleep(1.0)
        asyncio.run(client(port, 1))  # warm: the upstream connection pool, the route
        if profile_to:
            procs = ",".join(str(p) for p in pids_fn())
            graph = ["--call-graph", os.environ["PERF_CALL_GRAPH"]] if os.environ.get("PERF_CALL_GRAPH") else []
            recorder = subprocess.Popen(["perf", "record", "-q", "-e", "cpu-clock", "-F", "4000", *graph, "-o",
                                         profile_to + ".data", "-p", procs], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.5)
        (user0, sys0), ns0, t0 = cpu_split(pids_fn()), cpu_ns(pids_fn()), time.monotonic()

        async def run():
            return sum(await asyncio.gather(*(client(port, requests) for _ in range(clients))))

        events = asyncio.run(run())
        (user1, sys1), ns1, wall = cpu_split(pids_fn()), cpu_ns(pids_fn()), time.monotonic() - t0
        if recorder:
            recorder.send_signal(signal.SIGINT)
            recorder.wait()
            with open(profile_to + ".txt", "w") as f:
                subprocess.run(["perf", "report", "-q", "-i", profile_to + ".data", "--no-children", "--sort", "dso,sym",
                                "--percent-limit", "0.3"], stdout=f, stderr=subprocess.DEVNULL)
    finally:
        stop()
    # The total is the scheduler's exact count; its split into user and system time comes from
    # the kernel's 10 ms ticks (about 0.2 us an event at 50,000 events), so the two parts need
    # not add up to it.
    user, system = user1 - user0, sys1 - sys0
    cpu = (ns1 - ns0) / 1e9
    print(f"{name:9} {events} events in {wall:5.1f} s: proxy CPU {cpu:6.2f} s, {cpu / events * 1e6:6.3f} us an event "
          f"(user {user / events * 1e6:5.2f}, system {system / events * 1e6:5.2f})", flush=True)
    return cpu / events, user / events, system / events


def count_instructions(name, build, work, up, a):
    """User-space instructions an event of tollgate under callgrind, over the measured streams."""
    out = os.path.join(work, name + ".out")
    wrapper = ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--dump-instr=yes", f"--callgrind-out-file={out}"]
    if a.cache_sim:
        # The first level and, as the last, one core's L2 (512 KB, 8-way): a stream's state that
        # another stream's event pushed out of L2 since it was last touched counts as a miss.
        wrapper += ["--cache-sim=yes", "--LL=524288,8,64"]
    port, pids_fn, stop = start_tollgate(build, work, up, a.threads, wrapper, name)
    pid = str(pids_fn()[0])
    try:
        asyncio.run(client(port, 1))  # warm
        subprocess.run(["callgrind_control", "-i", "on", pid], check=True, capture_output=True)

        async def run():
            return sum(await asyncio.gather(*(client(port, a.requests) for _ in range(a.clients))))

        events = asyncio.run(run())
        subprocess.run(["callgrind_control", "-i", "off", pid], check=True, capture_output=True)
    finally:
        stop()
    total, counts, names = 0, [], []
    with open(out) as f:
        for line in f:
            if line.startswith("events:"):
                names = line.split()[1:]
            if line.startswith("summary:") or line.startswith("totals:"):
                counts = [int(x) for x in line.split()[1:]]
                total = counts[0]
    if a.profile_dir:
        os.makedirs(a.profile_dir, exist_ok=True)
        shutil.copy(out, os.path.join(a.profile_dir, name + ".out"))
    print(f"{name:9} {events} events: {total / events:8.0f} instructions an event", flush=True)
    if a.cache_sim:
        print(f"{name:9} an event: " + ", ".join(f"{n} {c / events:.1f}" for n, c in zip(names, counts)), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("build")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--events", type=int, default=2000)
    ap.add_argument("--requests", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--interval-ms", type=float, default=0)
    ap.add_argument("--no-nginx", action="store_true")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--baseline")
    ap.add_argument("--callgrind", action="store_true")
    ap.add_argument("--profile-dir")
    ap.add_argument("--cache-sim", action="store_true")
    ap.add_argument("--perf-dir")
    ap.add_argument("--usage-null", action="store_true")
    ap.add_argument("--per-chunk", type=int, default=16)
    a = ap.parse_args()
    raise_nofile()
    work = tempfile.mkdtemp(prefix="tg-sse-")
    up = free_port()
    ready = [multiprocessing.Event() for _ in range(2)]
    ups = [multiprocessing.Process(target=upstream_main, args=(up, a.events, a.interval_ms / 1000, r, a.usage_null, a.per_chunk), daemon=True) for r in ready]
    try:
        for p in ups:
            p.start()
        for r in ready:
            r.wait(10)
        if a.callgrind:
            count_instructions("tollgate", a.build, work, up, a)
            if a.baseline:
                count_instructions("baseline", a.baseline, work, up, a)
            return
        proxies = [("tollgate", lambda: start_tollgate(a.build, work, up, a.threads))]
        if a.baseline:
            proxies.append(("baseline", lambda: start_tollgate(a.baseline, work, up, a.threads, name="baseline")))
        if not a.no_nginx and shutil.which("nginx"):
            proxies.append(("nginx", lambda: start_nginx(work, up, a.threads)))
        got = {name: [] for name, _ in proxies}
        user = {name: [] for name, _ in proxies}
        system = {name: [] for name, _ in proxies}
        for r in range(a.rounds):
            # Each round starts with another proxy, so that none is always measured first.
            for name, start in proxies[r % len(proxies):] + proxies[:r % len(proxies)]:
                cpu, u, s = measure(name, start, a.clients, a.requests)
                got[name].append(cpu)
                user[name].append(u)
                system[name].append(s)
        med = {name: statistics.median(v) for name, v in got.items()}
        print(f"medians over {a.rounds} round(s), CPU an event (user and system medians apart):", flush=True)
        for name, v in med.items():
            ratio = f" ({v / med['nginx']:.2f}x nginx)" if "nginx" in med else ""
            rounds = " ".join(f"{x * 1e6:.3f}" for x in got[name])
            apart = f"user {statistics.median(user[name]) * 1e6:6.3f}, system {statistics.median(system[name]) * 1e6:6.3f}"
            print(f"  {name:9} {v * 1e6:6.3f} us{ratio}  ({apart})  rounds: {rounds}", flush=True)
        if a.perf_dir:
            # One more run each under perf record (time samples): where the proxy's time went.
            os.makedirs(a.perf_dir, exist_ok=True)
            for name, start in proxies:
                out = os.path.join(os.path.abspath(a.perf_dir), name)
                measure(name, start, a.clients, a.requests, out)
                print(f"\n{name}: where its time went ({out}.txt)", flush=True)
                with open(out + ".txt") as f:
                    print("".join(f.readlines()[:25]), flush=True)
    finally:
        for p in ups:
            p.terminate()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
