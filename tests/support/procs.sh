# Helpers for test scripts that start servers: source it, add PIDs to `pids`, and they are
# stopped (and the work folder removed) on exit.
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# wait_listening LOG: waits (up to 10 s) for "listening on http://HOST:PORT" in LOG, prints the URL.
wait_listening() {
  local url
  for _ in $(seq 1 100); do
    url=$(grep -o 'listening on http://[0-9.]*:[0-9]*' "$1" 2>/dev/null | head -1 | sed 's/listening on //')
    [ -n "$url" ] && { echo "$url"; return 0; }
    sleep 0.1
  done
  echo "timed out waiting for $1" >&2
  cat "$1" >&2
  return 1
}
