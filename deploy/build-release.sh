#!/usr/bin/env bash
# The release build of the gateway: profile-guided and link-time optimised. It builds `tollgate`
# with counters (TOLLGATE_PGO=generate), runs the training load (deploy/pgo-train.sh: short,
# streamed, long and Anthropic requests through the gateway on loopback, about 15 seconds), then
# rebuilds it in the same folder from the counters with link-time optimisation
# (TOLLGATE_PGO=use, TOLLGATE_LTO=ON). About twice a plain build's time; the binary is
# BUILD_DIR/tollgate. tests/perf/README.md ("The release build") has what it gains.
#
# usage: deploy/build-release.sh [BUILD_DIR] [CMAKE_ARGS...]   (BUILD_DIR defaults to build-release)
#   e.g. deploy/build-release.sh /build -DTOLLGATE_CUDA=OFF
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-build-release}
[ $# -gt 0 ] && shift
configure() {
  cmake -S . -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DTOLLGATE_TESTS=OFF "$@" >/dev/null
}
echo "build-release: 1/3, the build with counters"
configure -DTOLLGATE_PGO=generate -DTOLLGATE_LTO=OFF "$@"
# Counters of an earlier training would be added to this one's, from code that may have changed.
find "$dir" -name '*.gcda' -delete
cmake --build "$dir" --target tollgate tollgate-fake-upstream
echo "build-release: 2/3, the training load"
deploy/pgo-train.sh "$dir"
echo "build-release: 3/3, the optimised build"
configure -DTOLLGATE_PGO=use -DTOLLGATE_LTO=ON "$@"
cmake --build "$dir" --target tollgate
echo "build-release: $dir/tollgate"
