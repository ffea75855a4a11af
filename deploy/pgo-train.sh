#!/usr/bin/env bash
# The training load of the profile-guided release build (deploy/build-release.sh runs it): the
# gateway of BUILD_DIR in front of its fake upstream, under `tollgate bench` traffic of the kinds a
# gateway serves most (short chat requests whole and streamed, long prompts, Anthropic Messages
# translated to chat), on loopback, about 15 seconds. Every request must succeed: a profile of
# failing requests would optimise the error paths, so any failure fails the script. The gateway
# is stopped with SIGTERM and must exit cleanly, which is when an instrumented build writes its
# counters. Short requests go to a route that keeps the model's name and to one that renames it.
#
# usage: deploy/pgo-train.sh BUILD_DIR   (env: TRAIN_SECONDS=2, the length of each load run;
#   TRAIN_CLIENT=BINARY, the tollgate that sends the load, default BUILD_DIR/tollgate)
set -euo pipefail
build=$(cd "${1:?usage: deploy/pgo-train.sh BUILD_DIR}" && pwd)
secs=${TRAIN_SECONDS:-2}
client=${TRAIN_CLIENT:-$build/tollgate}
for bin in tollgate tollgate-fake-upstream; do
  [ -x "$build/$bin" ] || { echo "pgo-train: $build/$bin is not built" >&2; exit 1; }
done
# work (a folder removed on exit), pids (stopped on exit), wait_listening, stop_within.
source "$(dirname "$0")/../tests/support/procs.sh"
# Only the gateway's counters make the profile: an instrumented build's fake upstream and load
# client write theirs under here, where they are thrown away (libgcov's GCOV_PREFIX). The client
# shares code with the gateway, and its own work (making prompts) would otherwise dominate.
discard="$work/discarded-counters"

GCOV_PREFIX=$discard "$build/tollgate-fake-upstream" --port 0 >"$work/upstream.log" 2>&1 &
pids+=($!)
upstream=$(wait_listening "$work/upstream.log")
cat >"$work/gateway.yaml" <<YAML
server:
  listen: 127.0.0.1:0
  threads: 1
  access_log: off
keys:
  - name: train
    key: tg-train
backends:
  - name: local
    kind: openai
    base_url: $upstream/v1
    api_key: sk-upstream
routes:
  - model: m
    targets:
      - backend: local
        model: m
  - model: r  # sent upstream as another name and renamed back, as most deployments' routes are
    targets:
      - backend: local
        model: upstream-r
YAML
"$build/tollgate" serve --config "$work/gateway.yaml" >"$work/gateway.log" 2>&1 &
gateway=$!
pids+=("$gateway")
url=$(wait_listening "$work/gateway.log")

runs=0
load() {  # MODEL, then tollgate bench arguments: one run, every request of which must succeed
  local model=$1
  shift
  runs=$((runs + 1))
  local out="$work/run$runs.json"
  GCOV_PREFIX=$discard "$client" bench --base-url "$url/v1" --api-key tg-train --model "$model" --duration "$secs" \
    --quiet --json "$out" "$@" >"$work/run$runs.txt" 2>&1
  local rate requests
  rate=$(grep -o '"success_rate": [0-9.]*' "$out" | awk '{print $2}')
  requests=$(grep -o '"requests": [0-9]*' "$out" | awk '{print $2}')
  if [ "$rate" != "1.0" ] || [ "${requests:-0}" -eq 0 ]; then
    echo "pgo-train: run $runs ($*) did not succeed in full:" >&2
    cat "$work/run$runs.txt" >&2
    tail -20 "$work/gateway.log" >&2
    exit 1
  fi
  echo "pgo-train: $requests requests (--model $model $*)"
}
load r --concurrency 32 --prompt-tokens 16 --max-tokens 16
load m --concurrency 32 --prompt-tokens 16 --max-tokens 16
load r --concurrency 32 --prompt-tokens 16 --max-tokens 16 --stream
load m --concurrency 32 --prompt-tokens 16 --max-tokens 16 --stream
load r --concurrency 4 --prompt-tokens 4000 --max-tokens 16
load m --concurrency 8 --prompt-tokens 64 --max-tokens 16 --api anthropic --stream
load m --concurrency 8 --prompt-tokens 64 --max-tokens 16 --api anthropic

# The counters are written when the gateway exits; it must stop cleanly.
stop_within 20 "$gateway" "$work/gateway.log"
echo "pgo-train: done"
