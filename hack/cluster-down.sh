#!/usr/bin/env bash
# Stops the local control plane started by hack/cluster-up.sh and removes its etcd data.
# Safe to run when nothing is up. Logs, certificates and the kubeconfig stay in the state dir
# unless --purge is given, which removes what cluster-up created there (and the dir if empty).
#
# Stops the pids in ${MUSTER_CLUSTER_DIR:-<repo>/.cluster}/pids and also any leftover
# etcd/kube-apiserver/kube-controller-manager/kwok/vc-scheduler process whose command line
# references this state dir (SIGTERM, then SIGKILL after MUSTER_STOP_TIMEOUT seconds, 20).
set -euo pipefail

CL_NAME=cluster-down
purge=0
for arg in "$@"; do
  case $arg in
    --purge) purge=1 ;;
    -h | --help)
      sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'
      echo "usage: $0 [--purge]"
      exit 0
      ;;
    *)
      echo "unknown argument: $arg (usage: $0 [--purge])" >&2
      exit 2
      ;;
  esac
done

CL_USE_SAVED_PORTS=1
# shellcheck source=hack/cluster-lib.sh
. "$(dirname "$0")/cluster-lib.sh"
# Without a state dir (e.g. deleted by hand) there is no lock to take and no pid file, but
# leftover processes that reference the dir are still found and stopped below.
if [ -d "$CL_STATE" ]; then cl_lock; fi

t0=$SECONDS
cl_stop_all "${MUSTER_STOP_TIMEOUT:-20}" || { cl_log "ERROR: could not stop every process"; exit 1; }
cl_remove_etcd_data
rm -f "$CL_STATE/cluster.env"

# Every port must be free again; a port still held means a process we do not know about.
busy=()
for p in $(cl_all_ports); do cl_port_busy "$p" && busy+=("$p"); done
if [ ${#busy[@]} -gt 0 ]; then
  cl_log "WARNING: port(s) ${busy[*]} still in use (not by a process of this cluster):"
  for p in "${busy[@]}"; do ss -Hltnp "( sport = :$p )" >&2 || true; done
fi

if [ "$purge" = 1 ] && [ -d "$CL_STATE" ]; then
  # Remove only what cluster-up creates (MUSTER_CLUSTER_DIR may point somewhere shared), then
  # the directory itself if that left it empty.
  exec 9>&-
  (cd "$CL_STATE" && rm -rf kubeconfig pki logs pids kwok kubectl-cache nodes.yaml hypernodes.yaml \
    cluster.env ports.env etcd-data etcd-data.d .lock)
  rmdir "$CL_STATE" 2>/dev/null || cl_log "left $CL_STATE in place: it holds files cluster-up did not create"
  cl_log "stopped and purged $CL_STATE ($((SECONDS - t0))s)"
elif [ -d "$CL_LOGS" ]; then
  cl_log "stopped ($((SECONDS - t0))s); logs kept in $CL_LOGS (use --purge to remove them)"
else
  cl_log "stopped ($((SECONDS - t0))s)"
fi
[ ${#busy[@]} -eq 0 ]
