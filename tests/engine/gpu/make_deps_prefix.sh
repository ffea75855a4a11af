#!/usr/bin/env bash
# The GPU machine lacks a few development files the build needs (nlohmann_json, Catch2, SQLite's
# and PCRE2's headers and link names). This copies them from this machine's Debian packages into
# a prefix folder that travels with the device call (name it in `carry`, keep it ignored):
#
#   tests/engine/gpu/make_deps_prefix.sh .devdeps && echo /.devdeps/ >> .git/info/exclude
#   # then, on the GPU machine:
#   D=$PWD/.devdeps PKG_CONFIG_PATH=$D/lib/pkgconfig LD_LIBRARY_PATH=$D/lib TOLLGATE_DEPS_PREFIX=$D \
#     TOLLGATE_CMAKE_ARGS="-DSQLite3_INCLUDE_DIR=$D/include -DSQLite3_LIBRARY=$D/lib/libsqlite3.so" \
#     tests/engine/gpu/device_run.sh all "$OUT"
set -euo pipefail
d=${1:?usage: make_deps_prefix.sh DIR}
mkdir -p "$d/include" "$d/lib/pkgconfig" "$d/lib/cmake" "$d/share/cmake"
cp -r /usr/include/nlohmann /usr/include/catch2 "$d/include/"
cp /usr/include/sqlite3.h /usr/include/sqlite3ext.h /usr/include/pcre2.h "$d/include/"
cp -r /usr/share/cmake/nlohmann_json "$d/share/cmake/"
cp -r /usr/lib/cmake/Catch2 "$d/lib/cmake/"
cp /usr/lib/libCatch2WithMain.a "$d/lib/"
cp -L /usr/lib/x86_64-linux-gnu/libsqlite3.so.0 "$d/lib/libsqlite3.so.0"
ln -sf libsqlite3.so.0 "$d/lib/libsqlite3.so"
cp -L /usr/lib/x86_64-linux-gnu/libpcre2-8.so.0 "$d/lib/libpcre2-8.so.0"
ln -sf libpcre2-8.so.0 "$d/lib/libpcre2-8.so"
cat >"$d/lib/pkgconfig/libpcre2-8.pc" <<'PC'
prefix=${pcfiledir}/../..
libdir=${prefix}/lib
includedir=${prefix}/include
Name: libpcre2-8
Description: PCRE2 8-bit, copied for the GPU machine
Version: 10.42
Libs: -L${libdir} -lpcre2-8
Cflags: -I${includedir}
PC
# libpq and hiredis (the PostgreSQL store and the Redis limiter), with the libraries libpq loads
# that such a machine may lack (Kerberos, LDAP, SASL, GnuTLS and theirs; not libc or OpenSSL).
mkdir -p "$d/include/postgresql"
cp /usr/include/postgresql/libpq-fe.h /usr/include/postgresql/postgres_ext.h /usr/include/postgresql/pg_config_ext.h \
  "$d/include/postgresql/"
cp -r /usr/include/hiredis "$d/include/"
cp -L /usr/lib/x86_64-linux-gnu/libpq.so.5 "$d/lib/"
ln -sf libpq.so.5 "$d/lib/libpq.so"
cp -L /usr/lib/x86_64-linux-gnu/libhiredis.so.0.14 "$d/lib/"
ln -sf libhiredis.so.0.14 "$d/lib/libhiredis.so"
for lib in $(ldd /usr/lib/x86_64-linux-gnu/libpq.so.5 | awk '$3 ~ /^\// {print $3}'); do
  case "$(basename "$lib")" in libc.so.*|libssl.so.*|libcrypto.so.*|libresolv.so.*) continue ;; esac
  cp -L "$lib" "$d/lib/"
done
cat >"$d/lib/pkgconfig/libpq.pc" <<'PC'
prefix=${pcfiledir}/../..
libdir=${prefix}/lib
includedir=${prefix}/include/postgresql
Name: libpq
Description: PostgreSQL client library, copied for the GPU machine
Version: 15
Libs: -L${libdir} -lpq
Cflags: -I${includedir}
PC
cat >"$d/lib/pkgconfig/hiredis.pc" <<'PC'
prefix=${pcfiledir}/../..
libdir=${prefix}/lib
includedir=${prefix}/include
Name: hiredis
Description: Redis client library, copied for the GPU machine
Version: 0.14.1
Libs: -L${libdir} -lhiredis
Cflags: -I${includedir}
PC
echo "make_deps_prefix: $(du -sh "$d" | cut -f1) in $d"
