#!/usr/bin/env bash
# `tollgate keys` on the real binary against a running gateway: a created key is printed once
# and works within a second; list shows it without the secret; revoke shuts it out.
set -euo pipefail
build=$(cd "${1:?usage: keys.sh BUILD_DIR}" && pwd)
source "$(dirname "$0")/../support/procs.sh"
fail() { echo "FAIL: $*"; tail -5 "$work/tollgate.log" 2>/dev/null; exit 1; }
tg="$build/tollgate"

"$build/tollgate-fake-upstream" --port 0 >"$work/fake.log" 2>&1 &
pids+=($!)
upstream=$(wait_listening "$work/fake.log")
cat >"$work/tollgate.yaml" <<YAML
store: {sqlite: $work/tollgate.db}
server: {listen: "127.0.0.1:0", threads: 1, access_log: stdout}
keys: [{name: ops, key: tg-static-ops-key}]
backends: [{name: fake, kind: openai, base_url: "$upstream/v1"}]
routes:
  - {model: deepseek-chat, targets: [{backend: fake, price: {input: 1, output: 2}}]}
  - {model: qwen-max, targets: [{backend: fake}]}
YAML

# Usage errors: exit 2 with help; refusals: exit 1 with a reason.
set +e
"$tg" keys create --config "$work/tollgate.yaml" --rpm >/dev/null 2>&1; [ $? -eq 2 ] || fail "--rpm without a value"
"$tg" keys create --config "$work/tollgate.yaml" --name x --rpm lots >/dev/null 2>&1; [ $? -eq 2 ] || fail "--rpm lots"
"$tg" keys create --config "$work/tollgate.yaml" --name x --budget 5/week 2>"$work/err" >/dev/null; [ $? -eq 1 ] || fail "bad budget"
grep -q "AMOUNT/day" "$work/err" || fail "bad budget message: $(cat "$work/err")"
for bad in urgent 10 -1 ""; do
  "$tg" keys create --config "$work/tollgate.yaml" --name x --priority "$bad" 2>"$work/err" >/dev/null
  [ $? -eq 1 ] || fail "bad priority '$bad' was not refused"
  grep -q "'priority' must be high, normal, low or a number from 0 to 9" "$work/err" || fail "bad priority message: $(cat "$work/err")"
done
"$tg" keys create --config "$work/tollgate.yaml" --name ops 2>"$work/err" >/dev/null; [ $? -eq 1 ] || fail "static name"
"$tg" keys revoke --config "$work/tollgate.yaml" --name nobody 2>/dev/null; [ $? -eq 1 ] || fail "revoke unknown"
"$tg" keys list 2>/dev/null; [ $? -eq 1 ] || fail "list without --config"
set -e
"$tg" keys --help | grep -q "keys create" || fail "keys --help"

"$tg" serve --config "$work/tollgate.yaml" >"$work/tollgate.log" 2>&1 &
pids+=($!)
url=$(wait_listening "$work/tollgate.log")

key=$("$tg" keys create --config "$work/tollgate.yaml" --name team-a --models 'deepseek-*' --rpm 600 \
      --budget 50/month --expires 2099-12-31 --priority high 2>/dev/null)
[[ "$key" =~ ^tg-[A-Za-z0-9]{43}$ ]] || fail "created key looks wrong: $key"
json=$("$tg" keys create --config "$work/tollgate.yaml" --name team-b --json 2>/dev/null)
grep -q '"key":"tg-' <<<"$json" || fail "--json lacks the key: $json"
grep -q '"priority":"normal"' <<<"$json" || fail "--json lacks the default priority: $json"
json=$("$tg" keys create --config "$work/tollgate.yaml" --name batch --priority 0 --json 2>/dev/null)
grep -q '"priority":"low"' <<<"$json" || fail "--priority 0 is not low: $json"
batch_key=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["key"])' "$json")

call() {  # call KEY MODEL -> status
  curl -s -o /dev/null -w '%{http_code}' "$url/v1/chat/completions" -H "Authorization: Bearer $1" \
    -d "{\"model\":\"$2\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}"
}
answers() {  # answers KEY MODEL STATUS: a call gets STATUS
  [ "$(call "$1" "$2")" = "$3" ]
}
logged() {  # logged PATTERN: the access log (written by a background thread) has a matching line
  grep -q "$1" "$work/tollgate.log"
}
wait_for answers "$key" deepseek-chat 200 || fail "the new key was not accepted"  # the store is polled once a second
[ "$(call "$key" qwen-max)" = 403 ] || fail "a model outside --models was not refused"

