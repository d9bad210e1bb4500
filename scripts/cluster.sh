#!/usr/bin/env bash
# A real two-node Kubernetes cluster on this machine, built from Kubernetes' own components,
# every part of it in network namespaces this script makes (nothing in the root namespace):
#
#   bash scripts/cluster.sh up       # build (cached) and start; prints how to use kubectl
#   bash scripts/cluster.sh status   # what runs, the nodes and pods
#   bash scripts/cluster.sh down     # stop and remove everything, also after a failed up
#   bash scripts/cluster.sh sweep    # remove the leftovers of earlier runs whose owner is gone
#   bash scripts/cluster.sh kubectl ARGS...   # kubectl in the control-plane namespace
#
# EGRESS_ROUTER_CLUSTER (default erc): the cluster's name, [a-z0-9]{1,6}, the prefix of its
# network namespaces ($name-hub, $name-dst, $name-cp, $name-n1, $name-n2) and of its cgroups (/$name.erc),
# so two clusters coexist. EGRESS_ROUTER_CLUSTER_DIR (/var/tmp/egress-router-cluster): where
# each cluster keeps its state ($dir/$name). EGRESS_ROUTER_CLUSTER_OWNER: a pid; `sweep`
# removes the clusters whose owner has exited (the tests set it).
#
# Topology (addresses inside the namespaces only):
#   $name-hub  bridge br-node (node/control-plane network 172.31.0.0/24) and bridge br-phy (the
#              physical L2 192.168.12.0/24, gateway 192.168.12.1), routing to
#   $name-dst  the destinations 203.0.113.25-27 behind the gateway, with the project's
#              destination server (egress_router.lab.server) logging the peer address it sees
#   $name-cp   172.31.0.2: etcd, kube-apiserver, kube-controller-manager, kube-scheduler
#   $name-nN   eth0 192.168.12.1N/24 on the physical L2 (the default route: the interface
#              `assign-macvlan: "true"` means), eth1 172.31.0.1N on the node network; containerd,
#              kubelet, kube-proxy (nftables); pod network 10.128.(2N-2).0/23 on bridge cni0
#              (Debian's bridge + host-local CNI plugins), routes to the other node's pods
# Each node also has a mount namespace of its own (containerd, its shims and runc, the kubelet
# and the pods' mounts live there; a private /run so no default containerd path is touched;
# its own /opt/cni/bin and /etc/cni/net.d, so hostPath DaemonSets that install CNI plugins
# work unchanged) and a cgroup subtree (/$name.erc/nN: the kubelet's cgroup root; its daemons in .../system).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

name=${EGRESS_ROUTER_CLUSTER:-erc}
base=${EGRESS_ROUTER_CLUSTER_DIR:-/var/tmp/egress-router-cluster}
dir=$base/$name
nodes=(n1 n2)
cgname=$name.erc
pki=$dir/pki

say() { printf 'cluster %s: %s\n' "$name" "$*" >&2; }
die() { say "$*"; exit 1; }

[[ $name =~ ^[a-z0-9]{1,6}$ ]] || die "EGRESS_ROUTER_CLUSTER=$name: expected 1-6 characters a-z 0-9"
[ "$(id -u)" -eq 0 ] || die "needs root (network namespaces, mounts, cgroups)"

# --------------------------------------------------------------------------- helpers
node_index() { echo "${1#n}"; }
node_ip() { echo "172.31.0.1$(node_index "$1")"; }
phy_ip() { echo "192.168.12.1$(node_index "$1")"; }
pod_subnet() { echo "10.128.$(( ($(node_index "$1") - 1) * 2 )).0/23"; }
pod_gateway() { echo "10.128.$(( ($(node_index "$1") - 1) * 2 )).1"; }
CP_IP=172.31.0.2
SERVICE_CIDR=172.30.0.0/16
CLUSTER_CIDR=10.128.0.0/14
API_SERVICE_IP=172.30.0.1

