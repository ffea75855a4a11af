#!/usr/bin/env bash
# End-to-end: starts the fake upstream and a real tollgate, then runs the official openai SDK
# against it with node's test runner. Usage: tests/e2e/run.sh BUILD_DIR
set -euo pipefail
build=$(cd "${1:?usage: run.sh BUILD_DIR}" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
source "$here/../support/procs.sh"

if [ ! -d "$here/node_modules/openai" ]; then
  (cd "$here" && npm install --no-audit --no-fund --loglevel=error >/dev/null)
fi

"$build/tollgate-fake-upstream" --port 0 >"$work/fake.log" 2>&1 &
pids+=($!)
upstream=$(wait_listening "$work/fake.log")

cat >"$work/tollgate.yaml" <<YAML
server:
  listen: 127.0.0.1:0
  threads: 2
  access_log: $work/access.log
keys:
  - name: e2e
    key: \${E2E_KEY}
backends:
  - name: fake
    kind: openai
    base_url: $upstream/v1
    api_key: sk-fake
routes:
  - model: e2e-chat
    targets:
      - backend: fake
        model: fake-model
YAML
export E2E_KEY="tg-e2e-$RANDOM$RANDOM"
"$build/tollgate" check-config "$work/tollgate.yaml"
"$build/tollgate" serve --config "$work/tollgate.yaml" >"$work/tollgate.log" 2>&1 &
pids+=($!)
gateway=$(wait_listening "$work/tollgate.log")

TOLLGATE_BASE_URL="$gateway/v1" TOLLGATE_KEY="$E2E_KEY" node --test "$here/openai_sdk.test.mjs"

# Graceful stop, and one access log line per request with the fields the issue names.
kill -TERM "${pids[1]}"
wait "${pids[1]}"
lines=$(wc -l <"$work/access.log")
[ "$lines" -ge 7 ] || { echo "expected >= 7 access log lines, got $lines"; cat "$work/access.log"; exit 1; }
grep -q '"backend":"fake"' "$work/access.log"
grep -q '"key":"e2e"' "$work/access.log"
if grep -q "$E2E_KEY" "$work/access.log"; then echo "the client key leaked into the access log"; exit 1; fi
echo "e2e: access log ok ($lines lines)"
