#!/usr/bin/env bash
# Prints the config deploy/demo.sh serves: config/examples/demo.yaml (the embedded default) plus a
# store, so that the demo's keys can be managed with `tollgate keys` and its requests land in a
# usage ledger. Paths in it are relative to the folder tollgate runs in (the repository for the demo).
# Usage: deploy/demo-config.sh > data/demo.yaml
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cat <<'HEAD'
# Your copy of config/examples/demo.yaml, written by deploy/demo.sh; it is never overwritten, so
# edit it: the running gateway reloads it within a second of a save (or on kill -HUP).
HEAD
cat "$root/config/examples/demo.yaml"
cat <<'TAIL'

# Keys created with `build/tollgate keys create --config data/demo.yaml ...`, and the usage ledger.
store: {sqlite: data/demo.db}
TAIL
