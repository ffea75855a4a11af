#!/usr/bin/env bash
# The whole Catch2 suite (and the binary) built with AddressSanitizer and UndefinedBehaviorSanitizer
# in build-asan/, then run: any sanitizer report fails the run.
# Usage: tests/sanitize.sh [CATCH2_FILTER...]   e.g. tests/sanitize.sh "[hardening]"
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build="$root/build-asan"
flags="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_CXX_FLAGS="$flags" -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=address,undefined" >/dev/null
nice cmake --build "$build" -j"${JOBS:-2}" --target tollgate tollgate-tests tollgate-fake-upstream
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:strict_string_checks=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
cd "$build"
# Without descriptors the sanitizers cannot check memory (they use a pipe): [fd_limit] is left out,
# of each comma-separated term of a filter (Catch2 applies an exclusion to the term it ends).
spec=$(IFS=,; printf '%s' "$*")
if [ -n "$spec" ]; then spec="${spec//,/~[fd_limit],}~[fd_limit]"; else spec="~[fd_limit]"; fi
"$build/tollgate-tests" "$spec"
# The same tests over libcurl.
TOLLGATE_TEST_TRANSPORT=curl "$build/tollgate-tests" "[integration],[resilience],[metering],[limits]"
