#!/usr/bin/env bash
# Requests/s and latency of one tollgate with its state in process (SQLite ledger, in-memory
# limits) beside one with its state shared (PostgreSQL ledger and keys, Redis limits), on one
# fast local upstream (nginx answering a fixed body). Three keys on the shared one: rpm/tpm
# limits (admitted from local leases), max_concurrency (slots held between requests), and the
# same rpm/tpm key on the single process. Rounds alternate between them so they share the
# machine's noise; medians are printed.
#   tests/perf/replicas_bench.sh build          # ROUNDS=3 DURATION=6 CONNS=32
set -euo pipefail
build=$(cd "${1:-build}" && pwd)
rounds=${ROUNDS:-3}
duration=${DURATION:-6}
conns=${CONNS:-32}
source "$(dirname "$0")/../support/procs.sh"
source "$(dirname "$0")/../support/servers.sh"
command -v wrk >/dev/null || { echo "wrk is not installed (deploy/setup.sh --bench installs it)"; exit 1; }
command -v nginx >/dev/null || { echo "nginx is not installed (deploy/setup.sh --bench installs it)"; exit 1; }

start_postgres
start_redis
up_port=$(free_port)
answer='{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":1,"total_tokens":6}}'
mkdir -p "$work/up"
cat >"$work/up/nginx.conf" <<NGX
worker_processes 1;
error_log $work/up/error.log crit;
pid $work/up/nginx.pid;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:$up_port; location / { default_type application/json; return 200 '$answer'; } }
}
NGX
nginx -p "$work/up" -c "$work/up/nginx.conf" -g 'daemon off;' &
pids+=($!)

for mode in single shared; do
  if [ $mode = single ]; then state="store: {sqlite: $work/single.db}"
  else state="store: {postgres: \"$pg_url\", spool: $work/spool}
limits: {redis: \"$redis_url\"}"; fi
  cat >"$work/$mode.yaml" <<YAML
$state
server: {listen: 127.0.0.1:0, threads: 1, access_log: "off"}
keys:
  - {name: limited, key: tg-limited, rpm: 100000000, tpm: 1000000000}
  - {name: slots, key: tg-slots, max_concurrency: 10000}
backends: [{name: local, kind: openai, base_url: "http://127.0.0.1:$up_port/v1"}]
routes: [{model: m, targets: [{backend: local, price: {input: 1, output: 1}}]}]
YAML
  "$build/tollgate" serve --config "$work/$mode.yaml" 2>"$work/$mode.log" &
  pids+=($!)
done
single=$(wait_listening "$work/single.log")
shared=$(wait_listening "$work/shared.log")

lua() {  # KEY -> script path
  cat >"$work/$1.lua" <<LUA
wrk.method = "POST"
wrk.body = '{"model":"m","messages":[{"role":"user","content":"hello, how are you today?"}],"max_tokens":16}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $1"
done = function(summary, latency, requests)
  io.write(string.format("RESULT %f %d %d %d\n", summary.requests / (summary.duration / 1e6),
    latency:percentile(50), latency:percentile(99), summary.errors.status + summary.errors.connect +
    summary.errors.read + summary.errors.write + summary.errors.timeout))
end
LUA
  echo "$work/$1.lua"
}
declare -A url key
url[single]=$single key[single]=tg-limited
url[shared-lease]=$shared key[shared-lease]=tg-limited
url[shared-slots]=$shared key[shared-slots]=tg-slots
targets=(single shared-lease shared-slots)
declare -A rps lat
for t in "${targets[@]}"; do wrk -t1 -c"$conns" -d2s -s "$(lua "${key[$t]}")" "${url[$t]}/v1/chat/completions" >/dev/null; done
for r in $(seq 1 "$rounds"); do
  for t in "${targets[@]}"; do
    read -r q _ _ e < <(wrk -t1 -c"$conns" -d"${duration}s" -s "$work/${key[$t]}.lua" "${url[$t]}/v1/chat/completions" | awk '/^RESULT/ {print $2, $3, $4, $5}')
    [ "$e" = 0 ] || echo "warning: $t had $e errors in round $r" >&2
    rps[$t]+="$q "
    read -r _ a _ e < <(wrk -t1 -c1 -d"${duration}s" -s "$work/${key[$t]}.lua" "${url[$t]}/v1/chat/completions" | awk '/^RESULT/ {print $2, $3, $4, $5}')
    lat[$t]+="$a "
  done
done
median() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
printf '%-14s %14s %14s\n' path "requests/s" "p50 µs (1 conn)"
for t in "${targets[@]}"; do
  printf '%-14s %14.0f %14s\n' "$t" "$(echo "${rps[$t]}" | median)" "$(echo "${lat[$t]}" | median)"
done
rows=$(psql_q "SELECT count(*) FROM usage_ledger")
echo "ledger rows in PostgreSQL: $rows; Redis round trips: $(curl -s "$shared/metrics" | awk '$1 == "tollgate_limits_redis_round_trips_total" {print $2}')"