# cgroup v1 hierarchies (and the unified one of a hybrid layout) this machine mounts.
cgroup_dirs() {
  local d
  for d in /sys/fs/cgroup/*/; do
    d=${d%/}
    [ -e "$d/cgroup.procs" ] && echo "$d"
  done
  [ -e /sys/fs/cgroup/cgroup.procs ] && echo /sys/fs/cgroup
  return 0
}

# mkcg PATH: the cgroup PATH (relative, e.g. erc.erc/n1/system) in every hierarchy; cpuset
# needs its cpus and mems copied down before a task can join.
mkcg() {
  local rel=$1 d part path
  for d in $(cgroup_dirs); do
    path=$d
    for part in ${rel//\// }; do
      if [ ! -d "$path/$part" ]; then
        mkdir "$path/$part"
        if [ -e "$path/$part/cpuset.cpus" ]; then
          cat "$path/cpuset.cpus" >"$path/$part/cpuset.cpus"
          cat "$path/cpuset.mems" >"$path/$part/cpuset.mems"
        fi
      fi
      path=$path/$part
    done
  done
}

# joincg PATH PID
joincg() {
  local d
  for d in $(cgroup_dirs); do
    echo "$2" >"$d/$1/cgroup.procs"
  done
}

# start LABEL CGROUP NETNS MOUNTNS|- COMMAND...: a daemon of the cluster, its log in $dir/log.
start() {
  local label=$1 cg=$2 ns=$3 mnt=$4
  shift 4
  local args=(--net="/run/netns/$ns")
  [ "$mnt" = - ] || args+=(--mount="$mnt")
  mkdir -p "$dir/log" "$dir/pid"
  mkcg "$cg"
  # The launcher joins the cgroup first, so the daemon and all it starts stay in it.
  (
    for d in $(cgroup_dirs); do echo "$BASHPID" >"$d/$cg/cgroup.procs"; done
    exec setsid nsenter "${args[@]}" -- "$@" >>"$dir/log/$label.log" 2>&1 </dev/null
  ) &
  echo $! >"$dir/pid/$label"
}

wait_for() { # DESCRIPTION SECONDS COMMAND...
  local what=$1 secs=$2 i
  shift 2
  for ((i = 0; i < secs * 4; i++)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.25
  done
  die "$what did not come up within ${secs}s (logs: $dir/log; 'cluster.sh down' removes everything)"
}

kubectl_cp() {
  nsenter --net="/run/netns/$name-cp" -- "$bin/kubectl" --kubeconfig "$pki/admin.kubeconfig" "$@"
}

# --------------------------------------------------------------------------- certificates
cert() { # NAME SUBJECT [SAN]: a key and a certificate signed by the cluster's CA
  local n=$1 subj=$2 san=${3:-}
  openssl genrsa -out "$pki/$n.key" 2048 2>/dev/null
  openssl req -new -key "$pki/$n.key" -subj "$subj" -out "$pki/$n.csr" 2>/dev/null
  local ext=$pki/$n.ext
  {
    echo "basicConstraints=CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    if [ -n "$san" ]; then
      echo "extendedKeyUsage=serverAuth,clientAuth"
      echo "subjectAltName=$san"
    else
      echo "extendedKeyUsage=clientAuth"
    fi
  } >"$ext"
  openssl x509 -req -in "$pki/$n.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
    -days 30 -sha256 -extfile "$ext" -out "$pki/$n.crt" 2>/dev/null
  rm -f "$pki/$n.csr" "$ext"
}

kubeconfig() { # NAME (its certificate) SERVER
  cat >"$pki/$1.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: $name
  cluster:
    certificate-authority: $pki/ca.crt
    server: $2
users:
- name: $1
  user:
    client-certificate: $pki/$1.crt
    client-key: $pki/$1.key
contexts:
- name: $name
  context: {cluster: $name, user: $1}
current-context: $name
EOF
}

make_pki() {
  mkdir -p "$pki"
  chmod 700 "$pki"
  openssl req -x509 -newkey rsa:2048 -nodes -keyout "$pki/ca.key" -out "$pki/ca.crt" -days 30 \
    -subj "/CN=egress-router-cluster-$name-ca" 2>/dev/null
  openssl genrsa -out "$pki/sa.key" 2048 2>/dev/null
  openssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
  cert apiserver "/CN=kube-apiserver" \
    "IP:$CP_IP,IP:$API_SERVICE_IP,IP:127.0.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  cert admin "/O=system:masters/CN=admin"
  cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client"
  cert controller-manager "/CN=system:kube-controller-manager"
  cert scheduler "/CN=system:kube-scheduler"
  cert kube-proxy "/CN=system:kube-proxy"
  # The node-side CNI plugins (Multus, and ours for the OpenShift annotation) read pods and
  # network attachments as a user of their own (RBAC in cluster/manifests/cni-rbac.yaml).
  cert cni "/CN=system:egress-router-cni"
  local n
  for n in "${nodes[@]}"; do
    cert "kubelet-$n" "/O=system:nodes/CN=system:node:$n"
  done
  local server=https://$CP_IP:6443
  for n in admin controller-manager scheduler kube-proxy cni; do kubeconfig "$n" "$server"; done
  for n in "${nodes[@]}"; do kubeconfig "kubelet-$n" "$server"; done
}

# --------------------------------------------------------------------------- network
netns_add() { ip netns add "$1"; ip -n "$1" link set lo up; }

make_network() {
  local hub=$name-hub cp=$name-cp n
  netns_add "$hub"
  netns_add "$cp"
  ip netns exec "$hub" sysctl -qw net.ipv4.ip_forward=1
  ip -n "$hub" link add br-node type bridge
  ip -n "$hub" link add br-phy type bridge
  ip -n "$hub" addr add 172.31.0.1/24 dev br-node
  ip -n "$hub" addr add 192.168.12.1/24 dev br-phy
  ip -n "$hub" link set br-node up
  ip -n "$hub" link set br-phy up
  # The destinations, behind the gateway.
  netns_add "$name-dst"
  ip -n "$hub" link add dst type veth peer name eth0 netns "$name-dst"
  ip -n "$hub" addr add 203.0.113.1/24 dev dst
  ip -n "$hub" link set dst up
  for a in 25 26 27; do ip -n "$name-dst" addr add "203.0.113.$a/24" dev eth0; done
  ip -n "$name-dst" link set eth0 up
  ip -n "$name-dst" route add default via 203.0.113.1
  ip -n "$hub" link add cp type veth peer name eth0 netns "$cp"
  ip -n "$hub" link set cp master br-node up
  ip -n "$cp" addr add "$CP_IP/24" dev eth0
  ip -n "$cp" link set eth0 up
  for n in "${nodes[@]}"; do
    netns_add "$name-$n"
    ip -n "$hub" link add "$n-phy" type veth peer name eth0 netns "$name-$n"
    ip -n "$hub" link add "$n-node" type veth peer name eth1 netns "$name-$n"
    ip -n "$hub" link set "$n-phy" master br-phy up
    ip -n "$hub" link set "$n-node" master br-node up
    ip -n "$name-$n" addr add "$(phy_ip "$n")/24" dev eth0
    ip -n "$name-$n" addr add "$(node_ip "$n")/24" dev eth1
    ip -n "$name-$n" link set eth0 up
    ip -n "$name-$n" link set eth1 up
    ip -n "$name-$n" route add default via 192.168.12.1 dev eth0
    ip netns exec "$name-$n" sysctl -qw net.ipv4.ip_forward=1
    ip -n "$cp" route add "$(pod_subnet "$n")" via "$(node_ip "$n")"
  done
  for n in "${nodes[@]}"; do
    local m
    for m in "${nodes[@]}"; do
      [ "$m" = "$n" ] || ip -n "$name-$n" route add "$(pod_subnet "$m")" via "$(node_ip "$m")" dev eth1
    done
  done
}

# The project's destination server behind the gateway: it logs every peer address it sees
# ($dir/dst.log, one JSON object a line), the far side every test judges from.
DESTINATIONS=(tcp:203.0.113.25:80 tcp:203.0.113.26:80 tcp:203.0.113.26:443 tcp:203.0.113.27:9000 udp:203.0.113.27:9000)
destinations() {
  local python=python3
  [ -x "$root/.venv/bin/python" ] && python=$root/.venv/bin/python
  start destination-server "$cgname/dst" "$name-dst" - \
    env PYTHONPATH="$root/src" "$python" -m egress_router.lab.server serve "${DESTINATIONS[@]}" --log "$dir/dst.log" --ready "$dir/dst.ready"
  wait_for "the destination server" 30 test -e "$dir/dst.ready"
}

# --------------------------------------------------------------------------- control plane
control_plane() {
  local cp=$name-cp cg=$cgname/cp
  mkdir -p "$dir/etcd"
  start etcd "$cg" "$cp" - "$bin/etcd" --name "$name" --data-dir "$dir/etcd" \
    --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster "$name=http://127.0.0.1:2380" --listen-metrics-urls "" \
    --quota-backend-bytes 1073741824 --log-level warn
  start kube-apiserver "$cg" "$cp" - "$bin/kube-apiserver" \
    --advertise-address "$CP_IP" --bind-address "$CP_IP" --secure-port 6443 \
    --etcd-servers http://127.0.0.1:2379 \
    --service-cluster-ip-range "$SERVICE_CIDR" \
    --client-ca-file "$pki/ca.crt" --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
    --kubelet-client-certificate "$pki/apiserver-kubelet-client.crt" --kubelet-client-key "$pki/apiserver-kubelet-client.key" \
    --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction,PodSecurity \
    --allow-privileged=true --profiling=false --cert-dir "$pki" \
    --kubelet-preferred-address-types InternalIP \
    --endpoint-reconciler-type lease
  wait_for "etcd" 60 etcd_listens
  wait_for "kube-apiserver" 180 kubectl_cp get --raw /readyz
  start kube-controller-manager "$cg" "$cp" - "$bin/kube-controller-manager" \
    --kubeconfig "$pki/controller-manager.kubeconfig" \
    --authentication-kubeconfig "$pki/controller-manager.kubeconfig" \
    --authorization-kubeconfig "$pki/controller-manager.kubeconfig" \
    --bind-address 127.0.0.1 --leader-elect=false \
    --service-account-private-key-file "$pki/sa.key" --root-ca-file "$pki/ca.crt" \
    --cluster-signing-cert-file "$pki/ca.crt" --cluster-signing-key-file "$pki/ca.key" \
    --use-service-account-credentials --service-cluster-ip-range "$SERVICE_CIDR" \
    --cluster-cidr "$CLUSTER_CIDR" --allocate-node-cidrs=false \
    --node-monitor-grace-period 20s --profiling=false
  start kube-scheduler "$cg" "$cp" - "$bin/kube-scheduler" \
    --kubeconfig "$pki/scheduler.kubeconfig" \
    --authentication-kubeconfig "$pki/scheduler.kubeconfig" \
    --authorization-kubeconfig "$pki/scheduler.kubeconfig" \
    --bind-address 127.0.0.1 --leader-elect=false --profiling=false
  kubectl_cp apply -f "$root/cluster/manifests/cni-rbac.yaml" >/dev/null
  # Multus's NetworkAttachmentDefinition CRD, from the Multus module the plugin is built from.
  local multus_dir
  multus_dir=$(cd "$root/cluster/multus" && go list -m -f '{{.Dir}}' gopkg.in/k8snetworkplumbingwg/multus-cni.v4)
  awk 'BEGIN{RS="\n---\n"} /kind: CustomResourceDefinition/ {print; exit}' "$multus_dir/deployments/multus-daemonset.yml" \
    | kubectl_cp apply -f - >/dev/null
}

# --------------------------------------------------------------------------- images
# The images the nodes run, as archives for `ctr images import` (no registry; nothing pulled):
# the pause image (FROM scratch + Kubernetes' own pause, built by build-cluster.sh) and the
# project's image (scripts/build-image.sh), which is also the client pods' image (it has
# Python and the project's lab client). Cached by image id.
PAUSE_IMAGE=localhost/egress-router-cluster/pause:3.10
ROUTER_IMAGE=${EGRESS_ROUTER_CLUSTER_IMAGE:-localhost/egress-router:$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$root/src/egress_router/__init__.py")}

podman_() { CONTAINERS_CONF="$root/scripts/containers.conf" podman "$@"; }

make_images() {
  local cache=$base/.images id ctx sum
  mkdir -p "$cache"
  sum=$(sha256sum <"$bin/pause" | cut -c1-64)
  if ! podman_ image exists "$PAUSE_IMAGE" \
    || [ "$(podman_ image inspect -f '{{index .Labels "pause.sha256"}}' "$PAUSE_IMAGE")" != "$sum" ]; then
    ctx=$(mktemp -d)
    cp "$bin/pause" "$ctx/pause"
    printf 'FROM scratch\nLABEL pause.sha256=%s\nCOPY pause /pause\nUSER 65535:65535\nENTRYPOINT ["/pause"]\n' \
      "$sum" >"$ctx/Containerfile"
    podman_ build -q -t "$PAUSE_IMAGE" -f "$ctx/Containerfile" "$ctx" >/dev/null
    rm -rf "$ctx"
  fi
  podman_ image exists "$ROUTER_IMAGE" || die "image $ROUTER_IMAGE is missing: bash scripts/build-image.sh"
  echo "$PAUSE_IMAGE" >"$dir/pause-image"
  echo "$ROUTER_IMAGE" >"$dir/router-image"
  archives=()
  local image
  for image in "$PAUSE_IMAGE" "$ROUTER_IMAGE"; do
    id=$(podman_ image inspect -f '{{.Id}}' "$image")
    if [ ! -s "$cache/$id.tar" ]; then
      podman_ save -q --format docker-archive -o "$cache/$id.tar.tmp$$" "$image" >/dev/null
      mv "$cache/$id.tar.tmp$$" "$cache/$id.tar"
    fi
    archives+=("$cache/$id.tar")
  done
}

# --------------------------------------------------------------------------- nodes
node_files() {
  local n=$1 nd=$dir/$1 p
  [ -n "$n" ] && [ -n "$dir" ] || die "node_files: no node"
  mkdir -p "$nd"/{containerd,cni/bin,cni/net.d,cni/ipam,kubelet,pod-logs,sysctl}
  for p in bridge host-local loopback macvlan portmap; do cp "/usr/lib/cni/$p" "$nd/cni/bin/"; done
  cp "$bin/multus" "$nd/cni/bin/multus"
  cat >"$nd/cni/net.d/10-podnet.conflist" <<JSON
{
  "cniVersion": "1.0.0",
  "name": "podnet",
  "plugins": [
    {"type": "bridge", "bridge": "cni0", "isDefaultGateway": true, "ipMasq": false, "hairpinMode": true,
     "ipam": {"type": "host-local", "dataDir": "$nd/cni/ipam",
              "ranges": [[{"subnet": "$(pod_subnet "$n")", "gateway": "$(pod_gateway "$n")"}]]}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
JSON
  # The CNI plugins' credential (Multus's kubeconfig, and ours for the annotation).
  # As JSON with the certificates inline (the one-file plugin reads JSON kubeconfigs).
  "$bin/kubectl" config view --kubeconfig "$pki/cni.kubeconfig" --flatten -o json >"$nd/cni/net.d/cni.kubeconfig"
  chmod 600 "$nd/cni/net.d/cni.kubeconfig"
  # The cluster DNS address of the plan (no DNS server runs; nothing leaves the namespaces).
  printf 'nameserver 172.30.0.10\n' >"$nd/resolv.conf"
  cat >"$nd/containerd.toml" <<TOML
version = 2
root = "$nd/containerd/root"
state = "$nd/containerd/state"
# Plugins that would write to /opt or need other file systems.
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.aufs", "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "$nd/containerd/containerd.sock"
[ttrpc]
  address = "$nd/containerd/containerd.sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  stream_server_address = "127.0.0.1"
  enable_selinux = false
  disable_apparmor = true
  # Root here lacks CAP_SYS_RESOURCE, so runc cannot lower a sandbox's oom_score_adj to the
  # kubelet's -998 ("failed to update /proc/self/oom_score_adj: Permission denied"); never below
  # containerd's own instead.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "$(command -v runc)"
        Root = "$nd/runc"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    # The standard paths, which are the node's own in its mount namespace (so DaemonSets that
    # install CNI plugins with hostPath /opt/cni/bin and /etc/cni/net.d work unchanged).
    bin_dir = "/opt/cni/bin"
    conf_dir = "/etc/cni/net.d"
    max_conf_num = 1
TOML
  cat >"$nd/kubelet.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $(node_ip "$n")
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $pki/ca.crt}
authorization: {mode: Webhook}
containerRuntimeEndpoint: unix://$nd/containerd/containerd.sock
cgroupDriver: cgroupfs
cgroupRoot: /$cgname/$n
cgroupsPerQOS: true
failCgroupV1: false
failSwapOn: false
protectKernelDefaults: true
resolvConf: $nd/resolv.conf
clusterDomain: cluster.local
clusterDNS: [172.30.0.10]
# ConfigMap changes reach the pods within seconds (live reload by kubectl apply).
syncFrequency: 10s
podLogsDir: $nd/pod-logs
staticPodPath: ""
maxPods: 40
serializeImagePulls: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: 64Mi, nodefs.available: 1%, nodefs.inodesFree: 1%, imagefs.available: 1%}
evictionPressureTransitionPeriod: 10s
nodeStatusReportFrequency: 10s
rotateCertificates: false
serverTLSBootstrap: false
YAML
  cat >"$nd/kube-proxy.yaml" <<YAML
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: nftables
hostnameOverride: $n
clusterCIDR: $CLUSTER_CIDR
clientConnection: {kubeconfig: $pki/kube-proxy.kubeconfig}
metricsBindAddress: 127.0.0.1:10249
healthzBindAddress: 127.0.0.1:10256
nodePortAddresses: [$(node_ip "$n")/32]
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s, udpTimeout: 0s, udpStreamTimeout: 0s}
YAML
  # The values the kubelet wants for the host-wide kernel settings it would otherwise write
  # (vm.overcommit_memory, kernel.panic, kernel.panic_on_oops: not per network namespace),
  # shown to it in the node's own mount namespace; protectKernelDefaults makes it only read.
  echo 1 >"$nd/sysctl/overcommit_memory"
  echo 10 >"$nd/sysctl/panic"
  echo 1 >"$nd/sysctl/panic_on_oops"
}

node_mount_ns() {
  local nd=$dir/$1
  touch "$nd/mnt"
  unshare --mount="$nd/mnt" --propagation private true
  nsenter --mount="$nd/mnt" -- sh -ec "
    mount -t tmpfs -o mode=0755 run-$name-$1 /run
    mkdir -p /run/netns /run/lock
    mount -t tmpfs -o mode=0755 opt-$name-$1 /opt
    mkdir -p /opt/cni/bin
    mount --bind $nd/cni/bin /opt/cni/bin
    mount --bind $nd/cni/net.d /etc/cni/net.d
    mount --bind $nd/sysctl/overcommit_memory /proc/sys/vm/overcommit_memory
    mount --bind $nd/sysctl/panic /proc/sys/kernel/panic
    mount --bind $nd/sysctl/panic_on_oops /proc/sys/kernel/panic_on_oops
  "
}

ctr_() { # NODE ARGS...
  nsenter --mount="$dir/$1/mnt" --net="/run/netns/$name-$1" -- \
    ctr --address "$dir/$1/containerd/containerd.sock" --namespace k8s.io "${@:2}"
}

node_up() {
  local n=$1 nd=$dir/$1 cg=$cgname/$1/system a
  node_files "$n"
  node_mount_ns "$n"
  start "containerd-$n" "$cg" "$name-$n" "$nd/mnt" containerd --config "$nd/containerd.toml"
  wait_for "containerd on $n" 60 ctr_ "$n" version
  for a in "${archives[@]}"; do ctr_ "$n" images import "$a" >/dev/null; done
  mkcg "$cgname/$n"
  start "kubelet-$n" "$cg" "$name-$n" "$nd/mnt" "$bin/kubelet" --config "$nd/kubelet.yaml" \
    --kubeconfig "$pki/kubelet-$n.kubeconfig" --root-dir "$nd/kubelet" --cert-dir "$nd/kubelet/pki" \
    --hostname-override "$n" --node-ip "$(node_ip "$n")" -v 1
  start "kube-proxy-$n" "$cg" "$name-$n" "$nd/mnt" "$bin/kube-proxy" --config "$nd/kube-proxy.yaml"
}

nodes_up() {
  make_images
  local n
  for n in "${nodes[@]}"; do node_up "$n"; done
  for n in "${nodes[@]}"; do
    wait_for "node $n Ready" 180 kubectl_cp wait --for=condition=Ready "node/$n" --timeout=1s
  done
  # The default ServiceAccount exists before anyone creates pods in the default namespace.
  wait_for "the default service account" 60 kubectl_cp get serviceaccount default
}

etcd_listens() { [ -n "$(ip netns exec "$name-cp" ss -Hltn 'sport = :2379')" ]; }

up() {
  [ ! -e "$dir/up" ] || die "already up ($dir); 'down' first"
  if ip netns list | grep -q "^$name-"; then die "leftovers of cluster $name exist: run 'down' first"; fi
  local out
  out=$(bash "$root/scripts/build-cluster.sh")
  bin=$out/bin
  mkdir -p "$dir"
  echo "$bin" >"$dir/bin"
  [ -z "${EGRESS_ROUTER_CLUSTER_OWNER:-}" ] || echo "$EGRESS_ROUTER_CLUSTER_OWNER" >"$dir/owner"
  local t0=$SECONDS
  make_pki
  make_network
  destinations
  control_plane
  say "control plane up in $((SECONDS - t0)) s"
  [ -n "${EGRESS_ROUTER_CLUSTER_CONTROL_PLANE_ONLY:-}" ] || { nodes_up; say "nodes up in $((SECONDS - t0)) s"; }
  touch "$dir/up"
  cat <<EOF
export KUBECONFIG=$pki/admin.kubeconfig
kubectl: ip netns exec $name-cp $bin/kubectl ...   (or: bash scripts/cluster.sh kubectl ...)
EOF
}

# --------------------------------------------------------------------------- down
kill_cgroups() {
  local sig=$1 d pids=""
  for d in $(cgroup_dirs); do
    [ -d "$d/$cgname" ] || continue
    pids="$pids $(find "$d/$cgname" -name cgroup.procs -exec cat {} + 2>/dev/null)"
    break # one hierarchy lists every process
  done
  pids=$(echo $pids | tr ' ' '\n' | sort -u | tr '\n' ' ')
  [ -n "${pids// /}" ] || return 1
  kill "-$sig" $pids 2>/dev/null || true
  return 0
}

down() {
  local i d n
  # The daemons first (SIGTERM: containerd and the kubelet leave their pods), then anything left.
  if kill_cgroups TERM; then
    for ((i = 0; i < 40; i++)); do kill_cgroups 0 || break; sleep 0.25; done
    for ((i = 0; i < 20; i++)); do kill_cgroups KILL || break; sleep 0.25; done
  fi
  # A node's mount namespace goes with its last process and its bind mount: its mounts too.
  for n in "${nodes[@]}"; do
    if [ -e "$dir/$n/mnt" ]; then umount "$dir/$n/mnt" 2>/dev/null || umount -l "$dir/$n/mnt" 2>/dev/null || true; fi
  done
  # Anything still mounted below the cluster's directory in this namespace.
  if [ -d "$dir" ]; then
    { findmnt -rn -o TARGET | grep "^$dir/" || true; } | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
  fi
  for n in dst hub cp "${nodes[@]}"; do
    ip netns del "$name-$n" 2>/dev/null || true
  done
  for d in $(cgroup_dirs); do
    [ -d "$d/$cgname" ] || continue
    find "$d/$cgname" -depth -type d -exec rmdir {} \; 2>/dev/null || true
  done
  [ -d "$base" ] && rm -rf --one-file-system "$dir"
  say "down"
}

sweep() {
  local c owner
  [ -d "$base" ] || return 0
  for c in "$base"/*/; do
    c=$(basename "$c")
    [ -f "$base/$c/owner" ] || continue
    owner=$(cat "$base/$c/owner")
    if ! kill -0 "$owner" 2>/dev/null; then
      say "sweeping cluster $c (owner $owner is gone)"
      EGRESS_ROUTER_CLUSTER=$c bash "$0" down
    fi
  done
}

status() {
  [ -e "$dir/bin" ] || { say "not up"; return 1; }
  bin=$(cat "$dir/bin")
  local f
  for f in "$dir"/pid/*; do
    [ -e "$f" ] || continue
    if kill -0 "$(cat "$f")" 2>/dev/null; then echo "running $(basename "$f")"; else echo "STOPPED $(basename "$f")"; fi
  done
  kubectl_cp get nodes -o wide || true
  kubectl_cp get pods -A -o wide || true
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  sweep) sweep ;;
  status) status ;;
  kubectl)
    shift
    bin=$(cat "$dir/bin")
    kubectl_cp "$@"
    ;;
  *) die "usage: cluster.sh up|down|status|sweep|kubectl ARGS" ;;
esac
