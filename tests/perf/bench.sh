#!/usr/bin/env bash
# Throughput and added latency of tollgate in front of a fast local upstream, side by side with
# the same load sent to the upstream directly and through nginx (proxy_pass with keep-alive).
# tollgate runs twice: with its default transport for an http:// upstream (native) and over libcurl.
#
# Usage: tests/perf/bench.sh [BUILD_DIR]   (env: ROUNDS=3 DURATION=8 CONNS=32 THREADS=1)
#   PROMPT_KB=100        the user message padded to about that many KB (default: a short one)
#   PROMPT_TEXT=...      what the prompt is padded with, as it goes into the JSON body (default
#                        "lorem ipsum dolor sit amet "), e.g. Chinese text, whose bytes are all
#                        multi-byte UTF-8, or text with escapes: 'line\n', '\u4e2d\u6587' (no bare '"')
#   ANSWER_KB=1024       the upstream's answer padded to about that many KB (default: 200 bytes)
#   STREAM=1             the request asks for a stream, and the upstream answers one: chat chunks
#                        of about 150 bytes (ANSWER_KB KB of them in all, else 20), a usage chunk and [DONE],
#                        all at once as a model that has its answer ready would; nginx proxies it
#                        unbuffered (proxy_buffering off), as SSE deployments do
#   USAGE_NULL=1         with STREAM=1: each chat chunk carries "usage":null, as OpenAI's do when usage
#                        is asked for (the gateway always asks)
#   BASELINE=OTHER_BUILD also runs that build's tollgate (native) as "baseline", in the same rounds
#   TARGETS="nginx tollgate baseline"  only these (direct is always run: added latency needs it)
#   SYSCALLS=1           after the rounds, one more run per proxy under `perf stat`: system calls a
#                        request (all, reads, reads that found nothing, writes, epoll_wait, epoll_ctl),
#                        context switches and page faults a request
#   PROFILE=DIR          after the rounds, one more run per proxy under `perf record -e cpu-clock`
#                        (time samples: no hardware counters needed): DIR/TARGET.txt lists where
#                        its time went by function, user space and kernel, and DIR/TARGET.data is
#                        kept for `perf annotate -i`
#   PROXY_CPUS=2 UPSTREAM_CPUS=3 CLIENT_CPUS=4   pin the proxies (nginx and every tollgate: one is
#                        loaded at a time), the upstream and wrk each to their own cores (taskset
#                        lists), so that on a many-core machine they do not share a core by chance
# The upstream is nginx answering a fixed chat.completion body. Each round runs the targets back
# to back; the table reports medians over rounds. Loopback only, bounded in time.
set -euo pipefail
build=$(cd "${1:-build}" && pwd)
rounds=${ROUNDS:-3}
duration=${DURATION:-8}
conns=${CONNS:-32}
threads=${THREADS:-1}   # tollgate worker threads and nginx worker processes, kept equal
prompt_kb=${PROMPT_KB:-0}
prompt_text=${PROMPT_TEXT:-lorem ipsum dolor sit amet }
answer_kb=${ANSWER_KB:-0}
stream=${STREAM:-0}
baseline=${BASELINE:+$(cd "$BASELINE" && pwd)}
source "$(dirname "$0")/../support/procs.sh"

command -v wrk >/dev/null || { echo "wrk is not installed (deploy/setup.sh installs it)"; exit 1; }
command -v nginx >/dev/null || { echo "nginx is not installed (deploy/setup.sh installs it)"; exit 1; }

