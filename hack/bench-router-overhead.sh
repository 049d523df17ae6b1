#!/usr/bin/env bash
# `make bench`: router overhead. Latency added (p50/p99 at a fixed rate) and peak req/s of
# muster-router vs nginx as a plain reverse proxy vs the engine alone, all in one run, all on
# loopback. Writes target/bench/router-overhead.{json,md} and prints the table.
#
# Installs nginx (Debian package) when it is missing. Extra arguments go to
# `muster-bench router-overhead` (e.g. --rate 2000 --rounds 5 --no-nginx).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
  echo "bench: nginx not found; installing the Debian package" >&2
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get install -y -q nginx >&2 || { $sudo apt-get update -q >&2 && $sudo apt-get install -y -q nginx >&2; }
fi

echo "bench: building release binaries (first build takes a while on small machines)" >&2
cargo build --release -q -p muster-router -p muster-engine-sim -p muster-bench
exec target/release/muster-bench router-overhead --bin-dir target/release --out target/bench "$@"
