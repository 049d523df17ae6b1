#!/usr/bin/env bash
# Brings up a real, local, loopback-only Kubernetes control plane for Muster's tests and demos,
# with no Docker and no kubelets:
#   etcd -> kube-apiserver -> CRDs -> kube-controller-manager (GC, namespaces, service accounts)
#   -> fake GPU nodes + Volcano HyperNodes -> kwok (runs the fake nodes and pods) -> vc-scheduler
# Binaries come from hack/build-control-plane.sh (cached under ~/.cache/muster/k8s-bin).
#
# State: ${MUSTER_CLUSTER_DIR:-<repo>/.cluster} (kubeconfig, pki/, logs/, pids/); etcd data on
# /dev/shm when available. Idempotent: if the cluster is already up and healthy with the same
# settings it says so and exits 0; if it is partially up it is stopped and started afresh.
#
# Environment (all optional):
#   MUSTER_SPINES (2) MUSTER_RACKS_PER_SPINE (4) MUSTER_NODES_PER_RACK (4) MUSTER_GPUS_PER_NODE (8)
#   MUSTER_ETCD_PORT (23790) MUSTER_ETCD_PEER_PORT (23800) MUSTER_APISERVER_PORT (16443)
#   MUSTER_KCM_PORT (10357, 0 = no server) MUSTER_VC_HEALTHZ_PORT (21251)
#   MUSTER_VC_METRICS_PORT (28080) MUSTER_KWOK_PORT (20247)
#   MUSTER_SERVICE_CIDR (127.200.0.0/16) MUSTER_POD_CIDR (127.1.0.1/16: kwok hands out pod IPs
#   from its first address; give clusters that run side by side different ones) MUSTER_SCHEDULE_PERIOD (500ms) MUSTER_VC_VERBOSITY (2)
#   MUSTER_SCHEDULER_CONF (<repo>/volcano/scheduler.conf.yaml)
#   MUSTER_PROJECT_CRDS (<repo>/config/crd; set it empty to install only Volcano's CRDs)
#   MUSTER_K8S_BIN (use this bin dir instead of calling hack/build-control-plane.sh)
#   MUSTER_KUBECTL (kubectl to use; default: <bin dir>/kubectl if built there, else kubectl on PATH)
#   MUSTER_KEEP_ON_FAILURE (1 = leave the processes running after a failure, for debugging)
set -euo pipefail

CL_NAME=cluster-up
# shellcheck source=hack/cluster-lib.sh
. "$(dirname "$0")/cluster-lib.sh"
t_start=$SECONDS

SPINES=${MUSTER_SPINES:-2}
RACKS=${MUSTER_RACKS_PER_SPINE:-4}
NODES=${MUSTER_NODES_PER_RACK:-4}
GPUS=${MUSTER_GPUS_PER_NODE:-8}
SERVICE_CIDR=${MUSTER_SERVICE_CIDR:-127.200.0.0/16}
POD_CIDR=${MUSTER_POD_CIDR:-127.1.0.1/16}
# Fallback node IP for nodes that carry no InternalIP (e.g. created by a test); the nodes made
# here get their own 127.2.x.y address.
KWOK_NODE_IP=127.2.255.254
SCHEDULE_PERIOD=${MUSTER_SCHEDULE_PERIOD:-500ms}
VC_VERBOSITY=${MUSTER_VC_VERBOSITY:-2}
SCHED_CONF=${MUSTER_SCHEDULER_CONF:-$CL_REPO/volcano/scheduler.conf.yaml}
# Set MUSTER_PROJECT_CRDS= (empty) to install only Volcano's CRDs.
PROJECT_CRDS=${MUSTER_PROJECT_CRDS-$CL_REPO/config/crd}
for v in SPINES RACKS NODES GPUS; do
  [[ ${!v} =~ ^[0-9]+$ ]] || { cl_log "ERROR: $v must be a number, got '${!v}'"; exit 2; }