free_port() {  # a random high port that nothing answers on
  while :; do
    p=$(shuf -i 20000-32000 -n 1)  # below the ephemeral ports, which connections hold
    (echo >"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }
  done
}
up_port=$(free_port); ngx_port=$(free_port)

pad=$(python3 -c "import sys; print('lorem ipsum dolor sit amet ' * (int(sys.argv[1]) * 1024 // 27), end='')" "$answer_kb")
answer='{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"ok'"$pad"'"},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":1,"total_tokens":6}}'
mkdir -p "$work/up" "$work/ngx"
printf '%s' "$answer" >"$work/up/answer.json"
chmod 755 "$work" "$work/up"  # nginx's workers (nobody) read the answer file
# A short answer is returned inline; a long one is the file (nginx serves a file to a POST through
# its 405 error page).
answer_directive="return 200 '$answer';"
[ "$answer_kb" = 0 ] || answer_directive="root $work/up; error_page 405 =200 \$uri; try_files /answer.json =404;"
answer_type=application/json proxy_buffering=on request_stream=""
if [ "$stream" = 1 ]; then
  python3 - "$answer_kb" "$work/up/answer.sse" "${USAGE_NULL:-0}" <<'PY'
import sys
kb, path, usage_null = int(sys.argv[1]), sys.argv[2], sys.argv[3] == "1"
event = ('data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m","choices":'
         '[{"index":0,"delta":{"content":"lorem "},"finish_reason":null}]' + (',"usage":null' if usage_null else '') + '}\n\n')
count = kb * 1024 // len(event) if kb else 20
usage = ('data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m","choices":[],'
         '"usage":{"prompt_tokens":5,"completion_tokens":%d,"total_tokens":%d}}\n\ndata: [DONE]\n\n' % (count, count + 5))
open(path, "w").write(event * count + usage)
PY
  answer_directive="root $work/up; error_page 405 =200 \$uri; try_files /answer.sse =404;"
  answer_type=text/event-stream proxy_buffering=off request_stream=',"stream":true'
fi
cat >"$work/up/nginx.conf" <<NGX
worker_processes 1;
error_log $work/up/error.log crit;
pid $work/up/nginx.pid;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  client_body_buffer_size 64k;
  client_max_body_size 64m;
  server {
    listen 127.0.0.1:$up_port;
    location / { default_type $answer_type; $answer_directive }
  }
}
NGX
cat >"$work/ngx/nginx.conf" <<NGX
worker_processes $threads;
error_log $work/ngx/error.log crit;
pid $work/ngx/nginx.pid;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  client_body_buffer_size 2m;  # a 1 MB prompt stays in memory, as it does in tollgate
  client_max_body_size 64m;
  upstream backend { server 127.0.0.1:$up_port; keepalive 256; }
  server {
    listen 127.0.0.1:$ngx_port;
    location /v1/ {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Authorization "Bearer sk-upstream";
      proxy_buffering $proxy_buffering;
    }
  }
}
NGX
# Each command prefix is empty unless its cores are given (taskset execs the command, so $! stays
# the process whose CPU time is read).
pin_proxy=() pin_upstream=() pin_client=()
[ -z "${PROXY_CPUS:-}" ] || pin_proxy=(taskset -c "$PROXY_CPUS")
[ -z "${UPSTREAM_CPUS:-}" ] || pin_upstream=(taskset -c "$UPSTREAM_CPUS")
[ -z "${CLIENT_CPUS:-}" ] || pin_client=(taskset -c "$CLIENT_CPUS")
"${pin_upstream[@]}" nginx -p "$work/up" -c "$work/up/nginx.conf" -g 'daemon off;' &
pids+=($!)
"${pin_proxy[@]}" nginx -p "$work/ngx" -c "$work/ngx/nginx.conf" -g 'daemon off;' &
pids+=($!)
declare -A pid_of   # the process whose CPU time a target's requests cost
pid_of[nginx]=$!

# Two gateways: the default transport for an http:// upstream (the built-in HTTP/1.1 client), and
# the same config over libcurl; with BASELINE, a third: the other build, native.
gateways="native curl"
[ -n "$baseline" ] && gateways+=" baseline"
for transport in $gateways; do
  cat >"$work/tollgate-$transport.yaml" <<YAML
server:
  listen: 127.0.0.1:0
  threads: $threads
  access_log: off
keys:
  - name: bench
    key: tg-bench
backends:
  - name: local
    kind: openai
    base_url: http://127.0.0.1:$up_port/v1
    api_key: sk-upstream
    transport: $([ "$transport" = baseline ] && echo native || echo "$transport")
routes:
  - model: bench-model
    targets:
      - backend: local
        model: m
YAML
  bin="$build/tollgate"
  [ "$transport" = baseline ] && bin="$baseline/tollgate"
  "${pin_proxy[@]}" "$bin" serve --config "$work/tollgate-$transport.yaml" 2>"$work/tollgate-$transport.log" &
  pids+=($!)
  case $transport in
    native) pid_of[tollgate]=$! ;;
    curl) pid_of[tollgate-curl]=$! ;;
    baseline) pid_of[baseline]=$! ;;
  esac
done
tg_url=$(wait_listening "$work/tollgate-native.log")
tg_curl_url=$(wait_listening "$work/tollgate-curl.log")
[ -n "$baseline" ] && tg_base_url=$(wait_listening "$work/tollgate-baseline.log")

