#!/usr/bin/env bash
# Sets up, builds and runs Tollgate with the demo config, in front of a local demo upstream (an
# OpenAI-compatible echo server on 127.0.0.1:9001) and a tiny random DeepSeek-V3 model that the
# bundled engine serves on the CPU. The config is data/demo.yaml, a copy of
# config/examples/demo.yaml with a store: edit it and the gateway reloads. Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/setup.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
# Only what the demo runs; the tests are built by `cmake --build build`.
targets=(tollgate tollgate-engine tollgate-fake-upstream)
if [ ! -x build/tollgate ]; then
  steps=$(ninja -C build -n "${targets[@]}" 2>/dev/null | grep -c '^\[' || true)
  echo "demo: first build, ${steps:-about 60} steps: several minutes on 2 cores (later builds are incremental)"
fi
cmake --build build --target "${targets[@]}"
[ -f data/tiny-deepseek-v3/model.safetensors ] ||
  build/tollgate-engine make-tiny --recipe config/examples/tiny-deepseek-v3.recipe.json --out data/tiny-deepseek-v3
mkdir -p data
if [ ! -f data/demo.yaml ]; then
  deploy/demo-config.sh >data/demo.yaml
  echo "demo: wrote data/demo.yaml (edit it while the gateway runs: it reloads)"
fi
build/tollgate-fake-upstream --port 9001 >/dev/null &
upstream=$!
trap 'kill $upstream 2>/dev/null || true' EXIT
echo "demo upstream on http://127.0.0.1:9001; gateway key: ${TOLLGATE_DEMO_KEY:-tg-demo-key}; config: data/demo.yaml"
build/tollgate serve --config data/demo.yaml
