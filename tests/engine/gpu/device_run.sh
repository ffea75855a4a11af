#!/usr/bin/env bash
# The GPU machine's run, in one call: build the engine, the gateway and their tests with CMake; run
# the GPU tests, the engine's scheduler and golden tests on cuda:0, the gateway serving cuda:0 end
# to end, and the GPU benchmark. Logs go to OUT_DIR; a summary is printed last.
#
# usage: tests/engine/gpu/device_run.sh [tests|bench|all|compare|build] [OUT_DIR]
#   compare  bf16 against transformers at DeepSeek-V3 width (3 layers) and DeepSeek-V2-Lite shapes
#            (bf16_vs_transformers.py), then the gateway serving that V2-Lite checkpoint under load
#            at 1, 16 and 64 clients (tests/perf/gateway_load.py); about 6 minutes
#   TOLLGATE_DEPS_PREFIX  a prefix with nlohmann_json and Catch2 (CMake configs and headers) where
#                         the machine has none (make_deps_prefix.sh beside this makes one)
#   TOLLGATE_CMAKE_ARGS   more arguments for the configure step (e.g. where SQLite3 is)
set -uo pipefail
what=${1:-all}
out=${2:-${OUT:-/tmp/tollgate-gpu}}
mkdir -p "$out"
root=$(cd "$(dirname "$0")/../../.." && pwd)
cd "$root"
summary=()
note() { summary+=("$1"); echo "$1"; }
# serve CONFIG LOG SECONDS: starts `tollgate serve` in the background; sets gw (its pid) and url
# (empty when it did not say where it listens within SECONDS).
serve() {
  build-gpu/tollgate serve --config "$1" >"$2" 2>&1 &
  gw=$!
  url=""
  for _ in $(seq 1 $(($3 * 10))); do
    url=$(grep -o 'listening on http://[0-9.]*:[0-9]*' "$2" | head -1 | sed 's/listening on //')
    [ -n "$url" ] && break
    sleep 0.1
  done
}

prefix=()
[ -n "${TOLLGATE_DEPS_PREFIX:-}" ] && prefix=(-DCMAKE_PREFIX_PATH="$TOLLGATE_DEPS_PREFIX")
# shellcheck disable=SC2086
if ! cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release "${prefix[@]}" ${TOLLGATE_CMAKE_ARGS:-} >"$out/configure.log" 2>&1; then
  tail -40 "$out/configure.log"
  exit 1
fi
targets=(tollgate tollgate-engine tollgate-engine-tests tollgate-engine-gpu-tests tollgate-engine-gpu-bench)
if ! cmake --build build-gpu -j"$(nproc)" --target "${targets[@]}" >"$out/build.log" 2>&1; then
  grep -E "error|Error" -A3 "$out/build.log" | head -60
  exit 1
fi
note "build: ok"

if [ "$what" = tests ] || [ "$what" = all ]; then
  build-gpu/tollgate-engine-gpu-tests >"$out/gpu-tests.log" 2>&1
  note "GPU tests: $(tail -2 "$out/gpu-tests.log" | tr -s '\n' ' ')"
  grep -E "^gpu " "$out/gpu-tests.log"
  TOLLGATE_TEST_DEVICE=cuda:0 TOLLGATE_TEST_DTYPE=float32 build-gpu/tollgate-engine-tests "[golden],[scheduler]" \
    >"$out/engine-tests-cuda.log" 2>&1
  note "engine golden and scheduler tests on cuda:0: $(tail -2 "$out/engine-tests-cuda.log" | tr -s '\n' ' ')"
  work=$(mktemp -d)
  ck="$work/tiny"
  build-gpu/tollgate-engine make-tiny --recipe tests/engine/recipes/v3_qlora_yarn.json --out "$ck" >/dev/null
  {
    echo "["
    first=1
    for p in "hello there" "write a haiku about gateways" "你好，世界" "a"; do
      [ $first = 1 ] || echo ","
      first=0
      build-gpu/tollgate-engine generate --checkpoint "$ck" --device cuda:0 --dtype float32 --chat --prompt "$p" \
        --max-tokens 24 --temperature 0 --json | python3 -c "import json,sys; r=json.load(sys.stdin); r['prompt']=sys.argv[1]; print(json.dumps(r))" "$p"
    done
    echo "]"
  } >"$work/refs.json"
  cat >"$work/gpu.yaml" <<YAML