# The padding goes into a Lua string literal: its backslashes and quotes written as escapes, so
# that a JSON escape in it (\n, \u4e2d) reaches the body as written.
lua_text=${prompt_text//\\/\\\\}
lua_text=${lua_text//\'/\\\'}
cat >"$work/post.lua" <<LUA
wrk.method = "POST"
wrk.body = '{"model":"bench-model","messages":[{"role":"user","content":"hello, how are you today?' ..
  string.rep('$lua_text', math.floor($prompt_kb * 1024 / #'$lua_text')) .. '"}],"max_tokens":16$request_stream}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer tg-bench"
done = function(summary, latency, requests)
  io.write(string.format("RESULT %f %d %d %d\n", summary.requests / (summary.duration / 1e6),
    latency:percentile(50), latency:percentile(99), summary.errors.status + summary.errors.connect +
    summary.errors.read + summary.errors.write + summary.errors.timeout))
end
LUA

declare -A rps p50 p99 lat50 lat99 cpu cpu_user
run() {  # name url conns -> "rps p50 p99 errors"
  "${pin_client[@]}" wrk -t1 -c"$3" -d"${duration}s" -s "$work/post.lua" "$2" 2>/dev/null | awk '/^RESULT/ {print $2, $3, $4, $5}'
}
cpu_ticks() {  # PID [user] -> clock ticks of it and its children (nginx's workers): user + system, or user only
  local total=0 p expr='$14 + $15'
  [ "${2:-}" = user ] && expr='$14'
  for p in $1 $(pgrep -P "$1" || true); do
    total=$((total + $(awk "{print $expr}" "/proc/$p/stat" 2>/dev/null || echo 0)))
  done
  echo "$total"
}
procs_of() {  # TARGET -> its process and their children (nginx's workers), comma-separated, for perf -p
  echo "${pid_of[$1]}" $(pgrep -P "${pid_of[$1]}" || true) | tr ' ' ','
}
hz=$(getconf CLK_TCK)
targets=(direct nginx tollgate tollgate-curl)
[ -n "$baseline" ] && targets+=(baseline)
if [ -n "${TARGETS:-}" ]; then targets=(direct $TARGETS); fi
url_of() {
  case $1 in
    direct) echo "http://127.0.0.1:$up_port/v1/chat/completions" ;;
    nginx) echo "http://127.0.0.1:$ngx_port/v1/chat/completions" ;;
    tollgate) echo "$tg_url/v1/chat/completions" ;;
    tollgate-curl) echo "$tg_curl_url/v1/chat/completions" ;;
    baseline) echo "$tg_base_url/v1/chat/completions" ;;
  esac
}
# Warm-up: connections, caches.
for t in "${targets[@]}"; do "${pin_client[@]}" wrk -t1 -c"$conns" -d2s -s "$work/post.lua" "$(url_of "$t")" >/dev/null 2>&1; done

for r in $(seq 1 "$rounds"); do
  for t in "${targets[@]}"; do
    before=$([ -n "${pid_of[$t]:-}" ] && cpu_ticks "${pid_of[$t]}" || echo 0)
    before_user=$([ -n "${pid_of[$t]:-}" ] && cpu_ticks "${pid_of[$t]}" user || echo 0)
    read -r q a b e < <(run "$t" "$(url_of "$t")" "$conns")
    after=$([ -n "${pid_of[$t]:-}" ] && cpu_ticks "${pid_of[$t]}" || echo 0)
    after_user=$([ -n "${pid_of[$t]:-}" ] && cpu_ticks "${pid_of[$t]}" user || echo 0)
    [ "$e" = "0" ] || echo "warning: $t had $e errors in round $r" >&2
    rps[$t]+="$q "
    # CPU time of the proxy (user + system) over the requests it served in this run, in µs.
    cpu[$t]+="$(echo "($after - $before) * 1000000 / $hz / ($q * $duration)" | bc -l) "
    cpu_user[$t]+="$(echo "($after_user - $before_user) * 1000000 / $hz / ($q * $duration)" | bc -l) "
    # Added latency is read at one connection, where it is not hidden behind queueing.
    read -r q a b e < <(run "$t" "$(url_of "$t")" 1)
    lat50[$t]+="$a "
    lat99[$t]+="$b "
  done
