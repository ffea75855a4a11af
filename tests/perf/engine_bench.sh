#!/usr/bin/env bash
# CPU baselines of the local engine: tokens/s of a generated tiny model (prefill and decode) and
# the time of one MoE layer at DeepSeek-V2-Lite's shapes with random weights (about 2.3 GB of RAM).
# Usage: tests/perf/engine_bench.sh BUILD_DIR [RECIPE]
# Each bench prints JSON lines: the prefill (median over RUNS, default 5), then one line per decode
# batch size (median step). DEVICE (default cpu) and DTYPE pick the backend.
set -euo pipefail
build=${1:?usage: engine_bench.sh BUILD_DIR [RECIPE]}
here=$(cd "$(dirname "$0")/../.." && pwd)
recipe=${2:-$here/tests/engine/recipes/v3_qlora_yarn.json}
runs=${RUNS:-5}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$build/tollgate-engine" make-tiny --recipe "$recipe" --out "$tmp/tiny" 2>/dev/null
dev=(--device "${DEVICE:-cpu}")
[ -n "${DTYPE:-}" ] && dev+=(--dtype "$DTYPE")
"$build/tollgate-engine" bench "${dev[@]}" --checkpoint "$tmp/tiny" --prompt-len 64 --batch 1,8 --context 64 --decode 64 \
  --runs "$runs"
"$build/tollgate-engine" bench --v2-lite-layer --context 256 --decode 16 --runs "$runs"
