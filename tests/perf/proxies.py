"""Shared pieces of the proxy benchmarks under tests/perf/ (idle_streams.py, sse_relay.py): free
ports, the open-file limit, tollgate and nginx started on loopback in front of one upstream, and
their processes' CPU time and resident memory. Standard library only."""
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kb(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except FileNotFoundError:
            pass
    return total


def cpu_split(pids):
    """User and system CPU time of the processes so far, apart."""
    tick = os.sysconf("SC_CLK_TCK")
    user = system = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            user += int(fields[11])
            system += int(fields[12])
        except FileNotFoundError:
            pass
    return user / tick, system / tick


def cpu_ns(pids):
    """On-CPU time of the processes' threads so far, in nanoseconds (the scheduler's own count,
    /proc/PID/task/TID/schedstat: exact, unlike the 10 ms ticks of cpu_split)."""
    total = 0
    for pid in pids:
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except FileNotFoundError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    total += int(f.read().split()[0])
            except (FileNotFoundError, ProcessLookupError):
                pass
    return total


async def read_request(reader):
    """Reads one HTTP request (head and Content-Length body) from an asyncio stream."""
    head = await reader.readuntil(b"\r\n\r\n")
    m = re.search(rb"content-length:\s*(\d+)", head, re.I)
    if m:
        await reader.readexactly(int(m.group(1)))


def stop_process(p):
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(10)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def start_tollgate(build, work, upstream_port, threads, wrapper=(), name="tollgate"):
    """tollgate serving model "bench" (key tg-bench) from the upstream, with long stream timeouts.
    wrapper: a command line it runs under (valgrind's, say). Returns (port, pids function, stop
    function)."""
    cfg = os.path.join(work, name + ".yaml")
    with open(cfg, "w") as f:
        f.write(f"""server: {{listen: "127.0.0.1:0", threads: {threads}, access_log: off, idle_timeout: 600s}}
keys: [{{name: bench, key: tg-bench}}]
backends:
  - name: up
    kind: openai
    base_url: "http://127.0.0.1:{upstream_port}/v1"
    api_key: sk-up
    timeouts: {{first_token: 60s, idle: 600s, total: 600s}}
routes: [{{model: bench, targets: [{{backend: up, model: m}}]}}]
""")
    path = os.path.join(work, name + ".log")
    with open(path, "w") as log:
        gw = subprocess.Popen([*wrapper, os.path.join(build, "tollgate"), "serve", "--config", cfg], stdout=log,
                              stderr=subprocess.STDOUT, preexec_fn=raise_nofile)
    for _ in range(1200 if wrapper else 400):
        time.sleep(0.05)
        m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", open(path).read())
        if m:
            return int(m.group(1)), lambda: [gw.pid], lambda: stop_process(gw)
    stop_process(gw)
    sys.exit("tollgate did not start: " + open(path).read()[-2000:])


def start_nginx(work, upstream_port, threads):
    """nginx proxying the upstream without buffering (as for SSE), keep-alive to it. Returns (port,
    pids function, stop function), or None where nginx is not installed."""
    if not shutil.which("nginx"):
        return None
    port = free_port()
    conf = os.path.join(work, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"""worker_processes {threads};
worker_rlimit_nofile 30000;
error_log {work}/nginx-error.log crit;
pid {work}/nginx.pid;
events {{ worker_connections 30000; }}
http {{
  access_log off;
  upstream up {{ server 127.0.0.1:{upstream_port}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{port} backlog=16384;
    location / {{
      proxy_pass http://up;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
      proxy_read_timeout 600s;
    }}
  }}
}}
""")
    nginx = subprocess.Popen(["nginx", "-p", work, "-c", conf, "-g", "daemon off;"], preexec_fn=raise_nofile)
    time.sleep(0.5)

    def pids():
        out = subprocess.run(["pgrep", "-P", str(nginx.pid)], capture_output=True, text=True).stdout.split()
        return [nginx.pid] + [int(x) for x in out]

    return port, pids, lambda: stop_process(nginx)