list=$("$tg" keys list --config "$work/tollgate.yaml")
grep -q "team-a" <<<"$list" || fail "list lacks team-a: $list"
grep -q "deepseek-\*" <<<"$list" || fail "list lacks the models"
grep -q "50/month" <<<"$list" || fail "list lacks the budget"
grep -q "2099-12-31" <<<"$list" || fail "list lacks the expiry"
grep -E -q "^team-a +.* high +600 " <<<"$list" || fail "list lacks team-a's priority: $list"
grep -E -q "^team-b +.* normal +0 " <<<"$list" || fail "list lacks team-b's priority: $list"
grep -E -q "^batch +.* low +0 " <<<"$list" || fail "list lacks batch's priority: $list"
[ "$(sqlite3 "$work/tollgate.db" "SELECT priority FROM api_keys WHERE name = 'team-a'")" = 2 ] || fail "team-a's priority is not stored"
grep -q "${key:3}" <<<"$list" && fail "list shows the secret"
# The log has lines for team-a's requests, and none of them holds its key; nor does any byte of
# the database files.
wait_for logged '"key":"team-a"' || fail "no access log line for team-a"
# Its requests carry the key's priority (high, 2), and the batch key's theirs (low, 0).
grep '"key":"team-a"' "$work/tollgate.log" | grep -q '"priority":2' || fail "team-a's requests are not high priority"
wait_for answers "$batch_key" qwen-max 200 || true  # accepted within a second, then logged
wait_for logged '"key":"batch"' || true
grep '"key":"batch"' "$work/tollgate.log" | grep -q '"priority":0' || fail "batch's requests are not low priority"
# `keys update` changes a stored key's priority; the running gateway applies it within a second.
"$tg" keys update --config "$work/tollgate.yaml" --name batch --priority urgent 2>"$work/err" && fail "keys update took 'urgent'"
grep -q "'priority' must be" "$work/err" || fail "bad update message: $(cat "$work/err")"
"$tg" keys update --config "$work/tollgate.yaml" --name nobody --priority high 2>/dev/null && fail "keys update of no key"
set +e
"$tg" keys update --config "$work/tollgate.yaml" --name batch 2>/dev/null; [ $? -eq 2 ] || fail "keys update without --priority"
set -e
"$tg" keys update --config "$work/tollgate.yaml" --name batch --priority 5 2>/dev/null
"$tg" keys list --config "$work/tollgate.yaml" | grep -E -q "^batch +.* 5 +0 " || fail "list lacks batch's new priority"
promoted=""
for i in $(seq 1 100); do
  call "$batch_key" qwen-max >/dev/null
  sleep 0.1
  grep '"key":"batch"' "$work/tollgate.log" | grep -q '"priority":5' && { promoted=1; break; }
done
[ -n "$promoted" ] || fail "the running gateway did not apply batch's new priority"
grep -rq "${key:3}" "$work/tollgate.log" && fail "the log holds the secret"
grep -rqa "${key:3}" "$work"/tollgate.db* && fail "the database holds the secret"
[ "$(sqlite3 "$work/tollgate.db" "SELECT count(*) FROM api_keys WHERE name = 'team-a' AND length(digest) = 64")" = 1 ] ||
  fail "team-a's digest is not in the store"
# team-a's request cost millionths (a few tokens at 1 and 2 a million): the spend shows in fixed
# notation, once the ledger has the row.
spent=""
for _ in $(seq 1 100); do
  spent=$("$tg" keys list --config "$work/tollgate.yaml" | grep "team-a" | grep -o '50/month ([^)]*)' || true)
  [ -n "$spent" ] && [ "$spent" != "50/month (0.00)" ] && break
  sleep 0.1
done
[[ "$spent" =~ ^50/month\ \(0\.0+[1-9][0-9]?\)$ ]] || fail "spend not in fixed notation: '$spent'"

"$tg" keys revoke --config "$work/tollgate.yaml" --name team-a 2>/dev/null
wait_for answers "$key" deepseek-chat 401 || fail "the revoked key still works"
"$tg" keys list --config "$work/tollgate.yaml" --all | grep "team-a" | grep -q revoked || fail "list --all lacks the revoked key"
[ "$(call tg-static-ops-key qwen-max)" = 200 ] || fail "the static key stopped working"
echo "keys: ok"
