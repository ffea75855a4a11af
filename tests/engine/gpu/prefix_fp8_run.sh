#!/usr/bin/env bash
# Prefix caching and FP8 checkpoints on the GPU machine, in one call: build the engine targets; run
# the engine's golden, scheduler (prefix caching included) and block tests on cuda:0 in float32 and
# the GPU tests; load a tiny FP8 checkpoint on cuda:0 beside its dequantised float32 and bf16 twins
# (the greedy tokens are printed for each); and time the first token behind a shared 2,048-token
# prefix, prefix caching off and on, at DeepSeek-V2-Lite's shapes with random bf16 weights.
#
# usage: tests/engine/gpu/prefix_fp8_run.sh [OUT_DIR]
#   TOLLGATE_DEPS_PREFIX  as for device_run.sh (make_deps_prefix.sh makes one)
set -uo pipefail
out=${1:-${OUT:-/tmp/tollgate-gpu}}
mkdir -p "$out"
cd "$(dirname "$0")/../../.."
args=()
if [ -n "${TOLLGATE_DEPS_PREFIX:-}" ]; then
  D=$TOLLGATE_DEPS_PREFIX
  export PKG_CONFIG_PATH=$D/lib/pkgconfig LD_LIBRARY_PATH=$D/lib
  args=(-DCMAKE_PREFIX_PATH="$D" -DSQLite3_INCLUDE_DIR="$D/include" -DSQLite3_LIBRARY="$D/lib/libsqlite3.so")
fi
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release "${args[@]}" >"$out/configure.log" 2>&1 ||
  { tail -30 "$out/configure.log"; exit 1; }
cmake --build build-gpu -j"$(nproc)" --target tollgate-engine tollgate-engine-tests tollgate-engine-gpu-tests >"$out/build.log" 2>&1 ||
  { grep -E "error" -A3 "$out/build.log" | head -60; exit 1; }
echo "build ok"
TOLLGATE_TEST_DEVICE=cuda:0 TOLLGATE_TEST_DTYPE=float32 build-gpu/tollgate-engine-tests "[golden],[scheduler],[kv]" >"$out/engine-cuda.log" 2>&1
echo "engine tests on cuda:0 float32: $(tail -2 "$out/engine-cuda.log" | tr -s '\n' ' ')"
build-gpu/tollgate-engine-gpu-tests >"$out/gpu-tests.log" 2>&1
echo "gpu tests: $(tail -2 "$out/gpu-tests.log" | tr -s '\n' ' ')"
w=$(mktemp -d)
for v in "float8_e4m3 false" "float32 true" "bfloat16 true"; do
  set -- $v
  python3 -c "import json,sys; r=json.load(open('tests/engine/recipes/v3_qlora_yarn.json')); r['dtype']=sys.argv[1]; r['fp8_block_size']=[16,16]; r['dequantize_fp8']=sys.argv[2]=='true'; json.dump(r,open(sys.argv[3],'w'))" $1 $2 "$w/$1.json"
  build-gpu/tollgate-engine make-tiny --recipe "$w/$1.json" --out "$w/$1" >/dev/null
  for dt in float32 bfloat16; do
    echo "fp8 check: checkpoint $1 on cuda:0 $dt: $(build-gpu/tollgate-engine generate --checkpoint "$w/$1" --device cuda:0 --dtype $dt --prompt-tokens 5,6,7,8,9,10,11,12 --max-tokens 16 --temperature 0 --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["tokens"])')"
  done
done
mkdir -p "$w/v2lite" && cp tests/perf/deepseek_v2_lite.json "$w/v2lite/config.json"
build-gpu/tollgate-engine bench --checkpoint "$w/v2lite" --device cuda:0 --random-weights-seed 1 --kv-cache-memory 20000000000 \
  --shared-prefix 2048 --prompt-len 64 --runs 7 2>&1 | tee "$out/prefix-bench.jsonl" | python3 -c '
import json,sys
for l in sys.stdin:
  if l.startswith("{"):
    j=json.loads(l); print("shared-prefix bench: caching", j["prefix_caching"], "ttft median ms", round(j["ttft_ms_median"],2), "runs", [round(x,2) for x in j["ttft_ms_runs"]], "hit_rate", round(j["hit_rate"],3))
  else: print(l.rstrip())'
