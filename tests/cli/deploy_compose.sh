#!/usr/bin/env bash
# deploy/compose/: the compose file parses and names the services the README promises; every file
# it mounts exists; the replicas' config passes `tollgate check-config`; nginx accepts its config
# (`nginx -t`, the replicas' host names pointed at loopback); promtool accepts the scrape config
# when installed. No Docker engine runs here, so nothing is started.
set -euo pipefail
build=$(cd "${1:?usage: deploy_compose.sh BUILD_DIR}" && pwd)
root=$(cd "$(dirname "$0")/../.." && pwd)
dir="$root/deploy/compose"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
python3 -c 'import yaml' 2>/dev/null || { echo "SKIP: python3-yaml is not installed"; exit 77; }
python3 - "$dir" <<'PY'
import os, sys, yaml
d = sys.argv[1]
c = yaml.safe_load(open(os.path.join(d, "compose.yaml")))
services = set(c["services"])
want = {"postgres", "redis", "tollgate-a", "tollgate-b", "nginx", "prometheus", "grafana"}
assert services == want, f"services {sorted(services)}, expected {sorted(want)}"
for name, s in c["services"].items():
    for v in s.get("volumes", []):
        src = v.split(":")[0]
        if src.startswith("."):
            assert os.path.exists(os.path.join(d, src)), f"{name} mounts {src}, which does not exist"
b = c["services"]["tollgate-b"]
assert b.get("image") == c["services"]["tollgate-a"]["image"], "the replicas run different images"
assert os.path.exists(os.path.join(d, c["services"]["tollgate-a"]["build"]["context"],
                                   c["services"]["tollgate-a"]["build"]["dockerfile"])), "the Dockerfile is missing"
for f in ("grafana/datasource.yaml", "grafana/dashboards.yaml"):
    assert yaml.safe_load(open(os.path.join(d, f)))["apiVersion"] == 1, f
print("compose: services", ", ".join(sorted(services)))
PY
TOLLGATE_ADMIN_KEY=an-admin-key-of-some-length TOLLGATE_POSTGRES_URL=postgresql://u@db:5432/t \
  TOLLGATE_REDIS_URL=redis://cache:6379 DEEPSEEK_API_KEY=x "$build/tollgate" check-config "$dir/tollgate.yaml" ||
  fail "deploy/compose/tollgate.yaml does not load"
if command -v nginx >/dev/null || [ -x /usr/sbin/nginx ]; then
  ng=$(command -v nginx || echo /usr/sbin/nginx)
  sed -e 's/tollgate-[ab]:8080/127.0.0.1:8080/' "$dir/nginx.conf" >"$work/nginx.conf"
  sed -i 's/^events {}/pid '"${work//\//\\/}"'\/nginx.pid;\nerror_log '"${work//\//\\/}"'\/error.log;\nevents {}/' "$work/nginx.conf"
  "$ng" -t -q -p "$work" -c "$work/nginx.conf" 2>"$work/nginx.err" || { cat "$work/nginx.err"; fail "nginx -t rejects deploy/compose/nginx.conf"; }
  echo "nginx: config accepted"
fi
if command -v promtool >/dev/null; then
  promtool check config "$dir/prometheus.yml" >/dev/null || fail "promtool rejects deploy/compose/prometheus.yml"
  echo "promtool: config accepted"
fi
echo "deploy_compose: 1 passed, 0 failed"
