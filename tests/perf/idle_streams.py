"""Memory a held, idle stream costs the proxy: N clients open streaming chat completions through the
proxy to an upstream that sends one event and then holds every stream open; once all N have their
first event, the proxy's resident memory (VmRSS of all its processes) is read, and the cost a
stream is the growth over the idle proxy, divided by N. Each N gets a fresh proxy. Run for tollgate
and, beside it, nginx proxying the same upstream without buffering (proxy_buffering off, as for
SSE), at several N, so the slope (KB a stream) shows apart from fixed costs.

usage: tests/perf/idle_streams.py BUILD_DIR [--streams 1000,9990] [--threads 1] [--no-nginx]

Each stream holds two sockets in the proxy (client and upstream); with the usual limit of 20,000
open files a process, 9,990 is about the most (the listener and the event loop's descriptors take
the rest). Loopback only. Standard library only.
"""
import argparse
import asyncio
import multiprocessing
import shutil
import tempfile
import time

from proxies import free_port, raise_nofile, read_request, rss_kb, start_nginx, start_tollgate

FIRST = (b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"m",'
         b'"choices":[{"index":0,"delta":{"role":"assistant","content":"hi"},"finish_reason":null}]}\n\n')


def upstream_main(port, ready):
    """Answers every POST with an SSE head and one event, then holds the stream."""
    raise_nofile()

    async def handle(reader, writer):
        try:
            await read_request(reader)
            chunk = b"%x\r\n%s\r\n" % (len(FIRST), FIRST)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n" + chunk)
            await writer.drain()
            await reader.read()  # until the proxy closes
        except Exception:
            pass
        writer.close()

    async def serve():
        server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=16384)
        ready.set()
        async with server:
            await server.serve_forever()

    asyncio.run(serve())


async def open_streams(port, n):
    """Opens n streams, returns them once each has its first event."""
    body = b'{"model":"bench","stream":true,"messages":[{"role":"user","content":"hi"}]}'
    req = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
           b"Authorization: Bearer tg-bench\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    sem = asyncio.Semaphore(256)
    conns = []

    async def one():
        async with sem:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(req)
            await writer.drain()
            got = b""
            while b"data:" not in got:
                chunk = await asyncio.wait_for(reader.read(4096), 30)
                if not chunk:
                    raise RuntimeError("stream closed before its first event: %r" % got[:200])
                got += chunk
            conns.append((reader, writer))

    await asyncio.gather(*(one() for _ in range(n)))
    return conns


def measure(name, start, counts):
    """For each N, a fresh proxy (start() -> port, pids function, stop function): its idle RSS, then
    its RSS holding N streams."""
    rows = []
    for n in counts:
        port, pids_fn, stop = start()
        try:
            time.sleep(1.0)
            before = rss_kb(pids_fn())

            async def run():
                conns = await open_streams(port, n)
                await asyncio.sleep(2.0)  # settle: every stream idle
                after = rss_kb(pids_fn())
                for _, w in conns:
                    w.close()
                return after

            after = asyncio.run(run())
        finally:
            stop()
        per = (after - before) / n
        rows.append((n, before, after, per))
        print(f"{name:9} {n:6} streams: RSS {before / 1024:7.1f} -> {after / 1024:7.1f} MB, {per:5.1f} KB a stream",
              flush=True)
    if len(rows) >= 2:
        (n0, b0, a0, _), (n1, b1, a1, _) = rows[0], rows[-1]
        print(f"{name:9} slope {n0}..{n1}: {((a1 - b1) - (a0 - b0)) / (n1 - n0):5.1f} KB a stream", flush=True)
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("build")
    ap.add_argument("--streams", default="1000,9990")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-nginx", action="store_true")
    a = ap.parse_args()
    raise_nofile()
    counts = [int(x) for x in a.streams.split(",")]
    work = tempfile.mkdtemp(prefix="tg-idle-")
    up = free_port()
    ready = multiprocessing.Event()
    upstream = multiprocessing.Process(target=upstream_main, args=(up, ready), daemon=True)
    try:
        upstream.start()
        ready.wait(10)
        measure("tollgate", lambda: start_tollgate(a.build, work, up, a.threads), counts)
        if not a.no_nginx and shutil.which("nginx"):
            measure("nginx", lambda: start_nginx(work, up, a.threads), counts)
    finally:
        upstream.terminate()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
