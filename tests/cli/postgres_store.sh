#!/usr/bin/env bash
# Three replicas over one real PostgreSQL server and one real redis-server (both started here):
# the schema migrated by tollgate, a key created and revoked through one replica's admin API seen
# by the others within 2 s, an rpm limit held in total over the three through Redis, and a ledger
# that holds exactly the requests answered while PostgreSQL is stopped and started again under
# load spread over the replicas, also for a replica that stops before PostgreSQL is back.
# (redis_limits.sh takes the Redis side further: budgets, max_concurrency, Redis killed.)
set -euo pipefail
build=$(cd "${1:?usage: postgres_store.sh BUILD_DIR}" && pwd)
source "$(dirname "$0")/../support/procs.sh"
source "$(dirname "$0")/../support/servers.sh"
fail() { echo "FAIL: $*"; for f in "$work"/replica*.log; do echo "== $f"; tail -8 "$f"; done; exit 1; }

start_postgres
start_redis
"$build/tollgate-fake-upstream" --port 0 >"$work/fake.log" 2>&1 &
pids+=($!)
upstream=$(wait_listening "$work/fake.log")

declare -A url pid
start_replica() {  # NAME: a replica with its own spool folder
  cat >"$work/$1.yaml" <<YAML
store: {postgres: "$pg_url", spool: $work/spool-$1, flush_interval: 100ms}
limits: {redis: "$redis_url", on_redis_down: local}
server: {listen: "127.0.0.1:0", threads: 2, access_log: "off", admin_key: tg-admin-0123456789, shutdown_timeout: 10s}
keys: [{name: load, key: tg-load}, {name: r30, key: tg-r30, rpm: 30}]
backends: [{name: fake, kind: openai, base_url: "$upstream/v1"}]
routes: [{model: m, targets: [{backend: fake}]}]
YAML
  "$build/tollgate" serve --config "$work/$1.yaml" >"$work/replica-$1.log" 2>&1 &
  pid[$1]=$!
  pids+=($!)
  url[$1]=$(wait_listening "$work/replica-$1.log")
}
start_replica a
start_replica b
start_replica c

version=$(psql_q "SELECT max(version) FROM schema_migrations")
[ "$version" = 5 ] || fail "schema version $version, expected 5"
grep -q "schema migrated to version 5 (usage ledger: cache_write_tokens)" "$work"/replica-*.log || fail "no replica logged the migration"
echo "schema: version $version, migrated once by one replica"

