#!/usr/bin/env bash
# A real Prometheus scrapes a running tollgate: the target is up and the request count it stores
# equals the requests sent.
set -euo pipefail
build=$(cd "${1:?usage: prometheus_scrape.sh BUILD_DIR}" && pwd)
source "$(dirname "$0")/../support/procs.sh"
fail() { echo "FAIL: $*"; tail -20 "$work/prometheus.log" 2>/dev/null; exit 1; }
command -v prometheus >/dev/null || fail "prometheus is not installed (deploy/setup.sh installs it)"

"$build/tollgate-fake-upstream" --port 0 >"$work/fake.log" 2>&1 &
pids+=($!)
upstream=$(wait_listening "$work/fake.log")
cat >"$work/tollgate.yaml" <<YAML
server: {listen: "127.0.0.1:0", threads: 2, access_log: "off"}
keys: [{name: scrape, key: tg-scrape, budget: 100/day}]
backends: [{name: fake, kind: openai, base_url: "$upstream/v1"}]
routes: [{model: m, targets: [{backend: fake, price: {input: 1, output: 1}}]}]
YAML
"$build/tollgate" serve --config "$work/tollgate.yaml" >"$work/tollgate.log" 2>&1 &
pids+=($!)
url=$(wait_listening "$work/tollgate.log")
for i in 1 2 3 4 5; do
  stream=$([ $((i % 2)) -eq 0 ] && echo true || echo false)
  curl -sf "$url/v1/chat/completions" -H 'Authorization: Bearer tg-scrape' \
    -d "{\"model\":\"m\",\"stream\":$stream,\"messages\":[{\"role\":\"user\",\"content\":\"count me\"}]}" >/dev/null
done

# A free port for Prometheus' own web server, below the ephemeral ports (32768 up), which other
# tests' connections take at any time.
free_port() {
  while :; do
    port=$(shuf -i 20000-32000 -n 1)
    (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null || return 0
  done
}
# The shipped scrape config, checked by promtool, then run with this gateway's address and a
# short interval.
here=$(cd "$(dirname "$0")/../.." && pwd)
promtool check config "$here/deploy/prometheus.yml" >"$work/promtool.log" 2>&1 ||
  { cat "$work/promtool.log"; echo "deploy/prometheus.yml does not pass promtool"; exit 1; }
sed -e "s|\"127.0.0.1:8080\"|\"${url#http://}\"|" -e 's|scrape_interval: 15s|scrape_interval: 1s|' \
  "$here/deploy/prometheus.yml" >"$work/prometheus.yml"
grep -q "${url#http://}" "$work/prometheus.yml" || { echo "could not point deploy/prometheus.yml at the gateway"; exit 1; }
# Started again on another port if something took its port between the check and its bind.
for try in 1 2 3; do
  free_port
  prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/data" \
    --web.listen-address="127.0.0.1:$port" >"$work/prometheus.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 1 60); do  # up to 30 s for its web server to start or fail
    grep -qE "address already in use|Start listening for connections" "$work/prometheus.log" && break
    sleep 0.5
  done
  grep -q "address already in use" "$work/prometheus.log" || break
  wait "${pids[-1]}" 2>/dev/null || true
done

query() { curl -sf -m 5 "http://127.0.0.1:$port/api/v1/query" --data-urlencode "query=$1" 2>/dev/null || true; }
# Prometheus takes a while to start (its storage first) on a loaded machine: up to 75 s for the
# first scrapes to be stored, well inside the test's time limit.
deadline=$((SECONDS + 75))
while [ "$SECONDS" -lt "$deadline" ]; do
  got=$(query 'sum(tollgate_requests_total{model="m",status_class="2xx"})')
  if echo "$got" | grep -q '"value":\[[0-9.]*,"5"\]'; then
    query 'up{job="tollgate"}' | grep -q '"value":\[[0-9.]*,"1"\]' || fail "target not up"
    query 'sum(tollgate_tokens_total{key="scrape",kind="completion"})' | grep -q '"value"' || fail "no token series"
    query 'tollgate_key_budget_remaining{key="scrape"}' | grep -q '"value"' || fail "no budget series"
    query 'sum(tollgate_time_to_first_token_seconds_count)' | grep -q '"value"' || fail "no time-to-first-token series"
    # Every query of the Grafana dashboard is valid PromQL over these metrics.
    dashboard=${DASHBOARD:-$(cd "$(dirname "$0")/../../deploy/grafana" && pwd)/tollgate.json}
    checked=0
    while IFS= read -r expr; do
      answer=$(query "${expr//\$__rate_interval/1m}")
      echo "$answer" | grep -q '"status":"success"' || fail "dashboard query rejected: $expr"
      checked=$((checked + 1))
    done < <(node -e 'for (const p of require(process.argv[1]).panels) for (const t of p.targets) console.log(t.expr)' "$dashboard")
    [ "$checked" -ge 10 ] || fail "only $checked dashboard queries found in $dashboard"
    echo "prometheus: scraped 5 requests, dashboard queries valid; 1 passed, 0 failed"
    exit 0
  fi
  sleep 0.5
done
fail "Prometheus never stored the 5 requests (last answer: $got)"
