#!/usr/bin/env bash
# Validates the deployment manifests against the local control plane's apiserver, without
# creating anything: renders config/ (CRDs + config/deploy) with `kubectl kustomize`, placed in
# namespace $1 (which must exist) by a throwaway overlay, and sends it through
# `kubectl apply --server-side --force-conflicts --dry-run=server` (schema, defaulting, admission, RBAC escalation
# checks). The Prometheus Operator objects (config/deploy/monitoring) are validated the same way
# when the cluster has the monitoring.coreos.com CRDs, and skipped with a message otherwise
# (their selectors and ports are checked by tests/e2e/tests/observability_refs.rs).
# Called by the demo smoke test (MUSTER_DEMO_SMOKE=1 hack/demo.sh).
set -euo pipefail
CL_NAME=check-deploy
# shellcheck source=hack/cluster-lib.sh
. "$(dirname "$0")/cluster-lib.sh"
NS=${1:?usage: $0 NAMESPACE}
work=$CL_STATE/deploy-check
rm -rf "$work"
mkdir -p "$work/all" "$work/monitoring"

"$CL_KUBECTL" kustomize --help >/dev/null 2>&1 || { cl_log "ERROR: $CL_KUBECTL has no 'kustomize' subcommand"; exit 1; }
overlay() { # dir, base (relative to the repo)
  local rel
  rel=$(python3 -c 'import os, sys; print(os.path.relpath(sys.argv[1], sys.argv[2]))' "$CL_REPO/$2" "$1")
  printf 'apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nnamespace: %s\nresources:\n  - %s\n' "$NS" "$rel" >"$1/kustomization.yaml"
}

overlay "$work/all" config
"$CL_KUBECTL" kustomize "$work/all" >"$work/all.yaml"
kinds=$(grep -c '^kind:' "$work/all.yaml")
cl_kubectl apply --server-side --force-conflicts --dry-run=server -f "$work/all.yaml" >"$work/all.out" 2>&1 || {
  cl_log "ERROR: the apiserver rejected config/ (kustomize build in $work/all.yaml):"
  grep -v 'serverside-applied (server dry run)' "$work/all.out" >&2 || true
  exit 1
}
cl_log "config/ renders to $kinds objects; the apiserver accepts all of them (server-side dry run, namespace $NS)"

if cl_kubectl get crd servicemonitors.monitoring.coreos.com podmonitors.monitoring.coreos.com prometheusrules.monitoring.coreos.com >/dev/null 2>&1; then
  overlay "$work/monitoring" config/deploy/monitoring
  "$CL_KUBECTL" kustomize "$work/monitoring" >"$work/monitoring.yaml"
  cl_kubectl apply --server-side --force-conflicts --dry-run=server -f "$work/monitoring.yaml" >"$work/monitoring.out" 2>&1 || {
    cl_log "ERROR: the apiserver rejected config/deploy/monitoring:"
    cat "$work/monitoring.out" >&2
    exit 1
  }
  cl_log "config/deploy/monitoring: accepted (server-side dry run)"
else
  "$CL_KUBECTL" kustomize "$CL_REPO/config/deploy/monitoring" >/dev/null
  cl_log "config/deploy/monitoring renders; apiserver validation SKIPPED: this cluster has no Prometheus Operator CRDs (monitoring.coreos.com)"
fi
rm -rf "$work"
