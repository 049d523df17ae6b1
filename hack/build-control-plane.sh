#!/usr/bin/env bash
# Builds the local control plane (etcd, kube-apiserver, kube-controller-manager, vc-scheduler,
# kwok) from the pinned Go wrapper modules in hack/k8s-tools/, into a cache outside the work
# tree keyed by the wrapper files, so a second run on the same machine takes seconds.
# Prints the bin directory on the last line of stdout.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
tools=$here/k8s-tools
export GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0
cache_root=${MUSTER_CACHE:-$HOME/.cache/muster}
key=$(cat "$tools"/*/go.mod "$tools"/*/go.sum | sha256sum | cut -c1-16)
bin=$cache_root/k8s-bin/$key
log() { echo "[control-plane build] $*" >&2; }
mkdir -p "$bin"

ldflags_k8s="-s -w -X k8s.io/component-base/version.gitVersion=v1.35.4 -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=35"

# name|wrapper dir|package|ldflags
targets=(
  "vc-scheduler|volcano|volcano.sh/volcano/cmd/scheduler|-s -w"
  "kube-apiserver|k8s|k8s.io/kubernetes/cmd/kube-apiserver|$ldflags_k8s"
  "kube-controller-manager|k8s|k8s.io/kubernetes/cmd/kube-controller-manager|$ldflags_k8s"
  "etcd|etcd|go.etcd.io/etcd/server/v3|-s -w"
  "kwok|kwok|sigs.k8s.io/kwok/cmd/kwok|-s -w"
)

missing=()
for t in "${targets[@]}"; do
  IFS='|' read -r name _ _ _ <<<"$t"
  [ -x "$bin/$name" ] || missing+=("$name")
done
if [ ${#missing[@]} -eq 0 ]; then
  log "cached: $bin"
  echo "$bin"
  exit 0
fi
log "building ${missing[*]} into $bin (cold builds take 20-40 minutes on 2 cores; cached afterwards)"
start=$SECONDS
for t in "${targets[@]}"; do
  IFS='|' read -r name dir pkg flags <<<"$t"
  [ -x "$bin/$name" ] && continue
  t0=$SECONDS
  log "$name: downloading modules for $pkg"
  (cd "$tools/$dir" && go mod download)
  log "$name: compiling $pkg"
  # Two build jobs at most: the kube linker peaks near 3 GB and CI has 2 cores.
  (cd "$tools/$dir" && go build -p 2 -trimpath -ldflags "$flags" -o "$bin/$name.tmp" "$pkg")
  mv "$bin/$name.tmp" "$bin/$name"
  log "$name: done in $((SECONDS - t0))s"
done
log "all built in $((SECONDS - start))s: $bin"
echo "$bin"
