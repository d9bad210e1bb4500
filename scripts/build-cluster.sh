#!/usr/bin/env bash
# Build the test cluster's components from their own Go modules (through the Go module proxy,
# nothing else is downloaded) and print the directory that holds them:
#
#   bash scripts/build-cluster.sh     # -> /var/cache/egress-router/cluster/<hash>/bin/...
#
#   kube      one multi-call binary (like the old hyperkube) of k8s.io/kubernetes: kube-apiserver,
#             kube-controller-manager, kube-scheduler, kubelet, kube-proxy, kubectl
#             (cluster/kube: a wrapper module that requires k8s.io/kubernetes and replaces every
#             k8s.io/* staging module with the same release; one link instead of six)
#   etcd      go.etcd.io/etcd/server/v3's etcdmain (cluster/etcd)
#   multus    Multus's thin plugin, gopkg.in/k8snetworkplumbingwg/multus-cni.v4/cmd/multus
#             (cluster/multus)
#   pause     Kubernetes' own build/pause/linux/pause.c (from the k8s.io/kubernetes module),
#             compiled statically: the sandbox image's only file
#
# Cached by its inputs (the wrapper modules, this script, the Go version, the C compiler): the
# same inputs print the same directory at once. Go's module and build caches (GOMODCACHE,
# GOCACHE: their default places) make a rebuild after an input change incremental.
# EGRESS_ROUTER_CLUSTER_CACHE (default /var/cache/egress-router/cluster) is the cache root.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
cache=${EGRESS_ROUTER_CLUSTER_CACHE:-/var/cache/egress-router/cluster}

say() { printf 'build-cluster: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

command -v go >/dev/null || die "go is not installed (Go 1.24 or newer is needed to build the cluster)"
command -v gcc >/dev/null || die "gcc is not installed (apt-get install gcc libc6-dev: the pause binary)"

kube_version=$(awk '($1 == "require" ? $2 : $1) == "k8s.io/kubernetes" && $NF ~ /^v1\./ {print $NF; exit}' cluster/kube/go.mod)
[ -n "$kube_version" ] || die "cluster/kube/go.mod: cannot find the required k8s.io/kubernetes version"
minor=$(echo "$kube_version" | cut -d. -f2)

inputs() {
  find cluster -type f \( -name '*.go' -o -name go.mod -o -name go.sum \) | LC_ALL=C sort | xargs sha256sum
  sha256sum scripts/build-cluster.sh
  go version
  gcc --version | head -1
  uname -m
}
hash=$(inputs | sha256sum | cut -c1-16)
out=$cache/$hash
if [ -x "$out/bin/kube" ] && [ -x "$out/bin/etcd" ] && [ -x "$out/bin/multus" ] && [ -x "$out/bin/pause" ]; then
  echo "$out"
  exit 0
fi

tmp=$cache/.build-$hash-$$
rm -rf "$tmp"
mkdir -p "$tmp/bin"
trap 'rm -rf "$tmp"' EXIT
start=$(date +%s)
export CGO_ENABLED=0 GOFLAGS=-trimpath
# The components report their release (the node's kubeletVersion, version skew checks).
ld="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ld="$ld -X $pkg.gitVersion=$kube_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
done
say "kube $kube_version (cluster/kube)"
(cd cluster/kube && go build -ldflags "$ld" -o "$tmp/bin/kube" .) || die "building cluster/kube failed"
for name in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl; do
  ln -s kube "$tmp/bin/$name"
done
say "etcd (cluster/etcd)"
(cd cluster/etcd && go build -ldflags "-s -w" -o "$tmp/bin/etcd" .) || die "building cluster/etcd failed"
say "multus thin plugin (cluster/multus)"
(cd cluster/multus && go build -ldflags "-s -w" -o "$tmp/bin/multus" gopkg.in/k8snetworkplumbingwg/multus-cni.v4/cmd/multus) \
  || die "building cluster/multus failed"
say "pause (k8s.io/kubernetes@$kube_version build/pause/linux/pause.c)"
kdir=$(cd cluster/kube && go list -m -f '{{.Dir}}' k8s.io/kubernetes)
gcc -Os -static -Wall -DVERSION="$kube_version" -o "$tmp/bin/pause" "$kdir/build/pause/linux/pause.c" \
  || die "compiling pause.c failed"
strip "$tmp/bin/pause"
echo "$(( $(date +%s) - start ))" >"$tmp/build-seconds"
inputs >"$tmp/inputs"
rm -rf "$out"
mv "$tmp" "$out"
trap - EXIT
say "built in $(cat "$out/build-seconds") s: $out"
echo "$out"
