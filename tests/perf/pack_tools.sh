#!/usr/bin/env bash
# Packs what tests/perf/bench.sh and sse_relay.py need (wrk, nginx, bc, and tollgate builds) with
# the shared libraries they load, for a quiet machine that has none of them installed (the GPU
# machine: many idle cores, so side-by-side runs there are not disturbed by each other or by
# builds). Each program becomes a wrapper that sets LD_LIBRARY_PATH for itself alone, so the
# machine's own programs (python3) keep their libraries.
#
# usage: [PERF=1] tests/perf/pack_tools.sh DIR NAME=BUILD_DIR...
#   e.g. tests/perf/pack_tools.sh .perfcarry plain=build-nocuda pgo=build-pgo
# then, on the other machine (DIR carried there):
#   export PATH=$PWD/DIR/bin:$PATH; mkdir -p /var/lib/nginx /var/log/nginx
#   BASELINE=DIR/plain TARGETS="nginx tollgate baseline" tests/perf/bench.sh DIR/pgo
set -euo pipefail
d=${1:?usage: pack_tools.sh DIR NAME=BUILD_DIR...}
shift
rm -rf "$d"
mkdir -p "$d/bin" "$d/real" "$d/lib"
# Everything a program loads but libc and the compiler's runtime, which the other machine has in
# a version at least as new.
copy_libs() {
  ldd "$1" | awk '$3 ~ /^\// {print $3}' | while read -r lib; do
    case "$(basename "$lib")" in
      libc.so.*|libm.so.*|libpthread.so.*|libdl.so.*|librt.so.*|libresolv.so.*|ld-linux*|libgcc_s.so.*|libstdc++.so.*) ;;
      *) cp -Lu "$lib" "$d/lib/" ;;
    esac
  done
}
wrap() {  # SOURCE_BINARY WRAPPER_PATH
  local name
  name=$(basename "$2")-$(basename "$(dirname "$2")")
  cp -L "$1" "$d/real/$name"
  strip --strip-debug "$d/real/$name"
  copy_libs "$1"
  cat >"$2" <<SH
#!/bin/sh
here=\$(cd "\$(dirname "\$0")/.." && pwd)
LD_LIBRARY_PATH=\$here/lib exec "\$here/real/$name" "\$@"
SH
  chmod +x "$2"
}
# perf (PERF=1, about 26 MB with its libraries) for bench.sh's PROFILE and SYSCALLS there.
for tool in wrk nginx bc ${PERF:+perf}; do
  wrap "$(command -v "$tool")" "$d/bin/$tool"
done
for spec in "$@"; do
  name=${spec%%=*}
  build=${spec#*=}
  mkdir -p "$d/$name"
  wrap "$build/tollgate" "$d/$name/tollgate"
done
echo "pack_tools: $(du -sh "$d" | cut -f1) in $d"
