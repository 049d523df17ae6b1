#!/usr/bin/env bash
# `make bench-topology`: topology placement benchmark. Brings up a PRIVATE kwok cluster
# (default 2 spines x 8 racks x 16 nodes x 8 GPUs = 256 nodes, 2048 GPUs) beside the shared
# default one, places the same seeded 200 gangs with and without Muster's tier choice
# (tests/e2e/src/bin/bench-topology.rs), prints the table, writes target/bench/topology.{json,md}
# and takes the private cluster down again (also on failure or Ctrl-C).
#
# Environment (all optional):
#   BENCH_TOPO_DIR (/tmp/muster-bench-topo: state dir, logs stay in <dir>/logs)
#   BENCH_TOPO_SPINES (2) BENCH_TOPO_RACKS (8 per spine) BENCH_TOPO_NODES (16 per rack) BENCH_TOPO_GPUS (8)
#   BENCH_TOPO_PORT_OFFSET (400: every MUSTER_*_PORT of hack/cluster-up.sh is its default + this)
#   BENCH_TOPO_POD_CIDR (127.7.0.1/16)
#   BENCH_TOPO_KEEP (1 = leave the cluster running afterwards, for debugging)
# Extra arguments go to bench-topology (--seed N --gangs N --wave N --settle S --modes a,b).
set -euo pipefail
cd "$(dirname "$0")/.."

export MUSTER_CLUSTER_DIR=${BENCH_TOPO_DIR:-/tmp/muster-bench-topo}
export MUSTER_SPINES=${BENCH_TOPO_SPINES:-2}
export MUSTER_RACKS_PER_SPINE=${BENCH_TOPO_RACKS:-8}
export MUSTER_NODES_PER_RACK=${BENCH_TOPO_NODES:-16}
export MUSTER_GPUS_PER_NODE=${BENCH_TOPO_GPUS:-8}
off=${BENCH_TOPO_PORT_OFFSET:-400}
export MUSTER_ETCD_PORT=$((23790 + off)) MUSTER_ETCD_PEER_PORT=$((23800 + off))
export MUSTER_APISERVER_PORT=$((16443 + off)) MUSTER_KCM_PORT=$((10357 + off))
export MUSTER_VC_HEALTHZ_PORT=$((21251 + off)) MUSTER_VC_METRICS_PORT=$((28080 + off))
export MUSTER_KWOK_PORT=$((20247 + off))
export MUSTER_POD_CIDR=${BENCH_TOPO_POD_CIDR:-127.7.0.1/16}
# The shared scheduler config, which is what a user of the default cluster gets.
export MUSTER_SCHEDULER_CONF=$PWD/volcano/scheduler.conf.yaml
grep -q 'name: network-topology-aware' "$MUSTER_SCHEDULER_CONF" || {
  echo "bench-topology: $MUSTER_SCHEDULER_CONF does not enable network-topology-aware" >&2
  exit 1
}
if [ "$(realpath -m "$MUSTER_CLUSTER_DIR")" = "$(realpath -m .cluster)" ]; then
  echo "bench-topology: BENCH_TOPO_DIR must not be the shared .cluster/" >&2
  exit 2
fi

# Build before the cluster exists, so it lives no longer than the measurement.
echo "bench-topology: building bench-topology" >&2
cargo build -q -p muster-e2e --bin bench-topology

down() {
  if [ "${BENCH_TOPO_KEEP:-0}" = 1 ]; then
    echo "bench-topology: BENCH_TOPO_KEEP=1, leaving the cluster in $MUSTER_CLUSTER_DIR running" >&2
    return
  fi
  bash hack/cluster-down.sh >&2 || echo "bench-topology: cluster-down failed" >&2
}
trap down EXIT
bash hack/cluster-up.sh >&2
target/debug/bench-topology "$@"
