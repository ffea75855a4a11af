#!/usr/bin/env bash
# How many requests a second `tollgate bench` itself sustains on one core, so that it is never the
# bottleneck of what it measures; wrk against the same upstream, on the same core, alongside.
# Two figures per client: requests/s over the wall clock, and requests per second of the client's
# own CPU time (user + system), which is what one core would sustain if the client had it to
# itself: on a machine shared with other work the first understates the client, the second does not.
# tollgate bench reports its CPU time per run (client_cpu_s in its JSON), which leaves out its
# start (loading the tokenizer, making prompts); wrk's is read from the kernel for the whole run.
#
# Usage: tests/perf/bench_client.sh [BUILD_DIR]   (env: ROUNDS=3 DURATION=5 CONC=64 RT=0)
# RT=1 runs the client and nginx at real-time priority (chrt -f 50; needs root), so that on a
# machine busy with other work each still gets its whole core: the wall-clock figures are then the
# client's and not the machine's (the kernel keeps 5% of each second for everything else).
# The upstream is nginx (one worker, pinned to CPU 1) answering a fixed chat.completion body, or a
# fixed 16-token SSE stream with usage; the client is pinned to CPU 0. Medians over rounds.
set -euo pipefail
build=$(cd "${1:-build}" && pwd)
rounds=${ROUNDS:-3}
duration=${DURATION:-5}
conc=${CONC:-64}
rt=()
if [ "${RT:-0}" = 1 ]; then rt=(chrt -f 50); fi
source "$(dirname "$0")/../support/procs.sh"
command -v nginx >/dev/null || { echo "nginx is not installed (deploy/setup.sh --bench installs it)"; exit 1; }
command -v wrk >/dev/null || { echo "wrk is not installed (deploy/setup.sh --bench installs it)"; exit 1; }
[ "$(nproc)" -ge 2 ] || { echo "needs 2 cores: one for the client, one for the upstream"; exit 1; }

port=$(shuf -i 20000-32000 -n 1)  # below the ephemeral ports
answer='{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":1,"total_tokens":6}}'
stream=""
for i in $(seq 0 15); do stream+="data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\" t$i\"}}]}\n\n"; done
stream+='data: {"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":16,"total_tokens":21}}\n\ndata: [DONE]\n\n'
mkdir -p "$work/up/tmp"
# Temporary folders inside the work folder, for each module this nginx has (it creates them at
# start, and the built-in ones may not be writable).
temps=""
for m in client_body fastcgi proxy scgi uwsgi; do
  nginx -V 2>&1 | grep -q -- "--http-${m//_/-}-temp-path" && temps+="${m}_temp_path $work/up/tmp/$m; "
done
cat >"$work/up/nginx.conf" <<NGX
worker_processes 1;
error_log $work/up/error.log crit;
pid $work/up/nginx.pid;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 10000000;
  client_body_buffer_size 64k;
  $temps
  server {
    listen 127.0.0.1:$port;
    location /plain/ { default_type application/json; return 200 '$answer'; }
    location /stream/ { default_type text/event-stream; return 200 '$stream'; }
  }
}
NGX
${rt[@]+"${rt[@]}"} taskset -c 1 nginx -e "$work/up/error.log" -p "$work/up" -c "$work/up/nginx.conf" -g 'daemon off;' &
pids+=($!)
for _ in $(seq 50); do (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done

cat >"$work/post.lua" <<'LUA'
wrk.method = "POST"
wrk.body = '{"model":"m","messages":[{"role":"user","content":"hello"}],"max_tokens":16}'
wrk.headers["Content-Type"] = "application/json"
done = function(summary, latency, requests)
  io.write(string.format("RESULT %f %d\n", summary.requests / (summary.duration / 1e6), summary.requests))
end
LUA

cpu_of() {  # command... -> its output, then a last line with the CPU seconds it used
  python3 -c 'import resource, subprocess, sys
subprocess.run(sys.argv[1:], check=True)
r = resource.getrusage(resource.RUSAGE_CHILDREN)
print("CPU", r.ru_utime + r.ru_stime)' "$@"
}
bench() {  # path [--stream] -> "requests/s requests-per-CPU-second"
  ${rt[@]+"${rt[@]}"} taskset -c 0 "$build/tollgate" bench --base-url "http://127.0.0.1:$port/$1/v1" --model m \
    --concurrency "$conc" --duration "$duration" --prompt-tokens 16 --max-tokens 16 --quiet \
    --json "$work/b.json" "${@:2}" >/dev/null 2>&1
  python3 -c 'import json,sys
r = json.load(open(sys.argv[1]))["runs"][0]
assert r["success_rate"] == 1, r["errors"]
print(round(r["requests_per_s"]), round(r["requests"] / r["client_cpu_s"]))' "$work/b.json"
}
wrk_rps() {  # path -> "requests/s requests-per-CPU-second"
  cpu_of ${rt[@]+"${rt[@]}"} taskset -c 0 wrk -t1 -c"$conc" -d"${duration}s" -s "$work/post.lua" "http://127.0.0.1:$port/$1/v1/chat/completions" \
    2>/dev/null | awk '/^RESULT/ {rps = $2; n = $3} /^CPU/ {printf "%d %d\n", rps, n / $2}'
}
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{v[NR]=$1} END {print (NR%2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}'; }

bench plain >/dev/null  # warm-up
declare -A wall cpu
for r in $(seq 1 "$rounds"); do
  for k in wrk_plain bench_plain wrk_stream bench_stream; do
    case $k in
      wrk_*) read -r w c < <(wrk_rps "${k#*_}") ;;
      bench_plain) read -r w c < <(bench plain) ;;
      bench_stream) read -r w c < <(bench stream --stream) ;;
    esac
    wall[$k]+="$w "
    cpu[$k]+="$c "
  done
done
printf '\n%s rounds x %ss, %s in flight, client on CPU 0, nginx on CPU 1%s, load %s\n\n' "$rounds" "$duration" "$conc" \
  "$([ ${#rt[@]} -gt 0 ] && echo ', both at real-time priority')" "$(cut -d' ' -f1-3 /proc/loadavg)"
printf '| answer | client | requests/s (median) | requests per CPU-second (median) | rounds (requests/s) |\n|---|---|---|---|---|\n'
for k in wrk_plain bench_plain wrk_stream bench_stream; do
  name=${k%_*}; [ "$name" = bench ] && name="tollgate bench"
  printf '| %s | %s | %s | %s | %s |\n' "${k#*_}" "$name" "$(echo "${wall[$k]}" | median)" "$(echo "${cpu[$k]}" | median)" "${wall[$k]}"
done
