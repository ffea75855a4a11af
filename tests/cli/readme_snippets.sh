#!/usr/bin/env bash
# The README's shell and Node snippets, run as written (only the port changes) against a running
# tollgate on the demo config, in front of the demo upstream, in a folder laid out as
# deploy/demo.sh leaves the repository: build/, data/demo.yaml, data/tiny-deepseek-v3.
# Usage: tests/cli/readme_snippets.sh BUILD_DIR
set -euo pipefail
build=$(cd "${1:?usage: readme_snippets.sh BUILD_DIR}" && pwd)
src=$(cd "$(dirname "$0")/../.." && pwd)
source "$src/tests/support/procs.sh"
fail() { echo "FAIL: $*"; tail -20 "$work/tollgate.log" 2>/dev/null; exit 1; }
command -v node >/dev/null || fail "node is not installed (deploy/setup.sh --test installs it)"
command -v sqlite3 >/dev/null || fail "sqlite3 is not installed (deploy/setup.sh --test installs it)"

modules="$src/tests/readme"
if [ ! -d "$modules/node_modules/ai" ] || [ ! -d "$modules/node_modules/openai" ]; then
  (cd "$modules" && npm install --no-audit --no-fund --loglevel=error >/dev/null)
fi

mkdir -p "$work/data"
ln -s "$build" "$work/build"
ln -s "$modules/node_modules" "$work/node_modules"
"$build/tollgate-engine" make-tiny --recipe "$src/config/examples/tiny-deepseek-v3.recipe.json" \
  --out "$work/data/tiny-deepseek-v3" >/dev/null
"$src/deploy/demo-config.sh" >"$work/data/demo.yaml"

"$build/tollgate-fake-upstream" --port 0 >"$work/fake.log" 2>&1 &
pids+=($!)
upstream=$(wait_listening "$work/fake.log")
cd "$work"
TOLLGATE_LISTEN=127.0.0.1:0 TOLLGATE_DEMO_UPSTREAM="$upstream/v1" \
  build/tollgate serve --config data/demo.yaml >"$work/tollgate.log" 2>&1 &
pids+=($!)
gateway=$(wait_listening "$work/tollgate.log")

node "$modules/run_snippets.mjs" "$src/README.md" "${gateway#http://}" || fail "README snippets"
# The reload snippet edited the served file: the gateway said so.
grep -q "reloaded data/demo.yaml (file changed" "$work/tollgate.log" || fail "no reload logged"
# The demo does not log scrapes and probes that succeed.
curl -s "$gateway/metrics" >/dev/null
curl -s "$gateway/healthz" >/dev/null
sleep 0.5
grep -q '"path":"/metrics"' "$work/tollgate.log" && fail "a /metrics scrape was logged"
grep -q '"path":"/v1/chat/completions"' "$work/tollgate.log" || fail "requests are not logged"
echo "readme snippets: ok"
