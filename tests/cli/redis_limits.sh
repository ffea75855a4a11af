#!/usr/bin/env bash
# Three replicas sharing per-key limits through one real redis-server and their store through one
# real PostgreSQL (both started here), with the traffic spread over them: an rpm limit holds in
# total, a budget is spent once, leases spare
# the hot path its round trips, and with Redis killed each on_redis_down mode does what it says
# (local: each replica's share; reject: 503), both visible in /readyz and /metrics, until Redis
# is back and the limits are shared again.
set -euo pipefail
build=$(cd "${1:?usage: redis_limits.sh BUILD_DIR}" && pwd)
source "$(dirname "$0")/../support/procs.sh"
source "$(dirname "$0")/../support/servers.sh"
fail() { echo "FAIL: $*"; for f in "$work"/replica-*.log; do echo "== $f"; tail -5 "$f"; done; exit 1; }

start_postgres
start_redis
"$build/tollgate-fake-upstream" --port 0 >"$work/fake.log" 2>&1 &
pids+=($!)
upstream=$(wait_listening "$work/fake.log")
"$build/tollgate-fake-upstream" --port 0 --delay-ms 1500 >"$work/slow.log" 2>&1 &
pids+=($!)
slow=$(wait_listening "$work/slow.log")
dead_port=$(free_port)  # nothing listens there

declare -A url pid
launcher=()  # what start_replica runs the gateway under (faketime for one with its clock ahead)
start_replica() {  # NAME MODE
  cat >"$work/$1.yaml" <<YAML
limits: {redis: "$redis_url", on_redis_down: $2}
store: {postgres: "$pg_url", spool: $work/spool-$1, flush_interval: 100ms}
server: {listen: "127.0.0.1:0", threads: 2, access_log: "off"}
keys:
  - {name: r60, key: tg-r60, rpm: 60}
  - {name: wide, key: tg-wide, rpm: 600000}
  - {name: spend, key: tg-spend, budget: 40/day}
  - {name: conc, key: tg-conc, max_concurrency: 2}
  - {name: conc9, key: tg-conc9, max_concurrency: 9}
  - {name: free, key: tg-free}
backends:
  - {name: fake, kind: openai, base_url: "$upstream/v1"}
  - {name: slow, kind: openai, base_url: "$slow/v1", timeouts: {first_token: 10s, total: 10s}}
  - {name: dead, kind: openai, base_url: "http://127.0.0.1:$dead_port/v1", ejection: {after_failures: 1, cooldown: 30s}}
routes:
  - {model: flaky, targets: [{backend: dead}, {backend: fake}]}
  - {model: m, targets: [{backend: fake, price: {input: 1000000, output: 1000000}}]}
  - {model: slow, targets: [{backend: slow, price: {input: 1, output: 1}}]}
YAML
  "${launcher[@]}" "$build/tollgate" serve --config "$work/$1.yaml" >"$work/replica-$1.log" 2>&1 &
  pid[$1]=$!
  pids+=($!)
  url[$1]=$(wait_listening "$work/replica-$1.log")
}
for r in a b c; do start_replica $r local; done
replicas=(a b c)

chat() {  # URL KEY -> HTTP status ("hi": 2 prompt and 2 completion tokens, cost 4 at these prices)
  curl -s -o /dev/null -w '%{http_code}' --max-time 10 "$1/v1/chat/completions" -H "Authorization: Bearer $2" \
    -d '{"model":"m","messages":[{"role":"user","content":"hi"}]}' || echo 000
}
chat_model() {  # URL MODEL -> HTTP status
  curl -s -o /dev/null -w '%{http_code}' --max-time 10 "$1/v1/chat/completions" -H "Authorization: Bearer tg-free" \
    -d "{\"model\":\"$2\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}" || echo 000
}
metric() { curl -s "$1/metrics" | awk -v m="$2" '$1 == m {print $2}'; }

