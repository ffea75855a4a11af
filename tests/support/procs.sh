# Helpers for test scripts that start servers: source it, add PIDs to `pids`, and they are
# stopped (and the work folder removed) on exit. KEEP_WORK=1 keeps the work folder (the servers'
# configs and logs) and names it on stderr.
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ -n "${KEEP_WORK:-}" ]; then echo "kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT

# stop_within SECONDS PID LOG: sends SIGTERM to PID and waits up to SECONDS for it to exit with
# status 0. A process still running by then is named with each of its threads' names and kernel
# wait channels and LOG's last lines, then killed, and the call fails: a hung stop names itself
# instead of running into the test's time limit.
stop_within() {
  local limit=$1 pid=$2 log=$3 t
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 $((limit * 10))); do
    kill -0 "$pid" 2>/dev/null || { wait "$pid"; return; }
    sleep 0.1
  done
  echo "process $pid did not stop within ${limit} s of SIGTERM; its threads (name: wait channel):" >&2
  for t in /proc/"$pid"/task/*; do
    echo "  $(cat "$t/comm" 2>/dev/null): $(cat "$t/wchan" 2>/dev/null)" >&2
  done
  echo "the last lines of $log:" >&2
  tail -20 "$log" >&2
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  return 1
}

# wait_for CMD...: runs CMD every 0.1 s until it succeeds, up to 10 s; fails if it never does.
wait_for() {
  for _ in $(seq 1 100); do "$@" && return 0; sleep 0.1; done
  return 1
}

# wait_listening LOG: waits (up to 30 s) for "listening on http://HOST:PORT" in LOG, prints the URL.
wait_listening() {
  local url
  for _ in $(seq 1 300); do
    url=$(grep -o 'listening on http://[0-9.]*:[0-9]*' "$1" 2>/dev/null | head -1 | sed 's/listening on //')
    [ -n "$url" ] && { echo "$url"; return 0; }
    sleep 0.1
  done
  echo "timed out waiting for $1" >&2
  cat "$1" >&2
  return 1
}
