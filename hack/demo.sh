#!/usr/bin/env bash
# `make demo`: Muster end to end on the local control plane, on loopback only.
#   1. the local control plane (hack/cluster-up.sh; its binaries are built once per machine)
#   2. muster-controller, muster-router and muster-engine-sim (cargo build, debug profile)
#   3. muster-controller watching only namespace $MUSTER_DEMO_NAMESPACE (muster-demo)
#   4. config/demo/llama-2p2d.yaml: a 2-prefill + 2-decode ModelServing, its ModelServer and the
#      ModelRoute "llama"; waits for the gang (PodGroup) to be placed and for Available
#   5. one muster-engine-sim per pod, listening on the pod's loopback IP (kwok gives 127.1.x.x)
#   6. muster-router in Kubernetes mode for that namespace, on 127.0.0.1
#   7. streaming chat requests through the router, and where each one went and why
# Everything stays up afterwards; the summary prints the commands to explore it and to stop it
# (`make demo-down`, or `hack/demo.sh down`). Logs and pids: <cluster dir>/demo/.
#
# MUSTER_DEMO_SMOKE=1: the same path as a test (make test runs it): it uses its own namespace
# (muster-demo-smoke) and state dir, fails on any wrong answer or missing routing line, checks
# the deployment manifests (config/deploy) against the apiserver, and finally stops its own
# processes and deletes its namespace. The cluster itself stays up.
#
# Environment: MUSTER_DEMO_NAMESPACE, MUSTER_DEMO_ENGINE_PORT (18000, must match the
# ModelServer's workloadPort), MUSTER_DEMO_ROUTER_PORT (0 = any free port), MUSTER_DEMO_REQUESTS
# (6), MUSTER_DEMO_BUILD=0 (use the binaries in target/debug if all three exist, as make test
# does right after building them), and the MUSTER_* variables of hack/cluster-up.sh.
set -euo pipefail

CL_NAME=demo
# shellcheck source=hack/cluster-lib.sh
. "$(dirname "$0")/cluster-lib.sh"
cd "$CL_REPO"

SMOKE=${MUSTER_DEMO_SMOKE:-0}
if [ "$SMOKE" = 1 ]; then
  NS=${MUSTER_DEMO_NAMESPACE:-muster-demo-smoke}
  DEMO=$CL_STATE/demo-smoke
else
  NS=${MUSTER_DEMO_NAMESPACE:-muster-demo}
  DEMO=$CL_STATE/demo
fi
ENGINE_PORT=${MUSTER_DEMO_ENGINE_PORT:-18000}
ROUTER_PORT=${MUSTER_DEMO_ROUTER_PORT:-0}
REQUESTS=${MUSTER_DEMO_REQUESTS:-6}
MANIFEST=$CL_REPO/config/demo/llama-2p2d.yaml
MS=llama-2p2d
SERVED_MODEL=meta-llama/Llama-3.1-8B-Instruct
LOGS=$DEMO/logs
PIDS=$DEMO/pids
BIN_DIR=${CARGO_TARGET_DIR:-$CL_REPO/target}/debug
t0=$SECONDS

say() { printf '[demo] %3ds %s\n' $((SECONDS - t0)) "$*" >&2; }
# A failed step names itself and the log to read; processes stay up for inspection unless this
# is the smoke test (which always cleans up after itself).
CURRENT="starting"
CURRENT_LOG=""
die() {
  trap - EXIT
  echo >&2
  say "FAILED: $CURRENT: $*"
  if [ -n "$CURRENT_LOG" ] && [ -f "$CURRENT_LOG" ]; then
    say "last lines of $CURRENT_LOG:"
    tail -n 25 "$CURRENT_LOG" | sed 's/^/    /' >&2
    say "read the whole log: $CURRENT_LOG"
  fi
  say "all demo logs: $LOGS/   control plane logs: $CL_LOGS/"
  if [ "$SMOKE" = 1 ]; then
    stop_processes
    delete_namespace
  else
    say "processes are left running for inspection; stop them with: make demo-down"
  fi
  exit 1
}
on_exit() {
  local rc=$?
  if [ "$rc" -ne 0 ]; then die "unexpected error (exit $rc)"; fi
}
step() {
  CURRENT=$1
  CURRENT_LOG=${3:-}
  say "$2 ..."
}