# rpm 60 over three replicas, as fast as three clients go for R60_SECONDS (10 by default): the
# bucket starts full (60) and refills one a second, so about 70 are admitted in 10 s in total,
# not three times that.
r60_seconds=${R60_SECONDS:-10}
start=$(date +%s%N)
clients=()
for n in 0 1 2; do
  (
    i=0
    while [ $(( ($(date +%s%N) - start) / 1000000 )) -lt $((r60_seconds * 1000)) ]; do
      chat "${url[${replicas[$(( (n + i) % 3 ))]}]}" tg-r60
      echo
      i=$((i + 1))
    done >"$work/r60.$n"
  ) &
  clients+=($!)
done
wait_clients() { for j in "${clients[@]}"; do wait "$j"; done; clients=(); }
wait_clients
elapsed=$(( ($(date +%s%N) - start) / 1000000 ))
sent=$(cat "$work"/r60.* | grep -c . || true)
admitted=$(cat "$work"/r60.* | grep -c '^200$' || true)
expected=$(( 60 + elapsed / 1000 ))
echo "rpm 60 on 3 replicas: $admitted of $sent admitted in $elapsed ms (a shared bucket allows $expected;" \
  "unshared, 3 replicas would allow $((3 * expected)))"
[ "$sent" -gt $((expected + 30)) ] || fail "too little load ($sent requests) to test the limit"
[ "$admitted" -ge $((expected - 3)) ] && [ "$admitted" -le $((expected + 2)) ] ||
  fail "$admitted admitted, expected $expected (-3, +2)"

# A wide limit: requests are admitted from leases, with few round trips to Redis.
trips_before=0
for r in a b c; do
  trips_before=$((trips_before + $(metric "${url[$r]}" tollgate_limits_redis_round_trips_total | cut -d. -f1)))
done
for i in $(seq 1 300); do chat "${url[${replicas[$((i % 3))]}]}" tg-wide; echo; done >"$work/wide"
[ "$(grep -c '^200$' "$work/wide")" -eq 300 ] || fail "a key far under its limit was refused"
trips=0 leased=0
for r in a b c; do
  trips=$((trips + $(metric "${url[$r]}" tollgate_limits_redis_round_trips_total | cut -d. -f1)))
  leased=$((leased + $(metric "${url[$r]}" 'tollgate_limits_admissions_total{via="lease"}' | cut -d. -f1)))
done
echo "leases: 300 requests of a wide key, $leased admitted from a lease; Redis round trips: $((trips - trips_before))"
[ "$leased" -ge 250 ] || fail "only $leased of 300 admitted without a round trip"

# A budget of 40 at 4 a request is 10 requests across all replicas, not 10 on each.
spent=0
for i in $(seq 1 30); do
  chat "${url[${replicas[$((i % 3))]}]}" tg-spend
  echo
  sleep 0.1
done >"$work/spend"
spent=$(grep -c '^200$' "$work/spend" || true)
echo "budget 40 (10 requests) on 3 replicas: $spent admitted of 30"
[ "$spent" -ge 10 ] && [ "$spent" -le 12 ] || fail "budget admitted $spent requests, expected 10 to 12"

# at_once KEY N: N slow requests (an upstream that waits 1.5 s) at once, spread over the three
# replicas; prints how many were admitted (200).
at_once() {
  for n in $(seq 0 $(($2 - 1))); do
    { printf '%s ' "$(date +%s%3N)"  # when it was sent, then its status and seconds taken
      curl -s -o /dev/null -w '%{http_code} %{time_total}\n' --max-time 10 "${url[${replicas[$((n % ${#replicas[@]}))]}]}/v1/chat/completions" \
        -H "Authorization: Bearer $1" \
        -d '{"model":"slow","messages":[{"role":"user","content":"slow"}]}'; } >"$work/at_once.$1.$n" &
    clients+=($!)
  done
  wait_clients
  cat "$work"/at_once."$1".* | grep -c '^[0-9]* 200 ' || true
}

