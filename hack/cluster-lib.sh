# shellcheck shell=bash disable=SC2034 # (variables here are used by the scripts that source this file)
# Shared settings and helpers for hack/cluster-up.sh and hack/cluster-down.sh.
# Sourced, not executed. Every listener is bound to 127.0.0.1; every address that ends up in an
# object (pod IPs, node IPs, service IPs) is inside 127.0.0.0/8.

# ---------------------------------------------------------------------------------------------
# Layout
# ---------------------------------------------------------------------------------------------
CL_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CL_STATE=${MUSTER_CLUSTER_DIR:-$CL_REPO/.cluster}
CL_STATE=$(realpath -m "$CL_STATE") # absolute: process command lines are matched against it
CL_SHARED=${MUSTER_SHARED:-$CL_REPO/../shared}
CL_KUBECONFIG=$CL_STATE/kubeconfig
CL_PKI=$CL_STATE/pki
CL_LOGS=$CL_STATE/logs
CL_PIDS=$CL_STATE/pids
# etcd data lives on tmpfs when there is one (much faster than a disk on a small CI box); the
# name is derived from the state dir so two clusters with different state dirs never share it.
# $CL_STATE/etcd-data is a symlink to it, so cluster-down finds it even if the env changed.
if [ -d /dev/shm ] && [ -w /dev/shm ]; then
  CL_ETCD_DATA=/dev/shm/muster-etcd-$(printf '%s' "$CL_STATE" | sha256sum | cut -c1-12)
else
  CL_ETCD_DATA=$CL_STATE/etcd-data.d
fi

# ---------------------------------------------------------------------------------------------
# Ports (all on 127.0.0.1). Defaults sit below the Linux ephemeral range (32768+) and away from
# the usual k8s/volcano defaults, so they neither collide with a real cluster nor with clients.
# ---------------------------------------------------------------------------------------------
# cluster-down uses the ports the running cluster was started with (saved by cluster-up).
if [ "${CL_USE_SAVED_PORTS:-0}" = 1 ] && [ -f "$CL_STATE/ports.env" ]; then
  # shellcheck source=/dev/null
  . "$CL_STATE/ports.env"
fi
CL_ETCD_PORT=${MUSTER_ETCD_PORT:-23790}
CL_ETCD_PEER_PORT=${MUSTER_ETCD_PEER_PORT:-23800}
CL_API_PORT=${MUSTER_APISERVER_PORT:-16443}
CL_KCM_PORT=${MUSTER_KCM_PORT:-10357}            # 0 disables kube-controller-manager's server
CL_VC_HEALTHZ_PORT=${MUSTER_VC_HEALTHZ_PORT:-21251}
CL_VC_METRICS_PORT=${MUSTER_VC_METRICS_PORT:-28080}
CL_KWOK_PORT=${MUSTER_KWOK_PORT:-20247}

CL_TOKEN=muster-admin-token
CL_API_URL=https://127.0.0.1:$CL_API_PORT

# Start order; cluster-down stops them in reverse.
CL_COMPONENTS=(etcd kube-apiserver kube-controller-manager kwok vc-scheduler)

# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------
cl_log() { echo "[${CL_NAME:-cluster}] $*" >&2; }

# curl that never uses a proxy (everything it talks to is on loopback).
cl_curl() { curl --noproxy '*' -fsS --max-time 3 "$@"; }

# kubectl against this cluster, with a discovery cache private to the state dir (a shared
# ~/.kube/cache can hide freshly installed CRDs for a while).
CL_KUBECTL=${MUSTER_KUBECTL:-kubectl}
cl_kubectl() { KUBECACHEDIR=$CL_STATE/kubectl-cache "$CL_KUBECTL" --kubeconfig "$CL_KUBECONFIG" "$@"; }

cl_pid_file() { echo "$CL_PIDS/$1.pid"; }

# Prints the pid recorded for component $1 if that process is alive and is really ours (its
# command line names this state dir), so a recycled pid is never mistaken for a component.
cl_live_pid() {
  local f pid
  f=$(cl_pid_file "$1")
  [ -f "$f" ] || return 1
  pid=$(cat "$f" 2>/dev/null) || return 1
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  cl_pid_is_ours "$pid" || return 1
  echo "$pid"
}

# True if pid $1 is alive and its command line references this cluster (state dir or etcd dir).
cl_pid_is_ours() {
  local cmdline
  { cmdline=$(tr '\0' ' ' <"/proc/$1/cmdline"); } 2>/dev/null || return 1
  [[ $cmdline == *"$CL_STATE"* || $cmdline == *"$CL_ETCD_DATA"* ]]
}

# The component a process name (/proc/<pid>/comm, cut to 15 characters) belongs to.
cl_comm_component() {
  case $1 in
    etcd) echo etcd ;;
    kube-apiserver) echo kube-apiserver ;;
    kube-controll*) echo kube-controller-manager ;;
    kwok) echo kwok ;;
    vc-scheduler) echo vc-scheduler ;;
    *) return 1 ;;
  esac
}

