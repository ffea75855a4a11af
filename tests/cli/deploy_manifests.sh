#!/usr/bin/env bash
# The Kubernetes manifests build with kustomize (kubectl kustomize, offline), carry the probes
# the gateway answers, and the config in their ConfigMap passes `tollgate check-config`; the
# systemd unit passes `systemd-analyze verify` (with the built binary in ExecStart).
set -euo pipefail
build=$(cd "${1:?usage: deploy_manifests.sh BUILD_DIR}" && pwd)
root=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
if ! command -v kubectl >/dev/null; then echo "SKIP: kubectl is not installed"; exit 77; fi
python3 -c 'import yaml' 2>/dev/null || { echo "SKIP: python3-yaml is not installed"; exit 77; }
kubectl kustomize "$root/deploy/kubernetes" >"$work/all.yaml" || fail "kustomize could not build deploy/kubernetes"
python3 - "$work/all.yaml" "$work/tollgate.yaml" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
kinds = sorted(d["kind"] for d in docs)
want = ["ConfigMap", "Deployment", "HorizontalPodAutoscaler", "Namespace", "PodDisruptionBudget", "Secret", "Service"]
assert kinds == want, f"kinds {kinds}, expected {want}"
dep = next(d for d in docs if d["kind"] == "Deployment")
c = dep["spec"]["template"]["spec"]["containers"][0]
assert c["readinessProbe"]["httpGet"]["path"] == "/readyz", "readiness probe is not /readyz"
assert c["livenessProbe"]["httpGet"]["path"] == "/healthz", "liveness probe is not /healthz"
assert dep["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
cm = next(d for d in docs if d["kind"] == "ConfigMap")
open(sys.argv[2], "w").write(cm["data"]["tollgate.yaml"])
print("manifests:", ", ".join(kinds))
PY
TOLLGATE_ADMIN_KEY=an-admin-key-of-some-length TOLLGATE_POSTGRES_URL=postgresql://u@db:5432/t TOLLGATE_REDIS_URL=redis://cache:6379 \
  DEEPSEEK_API_KEY=x "$build/tollgate" check-config "$work/tollgate.yaml" || fail "the ConfigMap's config does not load"
if command -v systemd-analyze >/dev/null; then
  sed "s|/usr/local/bin/tollgate|$build/tollgate|" "$root/deploy/systemd/tollgate.service" >"$work/tollgate.service"
  SYSTEMD_LOG_LEVEL=warning systemd-analyze verify "$work/tollgate.service" || fail "systemd-analyze rejects the unit"
  echo "systemd unit: verified"
fi
echo "deploy_manifests: 1 passed, 0 failed"
