#!/usr/bin/env bash
# Soak: mixed load (whole answers and streams, small and large prompts) through tollgate to two
# fake upstreams in a failover route, while the config is rewritten every 10 s (hot reload) and
# one upstream is killed for 3 s every 15 s. Samples tollgate's RSS and open descriptors every
# 5 s, and at the end compares the ledger with the answers the clients received (SIGTERM first,
# so the ledger is flushed). Bounded: SECONDS of load, 8 clients, loopback only.
#
# usage: tests/perf/soak.sh BUILD_DIR [SECONDS]   (default 120)
set -euo pipefail
build=$(cd "${1:?usage: soak.sh BUILD_DIR [SECONDS]}" && pwd)
duration=${2:-120}
here=$(cd "$(dirname "$0")" && pwd)
source "$here/../support/procs.sh"
command -v sqlite3 >/dev/null || { echo "soak: sqlite3 is not installed"; exit 1; }

start_upstream() {  # NAME [PORT]
  "$build/tollgate-fake-upstream" --port "${2:-0}" >"$work/$1.log" 2>&1 &
  echo $! >"$work/$1.pid"
}
start_upstream a
start_upstream b
url_a=$(wait_listening "$work/a.log")
url_b=$(wait_listening "$work/b.log")
port_a=${url_a##*:}

write_config() {  # GENERATION
  cat >"$work/tollgate.yaml.new" <<YAML
# generation $1
store: {sqlite: $work/ledger.db}
server: {listen: "127.0.0.1:0", threads: 2, access_log: "off", shutdown_timeout: 20s}
keys: [{name: soak, key: tg-soak}]
backends:
  - {name: a, kind: openai, base_url: "$url_a/v1", ejection: {after_failures: 2, cooldown: 1s}}
  - {name: b, kind: openai, base_url: "$url_b/v1"}
routes: [{model: m, targets: [{backend: a}, {backend: b}]}]
YAML
  mv "$work/tollgate.yaml.new" "$work/tollgate.yaml"
}
write_config 0
"$build/tollgate" serve --config "$work/tollgate.yaml" >"$work/tollgate.log" 2>&1 &
gateway=$!
url=$(wait_listening "$work/tollgate.log")

sample() {
  local rss fds
  rss=$(awk '/VmRSS/ {print $2}' "/proc/$gateway/status")
  fds=$(ls "/proc/$gateway/fd" | wc -l)
  echo "$1 $rss $fds" >>"$work/samples"
}
sample 0

python3 - "$url" "$duration" "$work/answered" <<'PY' &
import http.client, json, sys, threading, time, urllib.parse
url, duration, out = urllib.parse.urlparse(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
end = time.time() + duration
counts, lock = {}, threading.Lock()
big = "x " * 50000  # a 100 KB prompt now and then

def client(n):
    i = 0
    while time.time() < end:
        i += 1
        stream = i % 2 == 0
        content = big if i % 10 == 0 else f"soak {n} {i}"
        body = {"model": "m", "stream": stream, "messages": [{"role": "user", "content": content}]}
        try:
            c = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
            c.request("POST", "/v1/chat/completions", json.dumps(body),
                      {"Authorization": "Bearer tg-soak", "Content-Type": "application/json"})
            r = c.getresponse()
            r.read()
            c.close()
            key = str(r.status)
        except Exception as e:  # noqa: BLE001 - counted as unanswered
            key = "none:" + type(e).__name__
        with lock:
            counts[key] = counts.get(key, 0) + 1

threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
for t in threads: t.start()
for t in threads: t.join()
json.dump(counts, open(out, "w"))
PY
load=$!

t0=$(date +%s)
gen=0
while kill -0 "$load" 2>/dev/null; do
  sleep 5
  now=$(( $(date +%s) - t0 ))
  sample "$now"
  if [ $((now % 10)) -lt 5 ]; then gen=$((gen + 1)); write_config "$gen"; fi
  if [ $((now % 15)) -lt 5 ] && [ "$now" -lt "$duration" ]; then
    kill "$(cat "$work/a.pid")" 2>/dev/null || true
    sleep 3
    start_upstream a "$port_a"
  fi
done
wait "$load"
sample end
kill -TERM "$gateway"
wait "$gateway" || { echo "soak: tollgate exited with an error"; tail -5 "$work/tollgate.log"; exit 1; }
for p in a b; do kill "$(cat "$work/$p.pid")" 2>/dev/null || true; done

answered=$(python3 -c "import json,sys; c=json.load(open(sys.argv[1])); print(sum(v for k,v in c.items() if not k.startswith('none')))" "$work/answered")
records=$(sqlite3 "$work/ledger.db" 'SELECT count(*) FROM usage_ledger')
reloads=$(grep -c "tollgate: reloaded" "$work/tollgate.log" || true)
echo "statuses: $(cat "$work/answered")"
echo "reloads: $reloads, upstream a killed $(( duration / 15 )) times"
awk 'NR==1 {r0=$2; f0=$3} {if ($2>rmax) rmax=$2; if ($3>fmax) fmax=$3; r=$2; f=$3}
     END {printf "RSS KB start %d, max %d, end %d; fds start %d, max %d, end %d\n", r0, rmax, r, f0, fmax, f}' "$work/samples"
echo "answered $answered, ledger records $records"
[ "$answered" -gt 0 ] || { echo "soak: no answers"; exit 1; }
[ "$records" -eq "$answered" ] || { echo "soak: the ledger ($records) differs from the answers ($answered)"; exit 1; }
echo "soak: ok"
