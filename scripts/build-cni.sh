#!/usr/bin/env bash
# Build the CNI plugin as ONE executable that needs no Python and no nft on the node:
#
#   bash scripts/build-cni.sh        # -> build/cni/egress-router-cni (+ .sha256)
#
# PyInstaller (pinned in constraints.txt) freezes `egress_router.cni:main` with its own Python,
# pyroute2 and the package into a --onefile executable, and bundles this machine's `nft` binary
# with every shared library it links (libnftables, libnftnl, libmnl, libjansson, libgmp, ...);
# the plugin runs that bundled nft (kernel/nft.py finds it first on PATH), so a node without
# nftables works. Only the C library comes from the node (glibc 2.36 or newer: Debian 12's).
#
# Idempotent and cached by its inputs: the package sources, pyproject.toml, constraints.txt,
# this script, the Python version and the bundled nft with its libraries. Same inputs, no work.
# EGRESS_ROUTER_CNI_BUILD (default build/cni) is where everything goes; `build/` is git-ignored.
# EGRESS_ROUTER_CNI_VENV (default: a venv of its own there) is the virtualenv PyInstaller runs
# from; the Containerfile's cni stage passes the one its dependencies layer made.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
out=${EGRESS_ROUTER_CNI_BUILD:-$root/build/cni}
name=egress-router-cni
python=${PYTHON:-python3}
mkdir -p "$out"

nft=$(PATH="$PATH:/usr/sbin:/sbin" command -v nft || true)
if [ -z "$nft" ]; then
  echo "build-cni: cannot bundle nft: it is not installed here; apt-get install nftables" >&2
  exit 1
fi
nft=$(readlink -f "$nft")
# Every shared library nft loads, as the dynamic linker resolves them here.
libs=$(ldd "$nft" | awk '/=> \//{print $3}' | sort -u)

inputs() {
  find src/egress_router -name '*.py' -o -name py.typed | LC_ALL=C sort | xargs sha256sum
  sha256sum pyproject.toml constraints.txt scripts/build-cni.sh
  # shellcheck disable=SC2086
  sha256sum "$nft" $(readlink -f $libs)
  "$python" --version 2>&1
  uname -m
}
key=$(inputs | sha256sum | cut -d' ' -f1)
if [ -x "$out/$name" ] && [ "$(cat "$out/.inputs" 2>/dev/null)" = "$key" ]; then
  echo "build-cni: $out/$name is up to date ($(cut -d' ' -f1 "$out/$name.sha256"))" >&2
  exit 0
fi

started=$(date +%s)
venv=${EGRESS_ROUTER_CNI_VENV:-$out/venv}
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
export PIP_CONSTRAINT=$root/constraints.txt PIP_DISABLE_PIP_VERSION_CHECK=1
"$venv/bin/pip" install -q -c constraints.txt '.[cni]'
# The installed package may be the same version with new code: always take this tree's.
"$venv/bin/pip" install -q -c constraints.txt --no-deps --force-reinstall .

work=$out/work
rm -rf "$work" "$out/dist"
# Modules the plugin never imports (render, the lab, the wait process, metrics, DNS,
# pyroute2's NDB/IPDB): kept out, because a one-file executable unpacks everything it holds at
# every start, and a CNI ADD has one second: the CJK codecs are 1 MB of it. (ssl, with
# OpenSSL's 5.4 MB, would be more, but pyroute2's netlink marshal imports it.)
excludes=()
for module in kubernetes_validate jsonschema rich yaml prometheus_client dns click \
  matplotlib numpy PIL pytest hypothesis tkinter pydoc_data sqlite3 \
  decimal _decimal xml pyexpat lzma _lzma bz2 _bz2 unicodedata \
  _multibytecodec _codecs_cn _codecs_hk _codecs_iso2022 _codecs_jp \
  _codecs_kr _codecs_tw \
  pyroute2.ndb pyroute2.ipdb pyroute2.fixtures pyroute2.plan9; do
  excludes+=(--exclude-module "$module")
done
# PYTHONHASHSEED: PyInstaller's own advice for reproducible output.
PYTHONHASHSEED=0 SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-0} "$venv/bin/pyinstaller" \
  --onefile --strip --noconfirm --clean --log-level WARN \
  --name "$name" \
  --distpath "$out/dist" --workpath "$work" --specpath "$work" \
  --add-binary "$nft:bin" \
  --collect-submodules pyroute2.iproute --collect-submodules pyroute2.netlink.rtnl \
  "${excludes[@]}" \
  "$root/src/egress_router/cni/__main__.py"
install -m 0755 "$out/dist/$name" "$out/$name.new"
mv -f "$out/$name.new" "$out/$name"
(cd "$out" && sha256sum "$name" > "$name.sha256")
echo "$key" > "$out/.inputs"
rm -rf "$work" "$out/dist"
echo "build-cni: built $out/$name ($(du -h "$out/$name" | cut -f1), $(( $(date +%s) - started ))s," \
  "sha256 $(cut -d' ' -f1 "$out/$name.sha256"))" >&2
