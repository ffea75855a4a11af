#!/usr/bin/env bash
# End-to-end: starts the fake upstream and a real tollgate, then runs the official openai SDK
# against it with node's test runner. Usage: tests/e2e/run.sh BUILD_DIR
set -euo pipefail
build=$(cd "${1:?usage: run.sh BUILD_DIR}" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
source "$here/../support/procs.sh"

if [ ! -d "$here/node_modules/openai" ] || [ ! -d "$here/node_modules/@anthropic-ai/sdk" ] || [ ! -d "$here/node_modules/ai" ]; then
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
store: {sqlite: $work/ledger.db, flush_interval: sync}
keys:
  - name: e2e
    key: \${E2E_KEY}
  - name: e2e-limited
    key: \${E2E_LIMITED_KEY}
    rpm: 1
backends:
  - name: fake
    kind: openai
    base_url: $upstream/v1
    api_key: sk-fake
  - name: claude
    kind: anthropic
    base_url: $upstream/v1
    api_key: sk-ant-fake
  - name: fake-native
    kind: openai
    base_url: $upstream/v1
    api_key: sk-fake
    responses: native
routes:
  - model: e2e-chat
    targets:
      - backend: fake
        model: fake-model
  - model: e2e-claude
    targets:
      - backend: claude
        model: claude-upstream
  - model: e2e-responses-native
    targets:
      - backend: fake-native
        model: native-upstream
  - model: e2e-chat-overloaded
    retry: {attempts: 1}
    targets:
      - backend: fake
        model: fake-overloaded
  - model: e2e-claude-overloaded
    retry: {attempts: 1}
    targets:
      - backend: claude
        model: fake-overloaded
  - model: e2e-responses-background
    targets:
      - backend: fake-native
        model: native-upstream
YAML
export E2E_KEY="tg-e2e-$RANDOM$RANDOM" E2E_LIMITED_KEY="tg-e2e-limited-$RANDOM$RANDOM"
"$build/tollgate" check-config "$work/tollgate.yaml"
"$build/tollgate" serve --config "$work/tollgate.yaml" >"$work/tollgate.log" 2>&1 &
pids+=($!)
gateway=$(wait_listening "$work/tollgate.log")

TOLLGATE_BASE_URL="$gateway/v1" TOLLGATE_KEY="$E2E_KEY" TOLLGATE_LIMITED_KEY="$E2E_LIMITED_KEY" \
  node --test "$here/openai_sdk.test.mjs" "$here/api_surface.test.mjs"

# Graceful stop, and one access log line per request with the fields the issue names.
kill -TERM "${pids[1]}"
wait "${pids[1]}"
lines=$(wc -l <"$work/access.log")
[ "$lines" -ge 7 ] || { echo "expected >= 7 access log lines, got $lines"; cat "$work/access.log"; exit 1; }
grep -q '"backend":"fake"' "$work/access.log"
grep -q '"key":"e2e"' "$work/access.log"
if grep -q "$E2E_KEY" "$work/access.log"; then echo "the client key leaked into the access log"; exit 1; fi
echo "e2e: access log ok ($lines lines)"

# Every answered Anthropic Messages and Responses request was metered from the upstream's usage,
# and has its ledger row.
python3 - "$work/access.log" "$work/ledger.db" <<'PY'
import json, sqlite3, sys
lines = [json.loads(l) for l in open(sys.argv[1])]
# A background response is answered queued, with no usage yet: its model is left out.
answered = [l for l in lines if l["path"] in ("/v1/messages", "/v1/responses") and l["status"] == 200
            and l["model"] != "e2e-responses-background"]
assert len(answered) >= 20, f"expected >= 20 translated answers, got {len(answered)}"
for l in answered:
    assert l.get("prompt_tokens", 0) > 0 and l.get("completion_tokens", 0) > 0, l
ids = {l["id"] for l in answered}
db = sqlite3.connect(sys.argv[2])
rows = {r[0]: r for r in db.execute("SELECT request_id, backend, prompt_tokens, cached_tokens, completion_tokens, usage_source FROM usage_ledger")}
missing = ids - rows.keys()
assert not missing, f"no ledger row for {sorted(missing)[:3]}"
claude = [rows[i] for i in ids if rows[i][1] == "claude"]
assert claude and all(r[3] > 0 and r[5] == "upstream" for r in claude), claude[:3]
# Relayed untranslated: Messages to kind anthropic, the Responses API to responses: native.
relayed_messages = [l for l in answered if l["path"] == "/v1/messages" and l["backend"] == "claude"]
native = [rows[i] for i in ids if rows[i][1] == "fake-native"]
assert len(relayed_messages) >= 5, relayed_messages[:3]
assert len(native) >= 4 and all(r[3] > 0 and r[5] == "upstream" for r in native), native[:3]
print(f"e2e: {len(answered)} answers of other APIs metered, {len(claude)} through kind anthropic with cached tokens, "
      f"{len(native)} relayed to a native Responses API")
PY