done

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{v[NR]=$1} END {print (NR%2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}'; }
printf '\n%s rounds x %ss, %s connections for throughput, 1 connection for latency, %s worker(s), prompt %s, answer %s\n\n' \
  "$rounds" "$duration" "$conns" "$threads" "$([ "$prompt_kb" = 0 ] && echo short || echo "~${prompt_kb} KB")" \
  "$([ "$answer_kb" = 0 ] && echo short || echo "~${answer_kb} KB")$([ "$stream" = 1 ] && echo ", streamed")"
printf '| path | requests/s (median) | vs nginx | CPU µs a request | of it user µs | p50 latency µs | p99 latency µs | added p50 µs | rounds (requests/s) |\n'
printf '|---|---|---|---|---|---|---|---|---|\n'
d50=$(echo "${lat50[direct]}" | median)
n_rps=""  # the ratio column needs nginx among the targets
[ -n "${rps[nginx]:-}" ] && n_rps=$(echo "${rps[nginx]}" | median)
for t in "${targets[@]}"; do
  q=$(echo "${rps[$t]}" | median); a=$(echo "${lat50[$t]}" | median); b=$(echo "${lat99[$t]}" | median)
  c=$([ -n "${pid_of[$t]:-}" ] && printf '%.0f' "$(echo "${cpu[$t]}" | median)" || echo -)
  u=$([ -n "${pid_of[$t]:-}" ] && printf '%.1f' "$(echo "${cpu_user[$t]}" | median)" || echo -)
  r=$([ -n "$n_rps" ] && printf '%.2fx' "$(echo "$q / $n_rps" | bc -l)" || echo -)
  printf '| %s | %.0f | %s | %s | %s | %.0f | %.0f | %s | %s |\n' "$t" "$q" "$r" "$c" "$u" "$a" "$b" \
    "$([ "$t" = direct ] && echo - || printf '%.0f' "$(echo "$a - $d50" | bc -l)")" \
    "$(for v in ${rps[$t]}; do printf '%.0f ' "$v"; done | sed 's/ $//')"
done

# System calls a request, counted in the kernel by perf stat on syscall tracepoints (cheap, unlike
# perf trace or strace, whose cost per call changes what an early read finds) over one more
# throughput run of each proxy.
if [ -n "${SYSCALLS:-}" ]; then
  command -v perf >/dev/null || { echo "SYSCALLS=1 needs perf"; exit 1; }
  printf '\nSystem calls a request (perf stat over %ss at %s connections)\n\n' "$duration" "$conns"
  printf '| path | requests | all | reads | reads that found nothing | writes | epoll_wait | epoll_ctl | context switches | page faults |\n'
  printf '|---|---|---|---|---|---|---|---|---|---|\n'
  for t in "${targets[@]}"; do
    [ -n "${pid_of[$t]:-}" ] || continue
    procs=$(procs_of "$t")
    perf stat -x, -o "$work/syscalls-$t.csv" -p "$procs" -e raw_syscalls:sys_enter \
      -e syscalls:sys_exit_recvfrom -e syscalls:sys_exit_read -e syscalls:sys_exit_readv -e syscalls:sys_exit_recvmsg \
      -e syscalls:sys_exit_recvfrom --filter 'ret == -11' -e syscalls:sys_exit_read --filter 'ret == -11' \
      -e syscalls:sys_exit_readv --filter 'ret == -11' -e syscalls:sys_exit_recvmsg --filter 'ret == -11' \
      -e syscalls:sys_enter_sendmsg -e syscalls:sys_enter_writev -e syscalls:sys_enter_sendto -e syscalls:sys_enter_write \
      -e syscalls:sys_enter_epoll_wait -e syscalls:sys_enter_epoll_ctl -e context-switches -e page-faults &
    counter=$!
    read -r q a b e < <(run "$t" "$(url_of "$t")" "$conns")
    kill -INT "$counter"; wait "$counter" 2>/dev/null || true
    # The events in the order given: all, 4 reads, 4 reads with EAGAIN, 4 writes, epoll_wait, epoll_ctl,
    # context switches, page faults.
    awk -F, -v n="$(echo "$q * $duration" | bc -l)" -v t="$t" '
      $1 ~ /^[0-9]+$/ { v[++k] = $1 }
      END {
        printf "| %s | %d | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f | %.3f | %.3f |\n", t, n, v[1] / n, (v[2] + v[3] + v[4] + v[5]) / n,
          (v[6] + v[7] + v[8] + v[9]) / n, (v[10] + v[11] + v[12] + v[13]) / n, v[14] / n, v[15] / n, v[16] / n, v[17] / n
      }' "$work/syscalls-$t.csv"
  done
fi

# Where each proxy's time goes: cpu-clock samples over one more throughput run.
if [ -n "${PROFILE:-}" ]; then
  command -v perf >/dev/null || { echo "PROFILE=DIR needs perf"; exit 1; }
  mkdir -p "$PROFILE"
  profile=$(cd "$PROFILE" && pwd)
  for t in "${targets[@]}"; do
    [ -n "${pid_of[$t]:-}" ] || continue
    procs=$(procs_of "$t")
    perf record -q -e cpu-clock -F 4000 -o "$profile/$t.data" -p "$procs" 2>/dev/null &
    recorder=$!
    read -r q a b e < <(run "$t" "$(url_of "$t")" "$conns")
    kill -INT "$recorder"; wait "$recorder" 2>/dev/null || true
    perf report -q -i "$profile/$t.data" --no-children --sort dso,sym --percent-limit 0.3 2>/dev/null >"$profile/$t.txt" || true
    printf '\n%s at %.0f requests/s: where its time went (%s/%s.txt)\n' "$t" "$q" "$PROFILE" "$t"
    head -25 "$profile/$t.txt"
  done
fi
