#!/usr/bin/env bash
# `make test`: lint, bring the local control plane up (building it once per machine), run every
# unit and end-to-end test, check that the cluster scripts are idempotent and leave nothing
# behind. Component logs are printed when anything fails.
set -euo pipefail
cd "$(dirname "$0")/.."
step() { echo; echo "==> $*"; }
t0=$SECONDS

step "lint: cargo fmt, clippy -D warnings, CRDs up to date"
make -s lint

cleanup() {
  rc=$?
  if [ $rc -ne 0 ]; then
    echo "make test failed (exit $rc); component logs follow" >&2
    bash hack/print-cluster-logs.sh 80 >&2 || true
  fi
  bash hack/cluster-down.sh >/dev/null 2>&1 || true
  exit $rc
}
trap cleanup EXIT

step "local control plane up"
bash hack/cluster-up.sh

step "unit and end-to-end tests"
bash hack/redis.sh ensure # router traffic-policy tests start private redis-server instances
cargo test --workspace

# The binaries were just built by cargo test; the smoke test uses them as they are.
step "demo smoke test: make demo's path in its own namespace, deployment manifests vs the apiserver"
MUSTER_DEMO_SMOKE=1 MUSTER_DEMO_BUILD=0 bash hack/demo.sh

step "cluster scripts: a second cluster-up is a no-op, cluster-down leaves nothing behind"
bash hack/cluster-up.sh
bash hack/cluster-down.sh
bash hack/check-cluster-down.sh

echo
echo "make test: all checks passed in $((SECONDS - t0))s"