done
[ -f "$SCHED_CONF" ] || { cl_log "ERROR: scheduler config $SCHED_CONF not found"; exit 2; }
SCHED_CONF=$(cd "$(dirname "$SCHED_CONF")" && pwd)/$(basename "$SCHED_CONF")
case $SERVICE_CIDR in 10.* | 192.168.* | 172.1[6-9].* | 172.2[0-9].* | 172.3[01].*)
  cl_log "ERROR: MUSTER_SERVICE_CIDR must not be a private (10/8, 172.16/12, 192.168/16) range"; exit 2 ;;
esac
case $POD_CIDR in 127.*) ;; *) cl_log "ERROR: MUSTER_POD_CIDR must be inside 127.0.0.0/8"; exit 2 ;; esac
dups=$(cl_all_ports | tr ' ' '\n' | sort | uniq -d | xargs)
[ -z "$dups" ] || { cl_log "ERROR: port(s) $dups assigned to more than one component"; exit 2; }

cl_lock
mkdir -p "$CL_LOGS" "$CL_PIDS" "$CL_PKI"

# ---------------------------------------------------------------------------------------------
# Binaries
# ---------------------------------------------------------------------------------------------
if [ -n "${MUSTER_K8S_BIN:-}" ]; then
  BIN=$MUSTER_K8S_BIN
else
  # Returns at once when cached; a cold build prints its own progress on stderr.
  BIN=$("$CL_REPO/hack/build-control-plane.sh" | tail -n1)
fi
for b in etcd kube-apiserver kube-controller-manager vc-scheduler kwok; do
  [ -x "$BIN/$b" ] || { cl_log "ERROR: $BIN/$b missing (hack/build-control-plane.sh)"; exit 1; }
done
# A kubectl built next to the other binaries wins over the one on PATH.
if [ -z "${MUSTER_KUBECTL:-}" ] && [ -x "$BIN/kubectl" ]; then CL_KUBECTL=$BIN/kubectl; fi
for tool in "$CL_KUBECTL" openssl curl ss flock setsid sha256sum base64; do
  command -v "$tool" >/dev/null || { cl_log "ERROR: '$tool' is required but not found"; exit 1; }
done

