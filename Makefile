# Muster: one entry point. `make test` is what CI runs (.ci/run); see README.md.
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: test demo demo-down lint crds cluster-up cluster-down cluster-logs bench bench-router-overhead bench-controller bench-topology bench-routing bench-solver

## Everything CI checks: formatting, clippy, CRDs up to date, unit and end-to-end tests.
test:
	bash hack/test.sh

## Muster end to end on the local control plane: controller, router, simulated engines, a 2P2D
## model, streamed requests and where they went. Leaves it all running (see the summary).
demo:
	bash hack/demo.sh

## Stop what `make demo` started and delete its namespace (the control plane stays up).
demo-down:
	bash hack/demo.sh down

## Formatting, clippy -D warnings, and committed CRDs equal to what the types generate.
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) run -q -p muster-api --bin crdgen -- --check

## Regenerate config/crd/ from the Rust types.
crds:
	$(CARGO) run -q -p muster-api --bin crdgen

## Start the local control plane (etcd, kube-apiserver, kube-controller-manager, vc-scheduler, kwok).
cluster-up:
	bash hack/cluster-up.sh

## Stop it; nothing is left running or listening.
cluster-down:
	bash hack/cluster-down.sh

## Print the tail of every component log.
cluster-logs:
	bash hack/print-cluster-logs.sh

## Controller scale benchmark on the local control plane (200 ModelServings x 4 groups).
bench-controller:
	bash hack/cluster-up.sh
	$(CARGO) build -q -p muster-controller --bin muster-controller
	$(CARGO) run -q -p muster-e2e --bin bench-controller -- $(BENCH_ARGS)

## Every benchmark that exists so far (router overhead beside nginx, controller scale, topology placement, routing quality, solver).
bench: bench-router-overhead bench-controller bench-topology bench-routing bench-solver

## Router overhead vs direct and vs nginx on loopback (installs nginx if missing; ~10 minutes).
bench-router-overhead:
	bash hack/bench-router-overhead.sh

## Topology placement on a private 256-node cluster: 200 gangs with and without Muster's tier choice.
bench-topology:
	bash hack/bench-topology.sh $(BENCH_TOPO_ARGS)

## Routing quality: every policy on Kthena's workload through the real router (~35 minutes;
## BENCH_ROUTING_ARGS=--quick for a smoke run).
bench-routing:
	bash hack/bench-routing.sh $(BENCH_ROUTING_ARGS)

## Solver and autoscaler, in process (no cluster): solve time, cost vs baselines, trace replay
## (BENCH_SOLVER_ARGS=--quick for a smoke run). Writes target/bench/solver.{json,md}.
bench-solver:
	$(CARGO) run -q --release -p muster-bench --bin muster-bench -- solver $(BENCH_SOLVER_ARGS)