# Pids of leftover component processes of this cluster that have no (valid) pid file: the
# process name must be one of ours AND its command line must reference this state dir.
cl_stray_pids() {
  local p name
  for p in /proc/[0-9]*; do
    p=${p#/proc/}
    [ "$p" = "$$" ] && continue
    { name=$(<"/proc/$p/comm"); } 2>/dev/null || continue
    cl_comm_component "$name" >/dev/null || continue
    cl_pid_is_ours "$p" && echo "$p"
  done
  return 0
}

# True if something listens on 127.0.0.1:$1 (or on a wildcard address with that port).
cl_port_busy() {
  ss -Hltn "( sport = :$1 )" 2>/dev/null | grep -q .
}

# Records the ports in use, so cluster-down checks the right ones whatever its environment.
cl_save_ports() {
  cat >"$CL_STATE/ports.env" <<EOF
MUSTER_ETCD_PORT=$CL_ETCD_PORT MUSTER_ETCD_PEER_PORT=$CL_ETCD_PEER_PORT MUSTER_APISERVER_PORT=$CL_API_PORT
MUSTER_KCM_PORT=$CL_KCM_PORT MUSTER_VC_HEALTHZ_PORT=$CL_VC_HEALTHZ_PORT
MUSTER_VC_METRICS_PORT=$CL_VC_METRICS_PORT MUSTER_KWOK_PORT=$CL_KWOK_PORT
EOF
}

cl_all_ports() {
  local p=("$CL_ETCD_PORT" "$CL_ETCD_PEER_PORT" "$CL_API_PORT" "$CL_VC_HEALTHZ_PORT" "$CL_VC_METRICS_PORT" "$CL_KWOK_PORT")
  [ "$CL_KCM_PORT" != 0 ] && p+=("$CL_KCM_PORT")
  echo "${p[@]}"
}

# Pids of this cluster's processes for component $1: the pid file's (if still ours) plus any
# leftover process of that name whose command line references this cluster.
cl_component_pids() {
  local pid name
  cl_live_pid "$1" || true
  for pid in $(cl_stray_pids); do
    { name=$(<"/proc/$pid/comm"); } 2>/dev/null || continue
    [ "$(cl_comm_component "$name")" = "$1" ] && echo "$pid"
  done
  return 0
}

# SIGTERM to pids "$@" (component name in $CL_STOPPING), wait up to $CL_GRACE s, then SIGKILL.
cl_terminate() {
  local pid deadline alive
  [ $# -eq 0 ] && return 0
  kill -TERM "$@" 2>/dev/null || true
  deadline=$((SECONDS + CL_GRACE))
  while :; do
    alive=()
    for pid in "$@"; do
      if kill -0 "$pid" 2>/dev/null && cl_pid_is_ours "$pid"; then alive+=("$pid"); fi
    done
    [ ${#alive[@]} -eq 0 ] && return 0
    [ $SECONDS -ge "$deadline" ] && break
    sleep 0.2
  done
  cl_log "$CL_STOPPING still running after ${CL_GRACE}s, sending SIGKILL to ${alive[*]}"
  kill -KILL "${alive[@]}" 2>/dev/null || true
  sleep 0.5
  for pid in "${alive[@]}"; do
    if kill -0 "$pid" 2>/dev/null && cl_pid_is_ours "$pid"; then
      cl_log "ERROR: pid $pid survived SIGKILL"
      return 1
    fi
  done
}

# Stops every component of this cluster, in three phases so nothing loses its backend while
# shutting down: the apiserver's clients, then kube-apiserver, then etcd. Each phase gets
# SIGTERM and ${1:-20}s before SIGKILL. Also stops leftovers without a pid file. Safe when
# nothing runs; returns non-zero only if a process survived SIGKILL.
cl_stop_all() {
  local CL_GRACE=${1:-20} CL_STOPPING phase c pid pids rc=0
  for phase in "vc-scheduler kwok kube-controller-manager" kube-apiserver etcd; do
    pids=()
    for c in $phase; do
      for pid in $(cl_component_pids "$c"); do
        case " ${pids[*]} " in *" $pid "*) continue ;; esac
        cl_log "stopping $c (pid $pid)"
        pids+=("$pid")
      done
    done
    CL_STOPPING=${phase// /\/}
    cl_terminate "${pids[@]}" || rc=1
  done
  rm -f "$CL_PIDS"/*.pid
  return $rc
}

# Removes the etcd data (tmpfs dir and the symlink to it).
cl_remove_etcd_data() {
  local target
  if [ -L "$CL_STATE/etcd-data" ]; then
    target=$(readlink "$CL_STATE/etcd-data")
    case $target in /dev/shm/muster-etcd-* | "$CL_STATE"/*) rm -rf "$target" ;; esac
    rm -f "$CL_STATE/etcd-data"
  fi
  rm -rf "$CL_ETCD_DATA"
}

# Takes an exclusive lock on the state dir so two cluster-up/down runs never interleave.
# Children must not inherit fd 9 (cl_spawn closes it), or a daemon would hold the lock forever.
cl_lock() {
  mkdir -p "$CL_STATE"
  exec 9>"$CL_STATE/.lock"
  if ! flock -w "${1:-300}" 9; then
    cl_log "ERROR: another cluster-up/cluster-down holds $CL_STATE/.lock"
    exit 1
  fi
}