# A key made on replica a works on replica b within 2 s, with its priority; revoked on a, b refuses
# it within 2 s.
chat() {  # URL KEY -> HTTP status
  curl -s -o /dev/null -w '%{http_code}' --max-time 10 "$1/v1/chat/completions" -H "Authorization: Bearer $2" \
    -d '{"model":"m","messages":[{"role":"user","content":"hi"}]}' || true
}
secret=$(curl -sf "${url[a]}/admin/keys" -H 'Authorization: Bearer tg-admin-0123456789' -d '{"name":"team","priority":"low"}' |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')
wait_status() {  # URL KEY STATUS -> milliseconds until STATUS (fails after 2 s)
  local start=$(date +%s%N) now
  while true; do
    [ "$(chat "$1" "$2")" = "$3" ] && { echo $(( ($(date +%s%N) - start) / 1000000 )); return 0; }
    now=$(date +%s%N)
    [ $(( (now - start) / 1000000 )) -gt 2000 ] && return 1
    sleep 0.05
  done
}
seen=$(wait_status "${url[b]}" "$secret" 200) || fail "a key created on replica a did not work on b within 2 s"
seen_c=$(wait_status "${url[c]}" "$secret" 200) || fail "a key created on replica a did not work on c within 2 s"
listed=$(curl -sf "${url[c]}/admin/keys/team" -H 'Authorization: Bearer tg-admin-0123456789' |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["priority"])')
[ "$listed" = low ] || fail "replica c lists the key's priority as '$listed', not low"
# Its priority raised on replica a (PATCH): replica b's requests of it are high priority within 2 s.
patched_ms=$(date +%s%3N)
curl -sf -X PATCH "${url[a]}/admin/keys/team" -H 'Authorization: Bearer tg-admin-0123456789' \
  -d '{"priority":"high"}' >/dev/null || fail "PATCH of the key's priority"
promoted=""
start=$(date +%s%N)
for i in $(seq 1 60); do
  curl -s -o /dev/null --max-time 10 "${url[b]}/v1/chat/completions" -H "Authorization: Bearer $secret" \
    -H "x-request-id: promoted-$i" -d '{"model":"m","messages":[{"role":"user","content":"hi"}]}' || true
  sleep 0.05
  [ "$(psql_q "SELECT count(*) FROM usage_ledger WHERE key = 'team' AND priority = 2")" -gt 0 ] && { promoted=1; break; }
done
promoted_ms=$(( ($(date +%s%N) - start) / 1000000 ))
[ -n "$promoted" ] && [ "$promoted_ms" -le 3000 ] || fail "replica b did not apply the priority changed on a ($promoted_ms ms)"
echo "priority: made low on a, listed by c; raised on a, applied by b within ${promoted_ms} ms (ledger included)"
curl -sf -X POST "${url[a]}/admin/keys/team/revoke" -H 'Authorization: Bearer tg-admin-0123456789' >/dev/null
gone=$(wait_status "${url[b]}" "$secret" 401) || fail "a key revoked on replica a still worked on b after 2 s"
gone_c=$(wait_status "${url[c]}" "$secret" 401) || fail "a key revoked on replica a still worked on c after 2 s"
echo "keys: created on a, usable on b after ${seen} ms and on c ${seen_c} ms later; revoked on a, refused by b" \
  "after ${gone} ms and by c ${gone_c} ms later"

# rpm 30 shared through Redis: 3 clients, one a replica, 40 requests each as fast as they go. The
# bucket starts full (30) and refills one every 2 s, so about 30 are admitted in total, not 90.
start=$(date +%s%N)
clients=()
for r in a b c; do
  ( for i in $(seq 1 40); do chat "${url[$r]}" tg-r30; echo; done >"$work/r30.$r" ) &
  clients+=($!)
done
for c in "${clients[@]}"; do wait "$c"; done
elapsed_ms=$(( ($(date +%s%N) - start) / 1000000 ))
admitted=$(cat "$work"/r30.* | grep -c '^200$' || true)
limited=$(cat "$work"/r30.* | grep -c '^429$' || true)
refill=$(( elapsed_ms / 2000 + 1 ))
echo "rpm 30 over three replicas: $admitted admitted, $limited refused with 429 in $elapsed_ms ms (unshared: 90)"
[ $((admitted + limited)) -eq 120 ] || fail "answers other than 200 and 429 to the rpm key"
[ "$admitted" -ge 28 ] && [ "$admitted" -le $((30 + refill + 2)) ] ||
  fail "$admitted admitted for rpm 30 in $elapsed_ms ms over three replicas (the limit is not shared)"

# Load on the three replicas while PostgreSQL stops for 3 s and starts again.
clients=()
replica_of=(c a b)
for n in 1 2 3 4 5 6; do
  r=${replica_of[$((n % 3))]}
  stream=$([ $n -le 3 ] && echo true || echo false)
  (
    for i in $(seq 1 100); do
      curl -s -o /dev/null -w '%{http_code}\n' --max-time 10 "${url[$r]}/v1/chat/completions" \
        -H 'Authorization: Bearer tg-load' \
        -d "{\"model\":\"m\",\"stream\":$stream,\"messages\":[{\"role\":\"user\",\"content\":\"load $n $i\"}]}" || echo 000
      sleep 0.02
    done >"$work/codes.$n"
  ) &
  clients+=($!)
done
sleep 1
pg_stop
echo "postgres stopped under load"
sleep 3
# Replica b stops while PostgreSQL is down: its records stay in its spool file.
kill -TERM "${pid[b]}"
wait "${pid[b]}" || fail "replica b exited with an error on SIGTERM"
pg_start
echo "postgres started again"
for c in "${clients[@]}"; do wait "$c"; done
grep -q "spooled to local disk" "$work/replica-a.log" || fail "replica a never spooled a batch while PostgreSQL was down"
ls "$work/spool-b"/ledger-*.jsonl >/dev/null 2>&1 || fail "replica b left no spool file when it stopped during the outage"
# Replica b again, on the same spool folder: it writes what the earlier process left.
start_replica b
kill -TERM "${pid[a]}" "${pid[b]}" "${pid[c]}"
wait "${pid[a]}" || fail "replica a exited with an error on SIGTERM"
wait "${pid[b]}" || fail "replica b exited with an error on SIGTERM"
wait "${pid[c]}" || fail "replica c exited with an error on SIGTERM"

answered=$(cat "$work"/codes.* | grep -vc '^000$' || true)
ok=$(cat "$work"/codes.* | grep -c '^200$' || true)
records=$(psql_q "SELECT count(*) FROM usage_ledger WHERE key = 'load'")
ids=$(psql_q "SELECT count(DISTINCT record_id) FROM usage_ledger WHERE key = 'load'")
left=$(find "$work" -path '*/spool-*/ledger-*.jsonl' -exec cat {} + | wc -l)
# Clients 1 and 4 went to replica a, 2 and 5 to b, 3 and 6 to c.
on_ac=$(cat "$work/codes.1" "$work/codes.4" "$work/codes.3" "$work/codes.6" | grep -c '^200$' || true)
echo "answered $answered (200: $ok; replicas a and c, up throughout: $on_ac of 400), ledger records $records" \
  "(distinct $ids), left in spools $left"
# Replicas a and c answered everything while PostgreSQL was away; b's clients got no answer (000)
# only while b was stopped.
[ "$on_ac" -eq 400 ] || fail "replicas a and c answered $on_ac of 400 with 200 (the request path must not wait on PostgreSQL)"
[ "$(cat "$work"/codes.* | grep -vc '^200$\|^000$' || true)" -eq 0 ] || fail "answers other than 200"
[ "$records" -eq "$answered" ] || fail "ledger records ($records) differ from answered requests ($answered)"
[ "$left" -eq 0 ] || fail "$left records still in a spool"
# Every record has its cache writes (none here: an OpenAI-style upstream), the spooled ones too.
[ "$(psql_q "SELECT count(*) FROM usage_ledger WHERE key = 'load' AND cache_write_tokens = 0")" -eq "$records" ] ||
  fail "the load's rows have no cache_write_tokens"
# Every record carries its request's priority (the key's default, normal), the spooled ones too.
[ "$(psql_q "SELECT count(*) FROM usage_ledger WHERE key = 'load' AND priority = 1")" -eq "$records" ] ||
  fail "ledger records without their priority"
# The key made on replica a with priority low: its requests on b and c were low priority until
# it was raised to high.
team_rows=$(psql_q "SELECT count(*) FROM usage_ledger WHERE key = 'team' AND status = 200 AND unix_ms < $patched_ms")
[ "$team_rows" -ge 2 ] || fail "$team_rows ledger rows for the key made on replica a"
[ "$(psql_q "SELECT count(*) FROM usage_ledger WHERE key = 'team' AND status = 200 AND unix_ms < $patched_ms
             AND priority IS DISTINCT FROM 0")" -eq 0 ] ||
  fail "requests of the low-priority key made on replica a were not low priority on the others"
[ "$(psql_q "SELECT count(*) FROM usage_ledger WHERE key = 'team' AND priority NOT IN (0, 2)")" -eq 0 ] ||
  fail "requests of the key with a priority it never had"
[ "$(psql_q "SELECT priority FROM api_keys WHERE name = 'team'")" = 2 ] || fail "the key's priority is not stored"
echo "postgres_store: 1 passed, 0 failed"
