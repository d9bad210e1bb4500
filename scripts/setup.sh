#!/usr/bin/env bash
# Idempotent set-up of a fresh Debian machine: system packages and the project's virtualenv.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
# containerd, runc, gcc (the static pause binary), openssl (certificates): the local cluster.
for cmd in nft:nftables iptables-restore:iptables ip:iproute2 iperf3:iperf3 conntrack:conntrack sysctl:procps keepalived:keepalived squid:squid haproxy:haproxy curl:curl openssl:openssl \
    containerd:containerd runc:runc gcc:gcc; do
  command -v "${cmd%%:*}" >/dev/null 2>&1 || need+=("${cmd#*:}")
done
[ -x /usr/lib/cni/bridge ] || need+=(containernetworking-plugins)
dpkg -s libc6-dev >/dev/null 2>&1 || need+=(libc6-dev)  # the static C library for pause
if [ "${#need[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then echo "setup: need root to install ${need[*]}" >&2; exit 1; fi
  # squid and haproxy are packaged as services: the tests run them inside lab namespaces
  # only, so no service may start in this machine's namespace (policy-rc.d: 101 = not now).
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  if [ -d /run/systemd/system ]; then
    systemctl disable --now squid haproxy >/dev/null 2>&1 || true
  fi
fi
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
# Every package pinned by constraints.txt (scripts/lock.sh regenerates it); PIP_CONSTRAINT also
# pins the build backend pip installs in its isolated build environment.
PIP_CONSTRAINT="$PWD/constraints.txt" .venv/bin/pip install -q --disable-pip-version-check \
  -c constraints.txt -e '.[dev,bench,cni]'
