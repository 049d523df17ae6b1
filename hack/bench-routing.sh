#!/usr/bin/env bash
# `make bench-routing`: routing quality. Every routing policy (random, round-robin,
# least-request, prefix+load, kv-events+load, session affinity, oracle) on SGLang's
# generated-shared-prefix workload (Kthena's long shape as published, its short shape and a
# prefill/decode scenario with fewer prompts per group), through the real muster-router to
# muster-engine-sim processes modelling Kthena's model and vLLM flags, all on loopback, all in
# one run. Writes target/bench/routing.{json,md,png} and prints the tables. About 50 minutes.
#
# Extra arguments go to `muster-bench routing` (e.g. --quick for a smoke run of seconds,
# --scenarios long, --policies random,oracle); `make bench-routing BENCH_ROUTING_ARGS=--quick`.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "bench: building release binaries (first build takes a while on small machines)" >&2
cargo build --release -q -p muster-router -p muster-engine-sim -p muster-bench
exec target/release/muster-bench routing --bin-dir target/release --out target/bench "$@"
