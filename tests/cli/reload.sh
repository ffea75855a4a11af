#!/usr/bin/env bash
# Hot reload of a running tollgate: a changed file, SIGHUP, and an invalid file that is refused.
set -euo pipefail
build=$(cd "${1:?usage: reload.sh BUILD_DIR}" && pwd)
source "$(dirname "$0")/../support/procs.sh"
fail() { echo "FAIL: $*"; echo "--- tollgate log"; cat "$work/tollgate.log"; exit 1; }

"$build/tollgate-fake-upstream" --port 0 >"$work/fake.log" 2>&1 &
pids+=($!)
upstream=$(wait_listening "$work/fake.log")

write_config() {  # write_config MODEL...: one route per model name
  {
    echo "server: {listen: \"127.0.0.1:0\", threads: 2, access_log: \"off\"}"
    echo "keys: [{name: t, key: tg-reload}]"
    echo "backends: [{name: fake, kind: openai, base_url: \"$upstream/v1\"}]"
    echo "routes:"
    for m in "$@"; do echo "  - {model: $m, targets: [{backend: fake}]}"; done
  } >"$work/next.yaml"
  mv "$work/next.yaml" "$work/tollgate.yaml"  # replaced whole, as editors and config managers do
}

write_config first-model
"$build/tollgate" serve --config "$work/tollgate.yaml" >"$work/tollgate.log" 2>&1 &
pids+=($!)
url=$(wait_listening "$work/tollgate.log")
models() { curl -s "$url/v1/models" -H 'Authorization: Bearer tg-reload'; }
models | grep -q '"first-model"' || fail "first config not served"

sleep 1.1  # a new modification time even on coarse-grained file systems
write_config first-model second-model
wait_for sh -c "curl -s '$url/v1/models' -H 'Authorization: Bearer tg-reload' | grep -q second-model" ||
  fail "file change not picked up"

sleep 1.1
echo "routes: [{model: broken, targets: [{backend: nowhere}]}]" >"$work/tollgate.yaml"
wait_for grep -q "refused" "$work/tollgate.log" || fail "invalid file not refused"
grep -q "unknown backend 'nowhere'" "$work/tollgate.log" || fail "refusal does not say why"
models | grep -q '"second-model"' || fail "running config lost after a refused reload"

write_config third-model
kill -HUP "${pids[1]}"
wait_for sh -c "curl -s '$url/v1/models' -H 'Authorization: Bearer tg-reload' | grep -q third-model" ||
  fail "SIGHUP did not reload"
curl -s "$url/v1/chat/completions" -H 'Authorization: Bearer tg-reload' \
  -d '{"model":"third-model","messages":[{"role":"user","content":"hi"}]}' | grep -q 'echo: hi' ||
  fail "reloaded route does not serve"
kill -0 "${pids[1]}" || fail "tollgate exited on SIGHUP"
echo "reload: 1 passed, 0 failed"
