#!/usr/bin/env bash
# Prints the tail of every local control-plane component log (CI calls this on failure).
set -uo pipefail
dir=${MUSTER_CLUSTER_DIR:-$(cd "$(dirname "$0")/.." && pwd)/.cluster}/logs
lines=${1:-60}
shopt -s nullglob
logs=("$dir"/*.log)
if [ ${#logs[@]} -eq 0 ]; then
  echo "no component logs in $dir"
  exit 0
fi
for f in "${logs[@]}"; do
  echo "===== $f (last $lines lines) ====="
  tail -n "$lines" "$f"
done