# Everything that, if changed, needs a restart rather than the "already up" fast path (this
# script itself and the CRD files included). The scheduler config is not: vc-scheduler reloads it.
fingerprint=$(
  cat <<EOF
bin=$BIN
ports=$(cl_all_ports) kcm=$CL_KCM_PORT
topology=${SPINES}x${RACKS}x${NODES}x${GPUS}
cidrs=$SERVICE_CIDR $POD_CIDR
scheduler=$SCHED_CONF $SCHEDULE_PERIOD $VC_VERBOSITY
etcd=$CL_ETCD_DATA
scripts=$(cat "$0" "$CL_REPO/hack/cluster-lib.sh" | sha256sum | cut -c1-16)
crds=$(cat "$CL_SHARED"/volcano-crds/*.yaml ${PROJECT_CRDS:+"$PROJECT_CRDS"/*.yaml} 2>/dev/null | sha256sum | cut -c1-16)
EOF
)

# ---------------------------------------------------------------------------------------------
# Health checks
# ---------------------------------------------------------------------------------------------
health_etcd() { cl_curl "http://127.0.0.1:$CL_ETCD_PORT/health" 2>/dev/null | grep -q '"health":"true"'; }
health_kube-apiserver() {
  cl_curl --cacert "$CL_PKI/ca.crt" -H "Authorization: Bearer $CL_TOKEN" "$CL_API_URL/readyz" >/dev/null 2>&1
}
health_kube-controller-manager() {
  if [ "$CL_KCM_PORT" = 0 ]; then return 0; fi # no server: liveness of the pid is all we have
  cl_curl -k "https://127.0.0.1:$CL_KCM_PORT/healthz" >/dev/null 2>&1
}
health_kwok() { cl_curl "http://127.0.0.1:$CL_KWOK_PORT/healthz" >/dev/null 2>&1; }
health_vc-scheduler() { cl_curl "http://127.0.0.1:$CL_VC_HEALTHZ_PORT/healthz" >/dev/null 2>&1; }

all_healthy() {
  local c
  [ -f "$CL_KUBECONFIG" ] || return 1
  for c in "${CL_COMPONENTS[@]}"; do
    cl_live_pid "$c" >/dev/null || return 1
    "health_$c" || return 1
  done
}

summary() {
  local nodes gpus
  nodes=$(cl_kubectl get nodes -l type=kwok --no-headers 2>/dev/null | wc -l)
  gpus=$(cl_kubectl get nodes -l type=kwok -o jsonpath='{range .items[*]}{.status.allocatable.nvidia\.com/gpu}{"\n"}{end}' 2>/dev/null |
    awk '{s += $1} END {print s + 0}')
  cat <<EOF
[cluster-up] cluster is up (${1}s)
  kubeconfig : $CL_KUBECONFIG
  use it     : export KUBECONFIG=$CL_KUBECONFIG
  apiserver  : $CL_API_URL (token auth, CA in the kubeconfig)
  nodes      : $nodes kwok nodes (${SPINES} spines x ${RACKS} racks x ${NODES} nodes), $gpus nvidia.com/gpu in total
  pod IPs    : $POD_CIDR (kwok), service CIDR $SERVICE_CIDR
  logs       : $CL_LOGS/<component>.log
  stop       : ${MUSTER_CLUSTER_DIR:+MUSTER_CLUSTER_DIR=$CL_STATE }hack/cluster-down.sh
EOF
}

# ---------------------------------------------------------------------------------------------
# Fast path: already up
# ---------------------------------------------------------------------------------------------
if [ "$(cat "$CL_STATE/cluster.env" 2>/dev/null)" = "$fingerprint" ] && all_healthy; then
  cl_log "already up and healthy, nothing to do"
  summary $((SECONDS - t_start))
  exit 0
fi

# ---------------------------------------------------------------------------------------------
# Clean up whatever is left of a previous run
# ---------------------------------------------------------------------------------------------
if ls "$CL_PIDS"/*.pid >/dev/null 2>&1 || [ -n "$(cl_stray_pids)" ]; then
  cl_log "found a partial or outdated cluster, stopping it first"
fi
cl_stop_all 20
cl_remove_etcd_data
rm -f "$CL_STATE/cluster.env"
cl_save_ports

busy=()
for p in $(cl_all_ports); do cl_port_busy "$p" && busy+=("$p"); done
if [ ${#busy[@]} -gt 0 ]; then
  cl_log "ERROR: port(s) ${busy[*]} on 127.0.0.1 are in use by something else:"
  for p in "${busy[@]}"; do ss -Hltnp "( sport = :$p )" >&2 || true; done
  cl_log "set MUSTER_*_PORT to other ports (see the header of $0)"
  exit 1
fi

# ---------------------------------------------------------------------------------------------
# Failure handling: name the component, show its log, stop what was started.
# ---------------------------------------------------------------------------------------------
CURRENT=""
fail() {
  local comp=${1:-$CURRENT} msg=${2:-failed}
  trap - EXIT
  cl_log "ERROR: $comp: $msg"
  if [ -n "$comp" ] && [ -f "$CL_LOGS/$comp.log" ]; then
    cl_log "last lines of $CL_LOGS/$comp.log:"
    tail -n 40 "$CL_LOGS/$comp.log" | sed 's/^/    /' >&2
  fi
  if [ "${MUSTER_KEEP_ON_FAILURE:-0}" = 1 ]; then
    cl_log "MUSTER_KEEP_ON_FAILURE=1: leaving processes running"
  else
    cl_stop_all 10 || true
  fi
  exit 1
}
# Any unexpected error (set -e) during bring-up is reported against the current component.
on_exit() {
  local rc=$?
  if [ "$rc" -ne 0 ]; then fail "$CURRENT" "unexpected error (exit $rc)"; fi
}
trap on_exit EXIT

# Starts component $1 with the command "${@:2}" in its own session, detached from this script
# (it outlives cluster-up), logging to logs/$1.log (the previous log is kept as $1.log.1).
spawn() {
  local name=$1
  shift
  [ -f "$CL_LOGS/$name.log" ] && mv -f "$CL_LOGS/$name.log" "$CL_LOGS/$name.log.1"
  echo "# $(date -Is) $*" >"$CL_LOGS/$name.log"
  # 9>&-: do not hand the state-dir lock to the daemon.
  setsid "$@" </dev/null >>"$CL_LOGS/$name.log" 2>&1 9>&- &
  echo $! >"$(cl_pid_file "$name")"
}

# Waits up to $2 seconds for health_$1, failing early if the process dies.
wait_healthy() {
  local comp=$1 timeout=$2 deadline pid
  deadline=$((SECONDS + timeout))
  pid=$(cat "$(cl_pid_file "$comp")")
  until "health_$comp"; do
    # Liveness only (gone, or a zombie not yet reaped): the pid was spawned seconds ago, and
    # until the forked shell has exec'd the component its command line is still this script's,
    # which cl_pid_is_ours would wrongly call foreign on a loaded machine.
    if ! kill -0 "$pid" 2>/dev/null || grep -q '^State:[[:space:]]*Z' "/proc/$pid/status" 2>/dev/null; then
      fail "$comp" "process exited during startup"
    fi
    [ $SECONDS -lt "$deadline" ] || fail "$comp" "not healthy after ${timeout}s"
    sleep 0.3
  done
}

# Retries "$@" (a kubectl call) until it succeeds or $timeout seconds pass.
retry() {
  local timeout=$1 deadline
  shift
  deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt "$deadline" ] || return 1
    sleep 0.5
  done
}

# Progress line for the next step, with the seconds elapsed so far.
step() {
  CURRENT=$1
  shift
  cl_log "$(printf '%3ds' $((SECONDS - t_start))) $* ..."
}

# ---------------------------------------------------------------------------------------------
# PKI and kubeconfig. Kept across restarts (cluster-down --purge removes them).
# A CA signs the apiserver serving cert (rustls needs a non-CA leaf cert with an IP SAN for
# 127.0.0.1). The service-account key pair signs SA tokens.
# ---------------------------------------------------------------------------------------------
step pki "preparing certificates and kubeconfig in $CL_PKI"
# First address of the service CIDR: the ClusterIP of the "kubernetes" Service.
svc_base=${SERVICE_CIDR%/*}
svc_first=${svc_base%.*}.$((${svc_base##*.} + 1))
if ! openssl x509 -in "$CL_PKI/apiserver.crt" -noout -checkend 86400 >/dev/null 2>&1 ||
  ! openssl x509 -in "$CL_PKI/apiserver.crt" -noout -ext subjectAltName 2>/dev/null | grep -q "IP Address:$svc_first"; then
  (
    cd "$CL_PKI"
    umask 077
    openssl ecparam -name prime256v1 -genkey -noout -out ca.key 2>/dev/null
    openssl req -x509 -new -key ca.key -sha256 -days 3650 -subj "/CN=muster-local-ca" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
      -out ca.crt 2>/dev/null
    openssl ecparam -name prime256v1 -genkey -noout -out apiserver.key 2>/dev/null
    openssl req -new -key apiserver.key -subj "/CN=kube-apiserver" -out apiserver.csr 2>/dev/null
    cat >apiserver.ext <<EOF
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,IP:$svc_first,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local
EOF
    openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 -sha256 \
      -extfile apiserver.ext -out apiserver.crt 2>/dev/null
    openssl genrsa -out sa.key 2048 2>/dev/null
    openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
    rm -f apiserver.csr ca.srl
    chmod 644 ca.crt apiserver.crt sa.pub
  ) || fail pki "openssl failed"
fi
printf '%s,admin,admin,"system:masters"\n' "$CL_TOKEN" >"$CL_PKI/tokens.csv"
cat >"$CL_KUBECONFIG.tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: muster
  cluster:
    server: $CL_API_URL
    certificate-authority-data: $(base64 -w0 <"$CL_PKI/ca.crt")
users:
- name: muster-admin
  user:
    token: $CL_TOKEN
contexts:
- name: muster
  context:
    cluster: muster
    user: muster-admin
current-context: muster
EOF
mv -f "$CL_KUBECONFIG.tmp" "$CL_KUBECONFIG"

# ---------------------------------------------------------------------------------------------
# etcd
# ---------------------------------------------------------------------------------------------
step etcd "starting etcd on 127.0.0.1:$CL_ETCD_PORT (data in $CL_ETCD_DATA)"
mkdir -p "$CL_ETCD_DATA"
chmod 700 "$CL_ETCD_DATA"
ln -sfn "$CL_ETCD_DATA" "$CL_STATE/etcd-data"
spawn etcd "$BIN/etcd" \
  --name=muster \
  --data-dir="$CL_ETCD_DATA" \
  --listen-client-urls="http://127.0.0.1:$CL_ETCD_PORT" \
  --advertise-client-urls="http://127.0.0.1:$CL_ETCD_PORT" \
  --listen-peer-urls="http://127.0.0.1:$CL_ETCD_PEER_PORT" \
  --initial-advertise-peer-urls="http://127.0.0.1:$CL_ETCD_PEER_PORT" \
  --initial-cluster="muster=http://127.0.0.1:$CL_ETCD_PEER_PORT" \
  --initial-cluster-state=new \
  --unsafe-no-fsync=true \
  --auto-compaction-mode=periodic --auto-compaction-retention=5m \
  --quota-backend-bytes=$((4 * 1024 * 1024 * 1024)) \
  --log-level=warn
wait_healthy etcd 30

# ---------------------------------------------------------------------------------------------
# kube-apiserver
# ---------------------------------------------------------------------------------------------
step kube-apiserver "starting kube-apiserver on $CL_API_URL"
# --advertise-address: otherwise it advertises the host's first non-loopback address.
# --endpoint-reconciler-type=none: Endpoints/EndpointSlices may not hold loopback IPs, so the
#   reconciler for the "kubernetes" Service could only fail; nothing here needs that Service.
# TaintNodesByCondition is off because it puts node.kubernetes.io/not-ready:NoSchedule on every
#   new Node and only kube-controller-manager's node-lifecycle controller (not run here) would
#   take it off again: with it, nothing ever schedules.
# The last three flags drop request throttling (kwokctl's "disable QPS limits" set).
spawn kube-apiserver "$BIN/kube-apiserver" \
  --etcd-servers="http://127.0.0.1:$CL_ETCD_PORT" \
  --etcd-prefix=/registry \
  --bind-address=127.0.0.1 \
  --advertise-address=127.0.0.1 \
  --secure-port="$CL_API_PORT" \
  --cert-dir="$CL_PKI/apiserver-generated" \
  --tls-cert-file="$CL_PKI/apiserver.crt" \
  --tls-private-key-file="$CL_PKI/apiserver.key" \
  --client-ca-file="$CL_PKI/ca.crt" \
  --token-auth-file="$CL_PKI/tokens.csv" \
  --authorization-mode=RBAC \
  --service-account-issuer=https://kubernetes.default.svc.cluster.local \
  --service-account-key-file="$CL_PKI/sa.pub" \
  --service-account-signing-key-file="$CL_PKI/sa.key" \
  --service-cluster-ip-range="$SERVICE_CIDR" \
  --endpoint-reconciler-type=none \
  --allow-privileged=true \
  --disable-admission-plugins=TaintNodesByCondition \
  --max-requests-inflight=0 --max-mutating-requests-inflight=0 --enable-priority-and-fairness=false
wait_healthy kube-apiserver 120

# ---------------------------------------------------------------------------------------------
# CRDs: Volcano's (from the shared dir) and the project's own ($PROJECT_CRDS/*.yaml, if any).
# ---------------------------------------------------------------------------------------------
step crds "installing CRDs"
crd_files=()
for f in "$CL_SHARED"/volcano-crds/*.yaml ${PROJECT_CRDS:+"$PROJECT_CRDS"/*.yaml}; do
  [ -f "$f" ] && crd_files+=("$f")
done
[ -n "$(compgen -G "$CL_SHARED/volcano-crds/*.yaml")" ] ||
  fail crds "no Volcano CRDs in $CL_SHARED/volcano-crds (set MUSTER_SHARED)"
for f in "${crd_files[@]}"; do
  # Server-side apply: Volcano's CRDs are too large for the last-applied annotation.
  cl_kubectl apply --server-side --force-conflicts -f "$f" >/dev/null || fail crds "applying $f failed"
done
# `kubectl wait` fails at once ("accessor error") for a CRD that has no status conditions yet,
# which a loaded machine shows right after install, so retry it until the deadline.
crd_deadline=$((SECONDS + 60))
until cl_kubectl wait --for=condition=Established crd --all --timeout=10s >/dev/null 2>&1; do
  [ $SECONDS -lt $crd_deadline ] || fail crds "CRDs not Established within 60s"
  sleep 1
done
cl_log "  ${#crd_files[@]} CRD file(s) installed and Established"

# ---------------------------------------------------------------------------------------------
# kube-controller-manager: only what tests need (ownerReference GC, namespace deletion, the
# "default" ServiceAccount that the ServiceAccount admission plugin waits for) plus pod GC:
# a pod whose Node was deleted has no kwok to finish its deletion, so without pod GC it stays
# Terminating forever (and so does its namespace); pod GC force-deletes it within ~60 s.
# ---------------------------------------------------------------------------------------------
step kube-controller-manager "starting kube-controller-manager (gc, namespace, serviceaccount, pod-gc controllers)"
spawn kube-controller-manager "$BIN/kube-controller-manager" \
  --kubeconfig="$CL_KUBECONFIG" \
  --leader-elect=false \
  --controllers=garbage-collector-controller,namespace-controller,serviceaccount-controller,serviceaccount-token-controller,pod-garbage-collector-controller \
  --service-account-private-key-file="$CL_PKI/sa.key" \
  --root-ca-file="$CL_PKI/ca.crt" \
  --use-service-account-credentials=false \
  --bind-address=127.0.0.1 \
  --secure-port="$CL_KCM_PORT" \
  --cert-dir="$CL_PKI/kcm-generated" \
  --kube-api-qps=200 --kube-api-burst=400
wait_healthy kube-controller-manager 60
retry 30 cl_kubectl get serviceaccount default -n default || fail kube-controller-manager "no default ServiceAccount after 30s"

# ---------------------------------------------------------------------------------------------
# Fake GPU nodes and the matching HyperNodes
#   node-s<S>-r<R>-n<N>, labels topology.muster.dev/spine=spine-<S>, .../rack=rack-<S>-<R>
#   HyperNode tier 1 rack-<S>-<R> (members: its nodes), tier 2 spine-<S> (members: its racks).
#   No tier-3 root: vc-scheduler adds a virtual "<cluster-top-hypernode>" above the highest tier
#   itself (see volcano/README.md).
# ---------------------------------------------------------------------------------------------
step nodes "creating $((SPINES * RACKS * NODES)) fake nodes with $GPUS GPUs each and their HyperNodes"
{
  i=0
  for ((s = 0; s < SPINES; s++)); do
    for ((r = 0; r < RACKS; r++)); do
      for ((n = 0; n < NODES; n++)); do
        name=node-s$s-r$r-n$n
        # Each node gets its own loopback InternalIP (kwok keeps addresses that are present).
        ip=127.2.$((i / 250)).$((i % 250 + 1))
        i=$((i + 1))
        cat <<EOF
---
apiVersion: v1
kind: Node
metadata:
  name: $name
  labels:
    kubernetes.io/hostname: $name
    kubernetes.io/os: linux
    kubernetes.io/arch: amd64
    type: kwok
    topology.muster.dev/spine: spine-$s
    topology.muster.dev/rack: rack-$s-$r
  annotations:
    kwok.x-k8s.io/node: fake
status:
  addresses:
  - type: InternalIP
    address: $ip
  - type: Hostname
    address: $name
  capacity:
    cpu: "64"
    memory: 512Gi
    pods: "110"
    nvidia.com/gpu: "$GPUS"
  allocatable:
    cpu: "64"
    memory: 512Gi
    pods: "110"
    nvidia.com/gpu: "$GPUS"
EOF
      done
    done
  done
} >"$CL_STATE/nodes.yaml"
{
  for ((s = 0; s < SPINES; s++)); do
    for ((r = 0; r < RACKS; r++)); do
      printf -- '---\napiVersion: topology.volcano.sh/v1alpha1\nkind: HyperNode\nmetadata:\n  name: rack-%s-%s\n' "$s" "$r"
      printf '  labels:\n    topology.muster.dev/spine: spine-%s\nspec:\n  tier: 1\n  tierName: rack\n  members:\n' "$s"
      for ((n = 0; n < NODES; n++)); do
        printf '  - type: Node\n    selector:\n      exactMatch:\n        name: node-s%s-r%s-n%s\n' "$s" "$r" "$n"
      done
    done
    printf -- '---\napiVersion: topology.volcano.sh/v1alpha1\nkind: HyperNode\nmetadata:\n  name: spine-%s\n' "$s"
    printf 'spec:\n  tier: 2\n  tierName: spine\n  members:\n'
    for ((r = 0; r < RACKS; r++)); do
      printf '  - type: HyperNode\n    selector:\n      exactMatch:\n        name: rack-%s-%s\n' "$s" "$r"
    done
  done
} >"$CL_STATE/hypernodes.yaml"
if [ $((SPINES * RACKS * NODES)) -gt 0 ]; then
  cl_kubectl create -f "$CL_STATE/nodes.yaml" >/dev/null || fail nodes "creating nodes failed"
  cl_kubectl create -f "$CL_STATE/hypernodes.yaml" >/dev/null || fail nodes "creating HyperNodes failed"
fi

# ---------------------------------------------------------------------------------------------
# kwok: plays kubelet for every node (heartbeats, leases) and moves bound pods to Running with a
# pod IP from $POD_CIDR. KWOK_WORKDIR keeps it from reading a stray ~/.kwok/kwok.yaml; with no
# stages configured, kwok v0.7.0 uses its built-in fast node/pod stages. The config file only
# raises kwok's worker counts from 4 to 16, for large topologies and gangs.
# ---------------------------------------------------------------------------------------------
step kwok "starting kwok (pod IPs from $POD_CIDR, server on 127.0.0.1:$CL_KWOK_PORT)"
mkdir -p "$CL_STATE/kwok"
cat >"$CL_STATE/kwok/kwok.yaml" <<EOF
apiVersion: config.kwok.x-k8s.io/v1alpha1
kind: KwokConfiguration
options:
  nodePlayStageParallelism: 16
  nodeLeaseParallelism: 16
  podPlayStageParallelism: 16
EOF
spawn kwok env KWOK_WORKDIR="$CL_STATE/kwok" "$BIN/kwok" \
  --config="$CL_STATE/kwok/kwok.yaml" \
  --kubeconfig="$CL_KUBECONFIG" \
  --manage-all-nodes=true \
  --cidr="$POD_CIDR" \
  --node-ip="$KWOK_NODE_IP" \
  --node-lease-duration-seconds=40 \
  --server-address="127.0.0.1:$CL_KWOK_PORT"
wait_healthy kwok 60
# One list per poll: `kubectl wait` on many nodes is throttled client-side (50 s for 256 nodes).
ready_nodes() {
  local n
  n=$(cl_kubectl get nodes -l type=kwok \
    -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' 2>/dev/null |
    grep -cx True) || true
  echo "${n:-0}"
}
deadline=$((SECONDS + 60))
until [ "$(ready_nodes)" -ge $((SPINES * RACKS * NODES)) ]; do
  [ $SECONDS -lt $deadline ] || fail kwok "only $(ready_nodes) of $((SPINES * RACKS * NODES)) nodes Ready after 60s"
  sleep 0.5
done

# kwok v0.7.0 makes its pod IP pool on first use, and two pods given IPs at the same moment can
# each make one (PodController.ipPool loads, misses and stores without a lock): both pools start
# at the first address, so two pods share an IP. Seen in `make demo`: a prefill and a decode pod
# both 127.1.0.1, and only one engine could listen there. One pod given an IP here, before
# anything else can ask, makes the pool; deleting it hands its address back.
if [ $((SPINES * RACKS * NODES)) -gt 0 ]; then
  warmup_pod() {
    cl_kubectl create -f - >/dev/null 2>&1 <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: muster-kwok-ip-pool
  namespace: default
spec:
  nodeName: node-s0-r0-n0
  automountServiceAccountToken: false
  containers:
  - name: pause
    image: kwok.invalid/pause
EOF
  }
  pod_ip() { cl_kubectl get pod -n default muster-kwok-ip-pool -o jsonpath='{.status.podIP}' 2>/dev/null; }
  deadline=$((SECONDS + 30))
  # Retried: the ServiceAccount admission plugin refuses pods until the "default" account exists.
  until warmup_pod; do
    [ $SECONDS -lt $deadline ] || fail kwok "could not create the pod that makes kwok's IP pool"
    sleep 0.5
  done
  until [ -n "$(pod_ip)" ]; do
    [ $SECONDS -lt $deadline ] || fail kwok "kwok gave pod default/muster-kwok-ip-pool no IP within 30s"
    sleep 0.2
  done
  cl_kubectl delete pod -n default muster-kwok-ip-pool --wait=true --timeout=30s >/dev/null ||
    fail kwok "deleting pod default/muster-kwok-ip-pool failed"
fi

# ---------------------------------------------------------------------------------------------
# vc-scheduler. It creates the "root" and "default" Queues itself; only vc-controller-manager
# would open them, so their status is patched to Open here (the shipped config also leaves out
# the plugins that check queue state, so extra queues made by tests schedule too).
# ---------------------------------------------------------------------------------------------
step vc-scheduler "starting vc-scheduler (conf $SCHED_CONF, period $SCHEDULE_PERIOD)"
# --disable-default-scheduler-config: an unreadable or invalid config is fatal instead of being
# silently replaced by Volcano's built-in one (note: that also applies to a bad hot-reload edit).
spawn vc-scheduler "$BIN/vc-scheduler" \
  --kubeconfig="$CL_KUBECONFIG" \
  --scheduler-conf="$SCHED_CONF" \
  --scheduler-name=volcano \
  --schedule-period="$SCHEDULE_PERIOD" \
  --leader-elect=false \
  --disable-default-scheduler-config=true \
  --enable-healthz=true --healthz-address="127.0.0.1:$CL_VC_HEALTHZ_PORT" \
  --enable-metrics=true --listen-address="127.0.0.1:$CL_VC_METRICS_PORT" \
  --cache-dump-dir="$CL_LOGS" \
  -v="$VC_VERBOSITY"
wait_healthy vc-scheduler 60
retry 60 cl_kubectl get queue default || fail vc-scheduler "queue 'default' was not created within 60s"
for q in root default; do
  cl_kubectl patch queue "$q" --subresource=status --type=merge -p '{"status":{"state":"Open"}}' >/dev/null ||
    fail vc-scheduler "patching queue $q to Open failed"
done

echo "$fingerprint" >"$CL_STATE/cluster.env"
trap - EXIT
summary $((SECONDS - t_start))
