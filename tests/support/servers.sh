# Real PostgreSQL and Redis servers for test scripts, on free loopback ports in the work folder
# (source procs.sh first). A script whose server binaries are absent exits 77, which ctest
# reports as skipped (SKIP_RETURN_CODE); deploy/setup.sh --test installs them.

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

pg_bin=""
for d in /usr/local/bin /usr/lib/postgresql/*/bin; do
  if [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then pg_bin=$d; break; fi
done
pg_dir="" pg_port="" pg_url=""
# PostgreSQL refuses to run as root: as root, the server runs as the postgres user.
pg_as() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

start_postgres() {
  if [ -z "$pg_bin" ] || ! command -v psql >/dev/null; then
    echo "SKIP: PostgreSQL (initdb, pg_ctl, psql) is not installed; deploy/setup.sh --test installs it"
    exit 77
  fi
  pg_dir="$work/pg"
  mkdir -p "$pg_dir"
  if [ "$(id -u)" -eq 0 ]; then chown postgres "$pg_dir"; chmod 755 "$work"; fi
  pg_port=$(free_port)
  pg_as "$pg_bin/initdb" -D "$pg_dir/data" -A trust -U tollgate --no-sync >"$work/initdb.log" 2>&1 ||
    { cat "$work/initdb.log"; exit 1; }
  pg_url="postgresql://tollgate@127.0.0.1:$pg_port/postgres"
  pg_start
}
pg_start() {
  pg_as "$pg_bin/pg_ctl" -D "$pg_dir/data" -l "$pg_dir/server.log" -w -t 30 \
    -o "-p $pg_port -k $pg_dir -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null
}
pg_stop() { pg_as "$pg_bin/pg_ctl" -D "$pg_dir/data" -m fast -w stop >/dev/null; }
psql_q() { psql "$pg_url" -XAtq -c "$1"; }

redis_port="" redis_url="" redis_pid=""
start_redis() {
  if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
    echo "SKIP: redis-server is not installed; deploy/setup.sh --test installs it"
    exit 77
  fi
  [ -n "$redis_port" ] || redis_port=$(free_port)
  redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no --dir "$work" \
    >"$work/redis.log" 2>&1 &
  redis_pid=$!
  redis_url="redis://127.0.0.1:$redis_port"
  for _ in $(seq 1 50); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && return 0; sleep 0.1; done
  cat "$work/redis.log"
  exit 1
}
stop_redis() { kill -9 "$redis_pid" 2>/dev/null || true; wait "$redis_pid" 2>/dev/null || true; redis_pid=""; }

stop_servers() {
  [ -n "$pg_dir" ] && [ -f "$pg_dir/data/postmaster.pid" ] && pg_as "$pg_bin/pg_ctl" -D "$pg_dir/data" -m immediate stop >/dev/null 2>&1
  [ -n "$redis_pid" ] && kill -9 "$redis_pid" 2>/dev/null
  return 0
}
trap 'stop_servers; cleanup' EXIT
