#!/usr/bin/env bash
# User-space instructions per proxied request, counted by callgrind (exact and repeatable, unlike
# timings on a shared machine). tollgate runs under callgrind with instrumentation off; a client sends
# WARMUP requests, instrumentation is switched on for REQUESTS more on one keep-alive connection, then off.
#
# Usage: tests/perf/callgrind.sh [BUILD_DIR...]   (env: REQUESTS=2000 WARMUP=200 PROMPT_KB=0 ANSWER_KB=0)
#   PROMPT_KB=100   the user message padded to about that many KB (default: a short one)
#   PROMPT_TEXT=... what the prompt is padded with (default "lorem ipsum dolor sit amet ")
#   ANSWER_KB=1024  the upstream's answer padded to about that many KB (default: 200 bytes)
#   PROFILE_DIR=DIR keeps each build's profile there (callgrind.N.out, N the build's position),
#                   with instruction-level detail, for callgrind_annotate
#   TARGET_MODEL=bench-model  the name the route sends upstream (default m: the answer's model is
#                   renamed back to bench-model; the client's own name: nothing is renamed)
#   CACHE_SIM=1     callgrind's cache simulation too (32 KB 8-way I1 and D1, 1 MB last level): the
#                   line adds first-level instruction and data read misses a request
#   ROUTES=10000 KEYS=10000  that many more routes and keys in the config, the measured request's
#                   route and key written last (costs that grow with the config show)
# With several build dirs each is measured in turn against the same upstream, one line each.
set -euo pipefail
requests=${REQUESTS:-2000}
warmup=${WARMUP:-200}
prompt_kb=${PROMPT_KB:-0}
answer_kb=${ANSWER_KB:-0}
extra_routes=${ROUTES:-0}
extra_keys=${KEYS:-0}
target_model=${TARGET_MODEL:-m}
profile_dir=${PROFILE_DIR:+$(mkdir -p "$PROFILE_DIR" && cd "$PROFILE_DIR" && pwd)}
source "$(dirname "$0")/../support/procs.sh"
command -v valgrind >/dev/null || { echo "valgrind is not installed"; exit 1; }
command -v nginx >/dev/null || { echo "nginx is not installed (deploy/setup.sh installs it)"; exit 1; }

free_port() {
  while :; do
    p=$(shuf -i 20000-32000 -n 1)  # below the ephemeral ports, which connections hold
    (echo >"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }
  done
}
up_port=$(free_port)
pad=$(python3 -c "import sys; print('lorem ipsum dolor sit amet ' * (int(sys.argv[1]) * 1024 // 27), end='')" "$answer_kb")
answer='{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"ok'"$pad"'"},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":1,"total_tokens":6}}'
mkdir -p "$work/up"
printf '%s' "$answer" >"$work/up/answer.json"
chmod 755 "$work" "$work/up"  # nginx's workers (nobody) read the answer file
# A short answer is returned inline; a long one is the file (nginx serves a file to a POST through
# its 405 error page).
answer_directive="return 200 '$answer';"
[ "$answer_kb" = 0 ] || answer_directive="root $work/up; error_page 405 =200 \$uri; try_files /answer.json =404;"
cat >"$work/up/nginx.conf" <<NGX
worker_processes 1;
error_log $work/up/error.log crit;
pid $work/up/nginx.pid;
events { worker_connections 1024; }
http {
  access_log off;
  keepalive_requests 1000000;
  client_max_body_size 64m;
  server {
    listen 127.0.0.1:$up_port;
    location / { default_type application/json; $answer_directive }
  }
}
NGX
nginx -p "$work/up" -c "$work/up/nginx.conf" -g 'daemon off;' &
pids+=($!)

[ $# -eq 0 ] && set -- build
n=0
for dir in "$@"; do
  n=$((n + 1))
  build=$(cd "$dir" && pwd)
  {
    printf 'server:\n  listen: 127.0.0.1:0\n  threads: 1\n  access_log: off\nkeys:\n'
    for i in $(seq 1 "$extra_keys"); do printf '  - {name: k%d, key: tg-k%d-%08d}\n' "$i" "$i" "$i"; done
    printf '  - {name: bench, key: tg-bench}\n'
    printf 'backends:\n  - {name: local, kind: openai, base_url: "http://127.0.0.1:%s/v1", api_key: sk-upstream}\n' "$up_port"
    printf 'routes:\n'
    for i in $(seq 1 "$extra_routes"); do printf '  - {model: m%d, targets: [{backend: local, model: m}]}\n' "$i"; done
    printf '  - {model: bench-model, targets: [{backend: local, model: %s}]}\n' "$target_model"
  } >"$work/tollgate.yaml"
  rm -f "$work"/callgrind.out.*
  cache_sim=()
  [ -z "${CACHE_SIM:-}" ] || cache_sim=(--cache-sim=yes --I1=32768,8,64 --D1=32768,8,64 --LL=1048576,16,64)
  valgrind --tool=callgrind --instr-atstart=no --dump-instr=yes "${cache_sim[@]}" --callgrind-out-file="$work/callgrind.out.%p" \
    "$build/tollgate" serve --config "$work/tollgate.yaml" 2>"$work/tollgate.log" &
  vg=$!
  pids+=("$vg")  # stopped on exit if the client fails
  url=$(wait_listening "$work/tollgate.log" || { sleep 20; wait_listening "$work/tollgate.log"; })
  python3 - "$url" "$warmup" "$requests" "$prompt_kb" "$vg" <<'PY'
import http.client, os, subprocess, sys, urllib.parse
url, warmup, n, kb, pid = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
u = urllib.parse.urlparse(url)
conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
unit = os.environ.get("PROMPT_TEXT") or "lorem ipsum dolor sit amet "
pad = unit * (kb * 1024 // len(unit.encode()))
body = ('{"model":"bench-model","messages":[{"role":"user","content":"hello, how are you today?%s"}],"max_tokens":16}' % pad).encode()
headers = {"Content-Type": "application/json", "Authorization": "Bearer tg-bench"}
def send(k):
    for _ in range(k):
        conn.request("POST", "/v1/chat/completions", body, headers)
        r = conn.getresponse(); r.read()
        assert r.status == 200, r.status
send(warmup)
subprocess.run(["callgrind_control", "-i", "on", pid], check=True, capture_output=True)
send(n)
subprocess.run(["callgrind_control", "-i", "off", pid], check=True, capture_output=True)
PY
  kill -INT "$vg"; wait "$vg" 2>/dev/null || true
  # Ir alone, or with the cache simulation Ir Dr Dw I1mr D1mr D1mw ILmr DLmr DLmw.
  read -r total _ _ i1 d1 _ < <(sed -n 's/.*Collected : //p' "$work/tollgate.log" | tail -1)
  [ -n "$profile_dir" ] && cp "$(ls "$work"/callgrind.out.* | head -1)" "$profile_dir/callgrind.$n.out"
  printf '%s: %d instructions a request (%s requests, prompt %s KB, answer %s KB, %s more routes, %s more keys)\n' \
    "$dir" "$((total / requests))" "$requests" "$prompt_kb" "$answer_kb" "$extra_routes" "$extra_keys"
  if [ -n "${CACHE_SIM:-}" ]; then
    printf '%s: %d I1 misses, %d D1 read misses a request\n' "$dir" "$((i1 / requests))" "$((d1 / requests))"
  fi
done
