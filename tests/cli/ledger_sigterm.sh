#!/usr/bin/env bash
# SIGTERM under load: every request a client got an answer to has its ledger record, and no
# record is there for a request nobody answered.
set -euo pipefail
build=$(cd "${1:?usage: ledger_sigterm.sh BUILD_DIR}" && pwd)
source "$(dirname "$0")/../support/procs.sh"
fail() { echo "FAIL: $*"; tail -5 "$work/tollgate.log"; exit 1; }
command -v sqlite3 >/dev/null || fail "sqlite3 is not installed (deploy/setup.sh installs it)"

"$build/tollgate-fake-upstream" --port 0 >"$work/fake.log" 2>&1 &
pids+=($!)
upstream=$(wait_listening "$work/fake.log")
cat >"$work/tollgate.yaml" <<YAML
store: {sqlite: $work/ledger.db}
server: {listen: "127.0.0.1:0", threads: 2, access_log: "off", shutdown_timeout: 10s}
keys: [{name: load, key: tg-load}]
backends: [{name: fake, kind: openai, base_url: "$upstream/v1"}]
routes: [{model: m, targets: [{backend: fake}]}]
YAML
"$build/tollgate" serve --config "$work/tollgate.yaml" >"$work/tollgate.log" 2>&1 &
gateway=$!
url=$(wait_listening "$work/tollgate.log")

# Four clients, stream and not, each writing the status of every request it sent (000: none).
clients=()
for n in 1 2 3 4; do
  stream=$([ $((n % 2)) -eq 0 ] && echo true || echo false)
  (
    for i in $(seq 1 400); do
      code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 10 "$url/v1/chat/completions" \
        -H 'Authorization: Bearer tg-load' \
        -d "{\"model\":\"m\",\"stream\":$stream,\"messages\":[{\"role\":\"user\",\"content\":\"load $n $i\"}]}" || true)
      echo "$code"
      [ "$code" = 000 ] && break  # the gateway is gone
    done >"$work/codes.$n"
  ) &
  clients+=($!)
done
sleep 1.5
kill -TERM "$gateway"
wait "$gateway" || fail "tollgate exited with an error on SIGTERM"
for c in "${clients[@]}"; do wait "$c"; done

answered=$(cat "$work"/codes.* | grep -vc '^000$' || true)
records=$(sqlite3 "$work/ledger.db" 'SELECT count(*) FROM usage_ledger')
ok=$(cat "$work"/codes.* | grep -c '^200$' || true)
with_usage=$(sqlite3 "$work/ledger.db" 'SELECT count(*) FROM usage_ledger WHERE status = 200 AND completion_tokens > 0')
echo "answered $answered (200: $ok), ledger records $records (200 with usage: $with_usage)"
[ "$answered" -gt 20 ] || fail "too little load reached the gateway before SIGTERM"
[ "$records" -eq "$answered" ] || fail "ledger records ($records) differ from answered requests ($answered)"
[ "$with_usage" -eq "$ok" ] || fail "200 records with usage ($with_usage) differ from 200 answers ($ok)"
echo "ledger: 1 passed, 0 failed"
