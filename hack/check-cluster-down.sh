#!/usr/bin/env bash
# Fails if anything of the local control plane is still running or listening after
# cluster-down: a process whose command line names the cluster's state dir, or a port of ours.
set -euo pipefail
CL_NAME=check-cluster-down
# shellcheck source=hack/cluster-lib.sh
source "$(dirname "$0")/cluster-lib.sh"
bad=0
for pid in $(pgrep -f -- "$CL_STATE" || true); do
  [ "$pid" = "$$" ] && continue
  cl_pid_is_ours "$pid" || continue
  echo "still running: pid $pid: $(tr '\0' ' ' </proc/"$pid"/cmdline 2>/dev/null)" >&2
  bad=1
done
for port in "$CL_ETCD_PORT" "$CL_ETCD_PEER_PORT" "$CL_API_PORT" "$CL_KCM_PORT" "$CL_VC_HEALTHZ_PORT" "$CL_VC_METRICS_PORT" "$CL_KWOK_PORT"; do
  [ "$port" = 0 ] && continue
  if ss -Hltn "sport = :$port" | grep -q .; then
    echo "still listening on 127.0.0.1:$port" >&2
    bad=1
  fi
done
if [ $bad -ne 0 ]; then
  echo "cluster-down left processes or ports behind" >&2
  exit 1
fi
echo "cluster-down left no process or port behind"