# max_concurrency 2 across replicas: two run, the rest are refused. A replica whose heartbeat is
# more than 3 s late (by Redis's clock) has its slots taken back by the others, so that a dead one
# holds none. CI once admitted a third request, for a cause not known: a replica stalled that long,
# or a clock step (which, since liveness is on Redis's clock, no longer counts). A first try that
# is off is reported with what would explain it, and the check made again once its requests ended.
running=$(at_once tg-conc 6)
if [ "$running" -ne 2 ]; then
  echo "max_concurrency 2 on 3 replicas: $running of 6 admitted on a first try; once more after 2 s"
  # What would explain it: each request's replica, when it was sent (ms), its status and seconds,
  # the slots Redis holds for each replica, and each replica's last heartbeat.
  for n in 0 1 2 3 4 5; do echo "  request $n on ${replicas[$((n % 3))]}: $(cat "$work/at_once.tg-conc.$n")"; done
  echo "  slots: $(redis-cli -p "$redis_port" HGETALL 'tollgate:{conc}:slots' | tr '\n' ' ')"
  echo "  heartbeats: $(redis-cli -p "$redis_port" ZRANGE tollgate:replicas 0 -1 WITHSCORES | tr '\n' ' ')at $(date +%s%3N)"
  sleep 2
  running=$(at_once tg-conc 6)
fi
echo "max_concurrency 2 on 3 replicas: $running of 6 simultaneous requests admitted"
[ "$running" -eq 2 ] || fail "max_concurrency 2 admitted $running of 6 at once"

# max_concurrency 9 on 3 replicas: a replica keeps up to its share (3) of the slots its finished
# requests leave, so one client's requests one after another mostly skip Redis...
lease_before=$(metric "${url[a]}" 'tollgate_limits_admissions_total{via="lease"}' | cut -d. -f1)
for i in $(seq 1 60); do chat "${url[a]}" tg-conc9; echo; done >"$work/conc9"
[ "$(grep -c '^200$' "$work/conc9")" -eq 60 ] || fail "a key under its max_concurrency was refused"
held=$(( $(metric "${url[a]}" 'tollgate_limits_admissions_total{via="lease"}' | cut -d. -f1) - lease_before ))
echo "max_concurrency 9, 60 requests one after another on one replica: $held took a slot an earlier one left"
[ "$held" -ge 30 ] || fail "only $held of 60 sequential requests reused a held slot"
# ... and gives them back when idle: then 12 slow requests at once, 4 a replica, run 9.
sleep 0.5
running=$(at_once tg-conc9 12)
echo "max_concurrency 9 on 3 replicas after idle: $running of 12 simultaneous requests admitted"
[ "$running" -eq 9 ] || fail "max_concurrency 9 admitted $running of 12 at once (held slots not given back, or too many)"

