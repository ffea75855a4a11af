#!/usr/bin/env bash
# Builds the libFuzzer targets (clang, ASan and UBSan) in build-fuzz/ and runs each for a bounded
# time, starting from its corpus in tests/fuzz/corpus/ (copied, so that runs do not grow the
# committed one). Usage: tests/fuzz/run.sh [SECONDS_PER_TARGET=60] [TARGET...]
# A crash leaves its input in build-fuzz/crashes/ and makes the script fail.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
seconds=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(request_body sse usage http_head config tokenizer)
build="$root/build-fuzz"
command -v clang++ >/dev/null || { echo "fuzz: clang++ is needed (Debian: apt-get install clang)"; exit 2; }
cmake -S "$here" -B "$build" -G Ninja -DCMAKE_CXX_COMPILER=clang++ >/dev/null
nice cmake --build "$build" -j"${JOBS:-2}" --target $(printf '%s_fuzz ' "${targets[@]}")
mkdir -p "$build/crashes"
failed=0
for t in "${targets[@]}"; do
  work="$build/corpus/$t"
  mkdir -p "$work"
  cp -n "$here/corpus/$t/"* "$work/" 2>/dev/null || true
  echo "fuzz: $t for ${seconds}s"
  if ! "$build/${t}_fuzz" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
      -artifact_prefix="$build/crashes/${t}-" -print_final_stats=1 "$work" >"$build/$t.log" 2>&1; then
    echo "fuzz: $t FAILED (see $build/$t.log and $build/crashes/)"
    tail -30 "$build/$t.log"
    failed=1
  else
    grep -E "^stat::number_of_executed_units|^#[0-9]+.*DONE" "$build/$t.log" | tail -2 || true
  fi
done
exit $failed