server: {listen: "127.0.0.1:0", threads: 4}
keys: [{name: e2e, key: "tg-gpu-e2e-key"}]
backends:
  - {name: gpu32, kind: local_engine, checkpoint: $ck, device: "cuda:0", dtype: float32, kv_cache_memory: 200000000, max_batch: 64}
  - {name: gpu16, kind: local_engine, checkpoint: $ck, device: "cuda:0", dtype: bfloat16, kv_cache_memory: 200000000, max_batch: 64}
routes:
  - {model: gpu32, targets: [{backend: gpu32}]}
  - {model: gpu16, targets: [{backend: gpu16}]}
YAML
  serve "$work/gpu.yaml" "$out/gateway.log" 20
  python3 tests/e2e/gpu_gateway.py "$url" tg-gpu-e2e-key "$work/refs.json" >"$out/gateway-e2e.log" 2>&1
  note "gateway on cuda:0: $(tail -1 "$out/gateway-e2e.log")"
  kill "$gw"
  wait "$gw" 2>/dev/null
  rm -rf "$work"
fi

if [ "$what" = bench ] || [ "$what" = all ]; then
  build-gpu/tollgate-engine-gpu-bench --config tests/perf/deepseek_v2_lite.json --batches 1,16,64,256 --context 1024 --dense 1,0 \
    --json "$out/engine-gpu-bench.json" >"$out/engine-gpu-bench.log" 2>&1
  cat "$out/engine-gpu-bench.log"
  note "GPU bench: $out/engine-gpu-bench.json"
  # transformers on the same shapes, after ours has given the GPU back.
  timeout 300 python3 tests/perf/transformers_bench.py tests/perf/deepseek_v2_lite.json --context 1024 \
    --json "$out/transformers-bench.json" >"$out/transformers-bench.log" 2>&1
  tail -5 "$out/transformers-bench.log"
  note "transformers bench: $(tail -1 "$out/transformers-bench.log")"
fi
if [ "$what" = compare ]; then
  E=build-gpu/tollgate-engine
  timeout 300 python3 tests/engine/gpu/bf16_vs_transformers.py tests/perf/deepseek_v3.json "$E" --layers 3 --first-dense 1 \
    --work /dev/shm/tg-v3 --json "$out/bf16-v3.json" >"$out/bf16-v3.log" 2>&1
  note "bf16 vs transformers, V3 width, 3 layers: $(grep -E '^engine_bf16_vs_transformers' "$out/bf16-v3.log")"
  rm -rf /dev/shm/tg-v3
  timeout 240 python3 tests/engine/gpu/bf16_vs_transformers.py tests/perf/deepseek_v2_lite.json "$E" --keep \
    --work /dev/shm/tg-v2 --json "$out/bf16-v2lite.json" >"$out/bf16-v2lite.log" 2>&1
  note "bf16 vs transformers, V2-Lite: $(grep -E '^engine_bf16_vs_transformers' "$out/bf16-v2lite.log")"
  if [ -f /dev/shm/tg-v2/config.json ]; then
    "$E" make-tokenizer --vocab-size 102400 --out /dev/shm/tg-v2/tokenizer.json
    cat >"$out/load.yaml" <<YAML
server: {listen: "127.0.0.1:0", threads: 4}
keys: [{name: load, key: "tg-load-key"}]
backends:
  - {name: v2lite, kind: local_engine, checkpoint: /dev/shm/tg-v2, device: "cuda:0", dtype: bfloat16, kv_cache_memory: 0.8, max_batch: 64}
routes:
  - {model: v2lite, targets: [{backend: v2lite}]}
YAML
    serve "$out/load.yaml" "$out/gateway-load-server.log" 180
    timeout 200 python3 tests/perf/gateway_load.py "$url" tg-load-key v2lite --clients 1,16,64 --seconds 12 \
      --json "$out/gateway-load.json" >"$out/gateway-load.log" 2>&1
    cat "$out/gateway-load.log"
    note "gateway load: $out/gateway-load.json"
    kill "$gw"
    wait "$gw" 2>/dev/null
    rm -rf /dev/shm/tg-v2
  fi
fi
printf '%s\n' "${summary[@]}"