# ---------------------------------------------------------------------------------------------
# Processes: each is started in its own session with MUSTER_DEMO_DIR=$DEMO in its environment,
# and a pid counts as ours only while that variable is still there (a recycled pid never is).
# ---------------------------------------------------------------------------------------------
is_ours() {
  local pid=$1
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  { tr '\0' '\n' <"/proc/$pid/environ"; } 2>/dev/null | grep -qxF "MUSTER_DEMO_DIR=$DEMO"
}
spawn() { # name log command...
  local name=$1 log=$2
  shift 2
  echo "# $(date -Is) $*" >"$log"
  MUSTER_DEMO_DIR=$DEMO KUBECONFIG=$CL_KUBECONFIG setsid "$@" </dev/null >>"$log" 2>&1 9>&- &
  echo $! >"$PIDS/$name.pid"
}
alive() { # name
  local pid
  pid=$(cat "$PIDS/$1.pid" 2>/dev/null) || return 1
  is_ours "$pid"
}
stop_processes() {
  local f pid pids=() deadline
  [ -d "$PIDS" ] || return 0
  # The router first (clients see it go), then the engines, then the controller.
  for f in "$PIDS"/router.pid "$PIDS"/engine-*.pid "$PIDS"/controller.pid; do
    [ -f "$f" ] || continue
    pid=$(cat "$f" 2>/dev/null) || continue
    if is_ours "$pid"; then
      kill -TERM "$pid" 2>/dev/null || true
      pids+=("$pid")
    fi
    rm -f "$f"
  done
  [ ${#pids[@]} -eq 0 ] && return 0
  deadline=$((SECONDS + 15))
  for pid in "${pids[@]}"; do
    while is_ours "$pid" && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
    if is_ours "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi
  done
  say "stopped ${#pids[@]} demo process(es)"
}
delete_namespace() {
  # The demo's cluster-scoped RBAC first (labelled with the namespace it serves).
  cl_kubectl delete clusterrole,clusterrolebinding -l "muster.dev/demo-namespace=$NS" >/dev/null 2>&1 || true
  cl_kubectl get namespace "$NS" >/dev/null 2>&1 || return 0
  say "deleting namespace $NS"
  cl_kubectl delete namespace "$NS" --wait=true --timeout=90s >/dev/null 2>&1 ||
    say "namespace $NS is still terminating (the cluster's namespace controller finishes it)"
}

# A free TCP port on 127.0.0.1 (the OS picks it; nothing else should grab it within seconds).
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# Polls "$@" every 0.3 s for up to $1 seconds; fails early when process $2 (a pid name) died.
wait_until() {
  local timeout=$1 proc=$2 deadline
  shift 2
  deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    if [ -n "$proc" ] && ! alive "$proc"; then die "the process exited"; fi
    [ $SECONDS -lt $deadline ] || die "${WAITING_FOR:-not ready} after ${timeout}s"
    sleep 0.3
  done
}
http_ok() { cl_curl -o /dev/null "$1"; }

# ---------------------------------------------------------------------------------------------
# `hack/demo.sh down`
# ---------------------------------------------------------------------------------------------
if [ "${1:-}" = down ]; then
  stop_processes
  if [ -f "$CL_KUBECONFIG" ] && cl_kubectl get --raw /readyz >/dev/null 2>&1; then
    delete_namespace
  fi
  rm -rf "$PIDS" "$DEMO/router.env"
  say "demo stopped; the local control plane is still up (stop it with: make cluster-down)"
  exit 0
fi
[ $# -eq 0 ] || { echo "usage: $0 [down]" >&2; exit 2; }
trap on_exit EXIT

for tool in python3 curl cargo setsid; do
  command -v "$tool" >/dev/null || { CURRENT=prerequisites; die "'$tool' is required but not found"; }
done
mkdir -p "$LOGS" "$PIDS"
# A previous demo run: its processes are replaced; its objects are re-applied below.
stop_processes

# ---------------------------------------------------------------------------------------------
# 1. Control plane
# ---------------------------------------------------------------------------------------------
step cluster "starting the local control plane (hack/cluster-up.sh; a cold first build of its binaries takes 20-40 min on 2 cores, later runs take seconds)" "$LOGS/cluster-up.log"
bash hack/cluster-up.sh 2>&1 | tee "$LOGS/cluster-up.log" | sed -u 's/^/    /' >&2 ||
  die "hack/cluster-up.sh failed"
# Use the kubectl cluster-up picked: one built next to the control plane wins over PATH's.
k8s_bin=${MUSTER_K8S_BIN:-$(hack/build-control-plane.sh 2>/dev/null | tail -n1)}
if [ -z "${MUSTER_KUBECTL:-}" ] && [ -x "$k8s_bin/kubectl" ]; then CL_KUBECTL=$k8s_bin/kubectl; fi

# ---------------------------------------------------------------------------------------------
# 2. Binaries. Debug profile: it compiles much faster than --release (no optimisation passes,
# which dominate a cold build on 2 cores), make test builds the same profile, and the demo's
# load is a few requests, so optimised code would buy nothing here.
# ---------------------------------------------------------------------------------------------
step build "building muster-controller, muster-router, muster-engine-sim (cargo, debug profile; minutes the first time)" "$LOGS/build.log"
have_binaries() { [ -x "$BIN_DIR/muster-controller" ] && [ -x "$BIN_DIR/muster-router" ] && [ -x "$BIN_DIR/muster-engine-sim" ]; }
if [ "${MUSTER_DEMO_BUILD:-1}" = 0 ] && have_binaries; then
  say "  MUSTER_DEMO_BUILD=0: using the binaries in $BIN_DIR as they are"
else
  cargo build -p muster-controller --bin muster-controller -p muster-router --bin muster-router \
    -p muster-engine-sim --bin muster-engine-sim >"$LOGS/build.log" 2>&1 &
  build_pid=$!
  last=$SECONDS
  while kill -0 "$build_pid" 2>/dev/null; do
    sleep 1
    if [ $((SECONDS - last)) -ge 30 ]; then
      last=$SECONDS
      say "  still building: $(grep -E '^\s+(Compiling|Blocking)' "$LOGS/build.log" | tail -n1 | sed 's/^ *//')"
    fi
  done
  wait "$build_pid" || die "cargo build failed"
fi
for b in muster-controller muster-router muster-engine-sim; do
  [ -x "$BIN_DIR/$b" ] || die "$BIN_DIR/$b missing after the build"
done

# ---------------------------------------------------------------------------------------------
# 3. Namespace and controller
# ---------------------------------------------------------------------------------------------
step namespace "namespace $NS"
if [ "$SMOKE" = 1 ]; then delete_namespace; fi
cl_kubectl get namespace "$NS" >/dev/null 2>&1 || cl_kubectl create namespace "$NS" >/dev/null ||
  die "creating namespace $NS failed"
cl_kubectl label namespace "$NS" app.kubernetes.io/part-of=muster-demo --overwrite >/dev/null

# The controller and router run as the ServiceAccounts of config/deploy, with its RBAC (the
# ClusterRoles get the prefix "$NS-" so they never clash with a real installation): the demo
# path is also the proof that those least-privilege rules suffice.
step rbac "applying config/deploy's ServiceAccounts and RBAC (prefix $NS-) and minting their tokens" "$LOGS/rbac.log"
mkdir -p "$DEMO/rbac"
rel=$(python3 -c 'import os, sys; print(os.path.relpath(sys.argv[1], sys.argv[2]))' "$CL_REPO/config/deploy" "$DEMO/rbac")
cat >"$DEMO/rbac/kustomization.yaml" <<EOF
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
namespace: $NS
namePrefix: $NS-
labels:
  - pairs:
      muster.dev/demo-namespace: $NS
resources:
  - $rel
EOF
"$CL_KUBECTL" kustomize "$DEMO/rbac" >"$DEMO/rbac/all.yaml" 2>"$LOGS/rbac.log" || die "kubectl kustomize config/deploy failed"
# Only the identities and their rules; the demo runs the binaries itself.
python3 - "$DEMO/rbac/all.yaml" >"$DEMO/rbac/rbac.yaml" <<'PY'
import re, sys
keep = {"ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"}
docs = []
for doc in re.split(r"^---$", open(sys.argv[1]).read(), flags=re.M):
    kind = re.search(r"^kind: (\w+)$", doc, re.M)
    if kind and kind.group(1) in keep:
        docs.append(doc.strip())
print("\n---\n".join(docs))
PY
cl_kubectl apply -f "$DEMO/rbac/rbac.yaml" >>"$LOGS/rbac.log" 2>&1 || die "applying the RBAC failed"
sa_kubeconfig() { # service account, file
  local token
  token=$(cl_kubectl create token "$1" -n "$NS" --duration=24h 2>>"$LOGS/rbac.log") || die "kubectl create token $1 failed"
  cat >"$2" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: muster
  cluster:
    server: $CL_API_URL
    certificate-authority-data: $(base64 -w0 <"$CL_PKI/ca.crt")
users:
- name: $1
  user:
    token: $token
contexts:
- name: $1
  context: {cluster: muster, user: $1, namespace: $NS}
current-context: $1
EOF
  chmod 600 "$2"
}
sa_kubeconfig "$NS-muster-controller" "$DEMO/controller.kubeconfig"
sa_kubeconfig "$NS-muster-router" "$DEMO/router.kubeconfig"
say "  ServiceAccounts $NS-muster-controller and $NS-muster-router with ClusterRoles of the same names"

CONTROLLER_METRICS=127.0.0.1:$(free_port)
step controller "starting muster-controller --namespace $NS as ServiceAccount $NS-muster-controller (metrics on $CONTROLLER_METRICS)" "$LOGS/controller.log"
spawn controller "$LOGS/controller.log" env RUST_LOG=info,kube=warn KUBECONFIG="$DEMO/controller.kubeconfig" \
  "$BIN_DIR/muster-controller" --namespace "$NS" --metrics-addr "$CONTROLLER_METRICS"
wait_until 30 controller http_ok "http://$CONTROLLER_METRICS/healthz"

# ---------------------------------------------------------------------------------------------
# 4. The model: ModelServing + ModelServer + ModelRoute, then the gang and Available
# ---------------------------------------------------------------------------------------------
step apply "applying $(basename "$MANIFEST") (2P2D ModelServing $MS, ModelServer $MS, ModelRoute llama)" "$LOGS/controller.log"
cl_kubectl apply -n "$NS" -f "$MANIFEST" >"$LOGS/apply.log" 2>&1 || { CURRENT_LOG=$LOGS/apply.log; die "kubectl apply failed"; }

step schedule "waiting for Volcano to place the gang and kwok to run its 4 pods" "$LOGS/controller.log"
deadline=$((SECONDS + 180))
seen=""
while :; do
  pg=$(cl_kubectl get podgroups.scheduling.volcano.sh -n "$NS" "$MS-0" -o jsonpath='{.status.phase}' 2>/dev/null || true)
  running=$(cl_kubectl get pods -n "$NS" -l "modelserving.muster.dev/name=$MS" \
    -o jsonpath='{range .items[*]}{.status.phase}{"\n"}{end}' 2>/dev/null | grep -c '^Running$' || true)
  avail=$(cl_kubectl get modelserving -n "$NS" "$MS" -o jsonpath='{.status.conditions[?(@.type=="Available")].status}' 2>/dev/null || true)
  now="PodGroup $MS-0 ${pg:-not created yet}, pods Running ${running:-0}/4, Available ${avail:-unknown}"
  if [ "$now" != "$seen" ]; then say "  $now"; seen=$now; fi
  [ "$avail" = True ] && break
  alive controller || die "muster-controller exited"
  if [ $SECONDS -ge $deadline ]; then
    cl_kubectl get modelserving,podgroups,pods -n "$NS" -o wide >&2 || true
    die "$MS not Available after 180s (vc-scheduler log: $CL_LOGS/vc-scheduler.log)"
  fi
  sleep 1
done
cl_kubectl wait -n "$NS" --for=condition=Available "modelserving/$MS" --timeout=30s >/dev/null ||
  die "kubectl wait --for=condition=Available failed"
say "  kubectl wait --for=condition=Available modelserving/$MS: condition met"

# ---------------------------------------------------------------------------------------------
# 5. One simulated engine per pod, on the pod's own loopback IP
# ---------------------------------------------------------------------------------------------
step engines "starting one muster-engine-sim per pod on <pod IP>:$ENGINE_PORT"
cl_kubectl get pods -n "$NS" -l "modelserving.muster.dev/name=$MS" \
  -o jsonpath='{range .items[*]}{.metadata.name} {.status.podIP} {.metadata.labels.pd-role} {.spec.nodeName} {.metadata.labels.modelserving\.muster\.dev/group-name}{"\n"}{end}' \
  >"$DEMO/pods.txt"
[ "$(wc -l <"$DEMO/pods.txt")" -eq 4 ] || die "expected 4 pods, got: $(cat "$DEMO/pods.txt")"
shared_ips=$(awk '{print $2}' "$DEMO/pods.txt" | sort | uniq -d | xargs)
[ -z "$shared_ips" ] || die "kwok gave more than one pod the IP $shared_ips: $(cat "$DEMO/pods.txt")"
while read -r pod ip role node _group; do
  case $ip in 127.*) ;; *) die "pod $pod has IP '$ip', outside 127.0.0.0/8: refusing to send traffic there" ;; esac
  spawn "engine-$pod" "$LOGS/engine-$pod.log" env RUST_LOG=warn \
    "$BIN_DIR/muster-engine-sim" --listen "$ip:$ENGINE_PORT" --role "$role" --model "$SERVED_MODEL"
  say "  $pod ($role, node $node) -> engine on $ip:$ENGINE_PORT"
done <"$DEMO/pods.txt"
while read -r pod ip _; do
  CURRENT_LOG=$LOGS/engine-$pod.log
  wait_until 30 "engine-$pod" http_ok "http://$ip:$ENGINE_PORT/health"
  # The health check alone would also pass if another process answered on that address.
  alive "engine-$pod" || die "muster-engine-sim for $pod exited"
done <"$DEMO/pods.txt"

# ---------------------------------------------------------------------------------------------
# 6. Router
# ---------------------------------------------------------------------------------------------
step router "starting muster-router --namespace $NS on 127.0.0.1 (Kubernetes mode, ServiceAccount $NS-muster-router)" "$LOGS/router.log"
spawn router "$LOGS/router.log" env RUST_LOG=info,kube=warn KUBECONFIG="$DEMO/router.kubeconfig" \
  "$BIN_DIR/muster-router" --namespace "$NS" --listen "127.0.0.1:$ROUTER_PORT" \
  --admin-listen 127.0.0.1:0 --log-format json
router_addr() { grep -m1 -oP "^$1 \K[0-9.:]+" "$LOGS/router.log"; }
wait_until 30 router router_addr ADMIN
PUBLIC=$(router_addr LISTENING)
ADMIN=$(router_addr ADMIN)
printf 'PUBLIC=%s\nADMIN=%s\nNAMESPACE=%s\n' "$PUBLIC" "$ADMIN" "$NS" >"$DEMO/router.env"
wait_until 30 router http_ok "http://$ADMIN/readyz"
# Ready once both decode pods are endpoints with a fresh engine sample.
endpoints_ready() {
  cl_curl "http://$ADMIN/debug/endpoints" | python3 -c '
import json, sys
eps = [e for s in json.load(sys.stdin) for e in s["endpoints"]]
sys.exit(0 if len(eps) == 2 and all(e["engine_running"] is not None and not e["metrics_stale"] for e in eps) else 1)'
}
WAITING_FOR="the router does not see both decode pods with fresh engine metrics (curl http://$ADMIN/debug/endpoints)" \
  wait_until 30 router endpoints_ready
say "  router on http://$PUBLIC (admin http://$ADMIN)"

# ---------------------------------------------------------------------------------------------
# 7. Requests, and where each one went
# ---------------------------------------------------------------------------------------------
step requests "sending $REQUESTS streaming chat requests through the router" "$LOGS/router.log"
report_args=(--router "$PUBLIC" --admin "$ADMIN" --router-log "$LOGS/router.log" --pods "$DEMO/pods.txt"
  --requests "$REQUESTS" --namespace "$NS")
[ "$SMOKE" = 1 ] && report_args+=(--check)
python3 hack/demo-requests.py "${report_args[@]}" || die "requests or their routing lines were not as expected"

step status "status the router wrote, and the least-privilege RBAC check" "$LOGS/router.log"
# The router writes ModelServer status shortly after a change; give it a few seconds.
deadline=$((SECONDS + 15))
until [ "$(cl_kubectl get modelserver "$MS" -n "$NS" -o jsonpath='{.status.readyEndpoints}/{.status.decodeEndpoints}' 2>/dev/null)" = 4/2 ]; do
  [ $SECONDS -lt $deadline ] || die "ModelServer $MS status is not 4 ready endpoints, 2 of them decode: $(cl_kubectl get modelserver "$MS" -n "$NS" -o jsonpath='{.status}')"
  sleep 0.5
done
say "  ModelServer $MS: $(cl_kubectl get modelserver "$MS" -n "$NS" -o jsonpath='{.status.readyEndpoints} of {.status.totalEndpoints} endpoints Ready ({.status.prefillEndpoints} prefill, {.status.decodeEndpoints} decode); {.status.conditions[?(@.type=="Ready")].message}')"
say "  ModelRoute llama: $(cl_kubectl get modelroute llama -n "$NS" -o jsonpath='Accepted={.status.conditions[?(@.type=="Accepted")].status} Ready={.status.conditions[?(@.type=="Ready")].status}')"
# Every API call the controller and router made was allowed by config/deploy's RBAC.
denied=$(grep -il forbidden "$LOGS/controller.log" "$LOGS/router.log" || true)
if [ -n "$denied" ]; then
  CURRENT_LOG=${denied%%$'\n'*}
  die "an API call was refused (Forbidden) under config/deploy's RBAC: see $denied"
fi
say "  no API call of the controller or router was refused under config/deploy's RBAC"

if [ "$SMOKE" = 1 ]; then
  step deploy-manifests "validating config/deploy against the apiserver (kubectl apply --dry-run=server)"
  bash hack/check-deploy-manifests.sh "$NS" || die "deployment manifests failed validation"
  trap - EXIT
  stop_processes
  delete_namespace
  rm -rf "$PIDS"
  say "demo smoke test passed"
  exit 0
fi

trap - EXIT
cat <<EOF

============================================================================================
 Muster demo is up ($((SECONDS - t0))s). Everything listens on loopback only.

 Explore:
   export KUBECONFIG=$CL_KUBECONFIG
   kubectl get modelservings,podgroups,hypernodes -n $NS
   kubectl get pods -n $NS -o wide -L pd-role
   kubectl get modelserving $MS -n $NS -o jsonpath='{.status}' | python3 -m json.tool
   kubectl get modelservers,modelroutes -n $NS
 Chat through the router (streaming):
   curl -N http://$PUBLIC/v1/chat/completions -H 'content-type: application/json' \\
     -d '{"model":"llama","stream":true,"max_tokens":16,"messages":[{"role":"user","content":"Hello!"}]}'
 Router internals:
   curl -s http://$ADMIN/debug/endpoints | python3 -m json.tool
   curl -s http://$ADMIN/metrics | grep '^muster_router_'
   controller metrics: curl -s http://$CONTROLLER_METRICS/metrics
 Logs: $LOGS/ (router.log has one JSON access line per request)
 Stop:  make demo-down        (the control plane stays; then make cluster-down)
============================================================================================
EOF
