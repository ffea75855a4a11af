#!/usr/bin/env bash
# Sets up, builds and runs Tollgate with its embedded demo config, in front of a local demo
# upstream (an OpenAI-compatible echo server on 127.0.0.1:9001) and a tiny random DeepSeek-V3
# model that the bundled engine serves on the CPU. Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/setup.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build --target tollgate tollgate-fake-upstream tollgate-engine
[ -f data/tiny-deepseek-v3/model.safetensors ] ||
  build/tollgate-engine make-tiny --recipe config/examples/tiny-deepseek-v3.recipe.json --out data/tiny-deepseek-v3
build/tollgate-fake-upstream --port 9001 >/dev/null &
upstream=$!
trap 'kill $upstream 2>/dev/null || true' EXIT
echo "demo upstream on http://127.0.0.1:9001; gateway key: ${TOLLGATE_DEMO_KEY:-tg-demo-key}"
build/tollgate serve
