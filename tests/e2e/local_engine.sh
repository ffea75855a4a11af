#!/usr/bin/env bash
# End-to-end over the bundled engine: a tiny random DeepSeek-V3 checkpoint made by
# `tollgate-engine make-tiny`, served by `tollgate` as a local_engine backend on the CPU, driven
# with the official openai SDK. Greedy answers must equal `tollgate-engine generate` token for
# token. Usage: tests/e2e/local_engine.sh BUILD_DIR
set -euo pipefail
build=$(cd "${1:?usage: local_engine.sh BUILD_DIR}" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
source "$here/../support/procs.sh"

if [ ! -d "$here/node_modules/openai" ] || [ ! -d "$here/node_modules/@anthropic-ai/sdk" ]; then
  (cd "$here" && npm install --no-audit --no-fund --loglevel=error >/dev/null)
fi

ck="$work/tiny-deepseek"
"$build/tollgate-engine" make-tiny --recipe "$here/../engine/recipes/v3_qlora_yarn.json" --out "$ck" >/dev/null
# A larger one (44 MB, about 800 tokens/s on one core) that a client can leave while it decodes.
"$build/tollgate-engine" make-tiny --recipe "$here/slow_model_recipe.json" --out "$work/slow" >/dev/null

# References from the engine's own CLI: greedy, 24 tokens, each prompt as one user message.
prompts=("hello there" "write a haiku about gateways" "你好，世界" "a")
{
  echo "["
  for i in "${!prompts[@]}"; do
    [ "$i" -gt 0 ] && echo ","
    "$build/tollgate-engine" generate --checkpoint "$ck" --chat --prompt "${prompts[$i]}" \
      --max-tokens 24 --temperature 0 --json | tr -d '\n'
  done
  echo "]"
} >"$work/refs.json"

cat >"$work/tollgate.yaml" <<YAML
server: {listen: "127.0.0.1:0", threads: 2, access_log: $work/access.log}
keys: [{name: e2e, key: "\${E2E_KEY}"}]
backends:
  - {name: tiny, kind: local_engine, checkpoint: $ck, device: cpu, max_batch: 3}
  - {name: slow, kind: local_engine, checkpoint: $work/slow, max_batch: 2}
  - {name: broken, kind: local_engine, checkpoint: $work/no-such-folder}
  # The same tiny model without prefix caching, for the prefix cache's hits to be compared with.
  - {name: nocache, kind: local_engine, checkpoint: $ck, prefix_caching: false}
  # A KV pool of 2 blocks of 64 positions: a 100-token answer needs both, so sequences wait for (or
  # preempt) each other; 2 are taken into the engine and 1 more queues.
  - {name: small-pool, kind: local_engine, checkpoint: $work/slow, kv_cache_memory: 163840, max_batch: 2, max_queue: 1}
routes:
  - {model: tiny-deepseek, targets: [{backend: tiny}]}
  - {model: tiny-nocache, targets: [{backend: nocache}]}
  - {model: slow-deepseek, targets: [{backend: slow}]}
  - {model: small-pool, targets: [{backend: small-pool}]}
  - {model: broken-model, targets: [{backend: broken}]}
YAML
export E2E_KEY="tg-e2e-$RANDOM$RANDOM"
"$build/tollgate" check-config "$work/tollgate.yaml"
"$build/tollgate" serve --config "$work/tollgate.yaml" >"$work/tollgate.log" 2>&1 &
pids+=($!)
gateway=$(wait_listening "$work/tollgate.log")
grep -q "backend broken: .*no-such-folder" "$work/tollgate.log" || { echo "no load error logged"; cat "$work/tollgate.log"; exit 1; }

TOLLGATE_BASE_URL="$gateway/v1" TOLLGATE_URL="$gateway" TOLLGATE_KEY="$E2E_KEY" TOLLGATE_REFS="$work/refs.json" \
  node --test "$here/local_engine.test.mjs"

# The engine's families are valid exposition (deploy/setup.sh installs promtool).
curl -s -m 30 "$gateway/metrics" >"$work/metrics.txt"
grep -q 'tollgate_engine_sequences_total{backend="slow",outcome="cancelled"} 1' "$work/metrics.txt" ||
  { echo "engine metrics missing"; grep engine "$work/metrics.txt"; exit 1; }
for line in 'tollgate_engine_kv_blocks{backend="slow",state="used"} 0' 'tollgate_engine_kv_blocks{backend="tiny",state="used"} 0' \
  'tollgate_engine_sequences_running{backend="tiny"} 0'; do
  grep -qF "$line" "$work/metrics.txt" || { echo "engine metrics: no '$line'"; grep engine "$work/metrics.txt"; exit 1; }
done
grep -q '^tollgate_engine_preemptions_total{backend="tiny"} ' "$work/metrics.txt" || { echo "no preemption counter"; exit 1; }
promtool check metrics <"$work/metrics.txt"

# A graceful stop with the engine threads running.
stop_within 30 "${pids[0]}" "$work/tollgate.log"

# device: cuda:0 where there is none (a build without CUDA, or a machine without a GPU): the
# backend is down with a message naming the device, and the gateway serves the others.
cuda_probe=$(timeout 60 "$build/tollgate-engine" generate --checkpoint "$ck" --prompt-tokens 1 --device cuda:0 2>&1 || true)
if [[ "$cuda_probe" == *"this build has no CUDA backend"* || "$cuda_probe" == *"no CUDA device is usable here"* ]]; then
  cat >"$work/gpu.yaml" <<YAML
server: {listen: "127.0.0.1:0", threads: 1}
keys: [{name: e2e, key: "\${E2E_KEY}"}]
backends:
  - {name: gpu, kind: local_engine, checkpoint: $ck, device: "cuda:0", dtype: bfloat16}
  - {name: cpu, kind: local_engine, checkpoint: $ck, kv_cache_memory: 4000000, max_batch_tokens: 16}
routes:
  - {model: tiny-deepseek, targets: [{backend: gpu}, {backend: cpu}]}
YAML
  "$build/tollgate" serve --config "$work/gpu.yaml" >"$work/gpu.log" 2>&1 &
  pids+=($!)
  gpu=$(wait_listening "$work/gpu.log")
  grep -Eq "backend gpu: device 'cuda:0': (this build has no CUDA backend|no CUDA device is usable here)" "$work/gpu.log" ||
    { echo "no cuda load error logged"; cat "$work/gpu.log"; exit 1; }
  curl -s -m 30 "$gpu/readyz" | grep -q '"gpu":"down"' || { echo "readyz does not show gpu down"; curl -s "$gpu/readyz"; exit 1; }
  # Greedy: a sampled answer ends early on the end token about once in 130 runs.
  answer=$(curl -s -m 60 "$gpu/v1/chat/completions" -H "Authorization: Bearer $E2E_KEY" -H 'Content-Type: application/json' \
    -d '{"model":"tiny-deepseek","max_tokens":4,"temperature":0,"messages":[{"role":"user","content":"hi"}]}')
  grep -q '"completion_tokens":4' <<<"$answer" ||
    { echo "the cpu backend did not answer after the gpu one: $answer"; exit 1; }
  stop_within 30 "${pids[-1]}" "$work/gpu.log"
fi

# The README's quick start: the embedded config serves the demo recipe's model as tiny-deepseek.
"$build/tollgate-engine" make-tiny --recipe "$here/../../config/examples/tiny-deepseek-v3.recipe.json" \
  --out "$work/demo-model" >/dev/null
TOLLGATE_LISTEN=127.0.0.1:0 TOLLGATE_DEMO_CHECKPOINT="$work/demo-model" "$build/tollgate" serve \
  >"$work/demo.log" 2>&1 &
pids+=($!)
demo=$(wait_listening "$work/demo.log")
curl -sN -m 60 "$demo/v1/chat/completions" -H 'Authorization: Bearer tg-demo-key' -H 'Content-Type: application/json' \
  -d '{"model":"tiny-deepseek","stream":true,"max_tokens":40,"temperature":0,"messages":[{"role":"user","content":"hello"}]}' \
  >"$work/demo.sse"
[ "$(grep -c '^data: {' "$work/demo.sse")" -ge 10 ] && grep '^data:' "$work/demo.sse" | tail -1 | grep -q '^data: \[DONE\]' ||
  { echo "the quick start's stream is wrong:"; cat "$work/demo.sse" "$work/demo.log"; exit 1; }
echo "e2e local engine: ok"