# A replica whose clock is 30 s ahead of the others' (they may run on hosts whose clocks differ,
# or a clock may step): replicas are judged live by Redis's clock, so it neither takes the others
# for gone (and their slots for free) nor counts only itself; max_concurrency 2 over the four
# still admits 2. Then it stops, and the others count three again within the live window.
faketime_lib=$(ls /usr/lib/*/faketime/libfaketimeMT.so.1 2>/dev/null | head -1 || true)
if [ -n "$faketime_lib" ]; then
  # The library itself, not the faketime program, which would run the gateway as its child.
  launcher=(env LD_PRELOAD="$faketime_lib" FAKETIME=+30s FAKETIME_DONT_FAKE_MONOTONIC=1)
  start_replica e local
  launcher=()
  for r in a e; do
    for _ in $(seq 1 30); do [ "$(metric "${url[$r]}" tollgate_limits_replicas)" = 4 ] && break; sleep 0.1; done
    [ "$(metric "${url[$r]}" tollgate_limits_replicas)" = 4 ] || fail "replica $r counts $(metric "${url[$r]}" tollgate_limits_replicas) live replicas, not 4, with e's clock 30 s ahead"
  done
  replicas=(a b c e)
  running=$(at_once tg-conc 8)
  replicas=(a b c)
  echo "max_concurrency 2 on 4 replicas, one with its clock 30 s ahead: $running of 8 simultaneous requests admitted"
  [ "$running" -eq 2 ] || fail "max_concurrency 2 admitted $running of 8 at once with a replica's clock 30 s ahead"
  kill "${pid[e]}"
  wait "${pid[e]}" 2>/dev/null || true
  for _ in $(seq 1 60); do [ "$(metric "${url[a]}" tollgate_limits_replicas)" = 3 ] && break; sleep 0.1; done
  [ "$(metric "${url[a]}" tollgate_limits_replicas)" = 3 ] || fail "replica e still counted live 6 s after it stopped"
else
  echo "a replica with its clock ahead: not checked (libfaketime is not installed; deploy/setup.sh --test installs it)"
fi

# A backend ejected by replica a is avoided by b and c within a second, though they never sent
# it anything (no active health checks here).
backend_state() { curl -s "$1/readyz" | grep -o "\"$2\":\"[a-z]*\"" | cut -d'"' -f4; }
[ "$(backend_state "${url[b]}" dead)" = up ] || fail "replica b thinks the dead backend is down before anyone tried it"
[ "$(chat_model "${url[a]}" flaky)" = 200 ] || fail "the flaky route did not fail over to the good backend"
start=$(date +%s%N)  # a has ejected it by the time it answers
heard=""
while [ $(( ($(date +%s%N) - start) / 1000000 )) -lt 1000 ]; do
  if [ "$(backend_state "${url[b]}" dead)" = down ] && [ "$(backend_state "${url[c]}" dead)" = down ]; then
    heard=$(( ($(date +%s%N) - start) / 1000000 ))
    break
  fi
  sleep 0.02
done
[ -n "$heard" ] || fail "replicas b and c did not hear of the ejection within 1 s"
echo "ejection: backend ejected on replica a, down on b and c $heard ms after a answered"

# Redis killed: mode local admits each replica's share of rpm 60 (20) and says Redis is down.
stop_redis
sleep 1
curl -s "${url[a]}/readyz" | grep -q '"redis":"down"' || fail "/readyz does not say Redis is down"
[ "$(metric "${url[a]}" tollgate_limits_redis_up)" = 0 ] || fail "/metrics does not say Redis is down"
[ "$(chat "${url[a]}" tg-free)" = 200 ] || fail "a key without limits was refused while Redis was down"
for i in $(seq 1 40); do chat "${url[a]}" tg-r60; echo; done >"$work/local"
share=$(grep -c '^200$' "$work/local" || true)
echo "redis down, on_redis_down local: replica a admitted $share of 40 for rpm 60 (its share: 20)"
[ "$share" -ge 20 ] && [ "$share" -le 22 ] || fail "local share admitted $share, expected 20"

# Mode reject: a replica configured so answers 503 for limited keys while Redis is down.
start_replica d reject
[ "$(chat "${url[d]}" tg-r60)" = 503 ] || fail "on_redis_down reject did not answer 503"
[ "$(chat "${url[d]}" tg-free)" = 200 ] || fail "on_redis_down reject refused a key without limits"
curl -s "${url[d]}/readyz" | grep -q '"on_redis_down":"reject"' || fail "/readyz does not name the mode"
echo "redis down, on_redis_down reject: 503 for a limited key, 200 for a key without limits"

# Redis back (empty: it kept nothing): limits are shared again within a second or two.
start_redis
for r in d a b c; do
  for _ in $(seq 1 30); do [ "$(metric "${url[$r]}" tollgate_limits_redis_up)" = 1 ] && break; sleep 0.1; done
  [ "$(metric "${url[$r]}" tollgate_limits_redis_up)" = 1 ] || fail "replica $r did not see Redis come back"
done
t0=$(date +%s%N)
[ "$(chat "${url[d]}" tg-r60)" = 200 ] || fail "limits did not recover when Redis came back"
for i in $(seq 1 90); do chat "${url[${replicas[$((i % 3))]}]}" tg-r60; echo; done >"$work/back"
elapsed_ms=$(( ($(date +%s%N) - t0) / 1000000 ))
back=$(grep -c '^200$' "$work/back" || true)
# The fresh bucket holds 60, d's first request took one, and it refills at one a second while
# the 90 are sent (a slow machine takes several seconds): at most 59 + the seconds elapsed + 1.
most=$(( 59 + elapsed_ms / 1000 + 1 ))
echo "redis back: $back of 90 admitted for rpm 60 over 3 replicas in $elapsed_ms ms (a fresh bucket: 59 left, and its refill: at most $most)"
[ "$back" -ge 59 ] && [ "$back" -le "$most" ] || fail "after Redis came back, $back admitted in $elapsed_ms ms; expected 59 to $most"
echo "redis_limits: 1 passed, 0 failed"
