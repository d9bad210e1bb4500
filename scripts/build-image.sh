#!/usr/bin/env bash
# Build the egress-router image with no image registry: a Debian 12 base made from Debian's
# packages (mmdebstrap), imported into podman, then `podman build` of the Containerfile on it.
#
#   bash scripts/build-image.sh            # -> localhost/egress-router:<version>
#                                          #    and localhost/egress-router:src-<digest>
#
# Idempotent and cached: the base is rebuilt only when its inputs change (suite, packages,
# this machine's apt sources, apt fetch settings, CA certificates, pip settings: their hash
# is the base's tag), and podman's layer cache makes an unchanged image a no-op.
#
# Environment: EGRESS_ROUTER_IMAGE (the tag to build), EGRESS_ROUTER_BASE_SUITE (bookworm),
# EGRESS_ROUTER_BASE_SOURCES (an apt sources file; default: this machine's for the suite).
set -euo pipefail
cd "$(dirname "$0")/.."
root_dir="$PWD"

export CONTAINERS_CONF="$root_dir/scripts/containers.conf"

version="$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' src/egress_router/__init__.py)"
image="${EGRESS_ROUTER_IMAGE:-localhost/egress-router:$version}"
suite="${EGRESS_ROUTER_BASE_SUITE:-bookworm}"
base_repo="localhost/egress-router-base"
# What the image needs at run time; the build stage adds python3-venv on its own.
packages="passwd,python3,nftables,iptables,iproute2,conntrack,keepalived,squid,haproxy"

say() { printf 'build-image: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }
# The tools' own output goes to a log, shown when they fail.
log="${TMPDIR:-/tmp}/egress-router-build-image.log"
: >"$log"
failed() { tail -n 60 "$log" >&2; die "$* (the whole log: $log)"; }

# --------------------------------------------------------------------------- tools
need=()
for cmd in podman:podman runc:runc mmdebstrap:mmdebstrap; do
  command -v "${cmd%%:*}" >/dev/null 2>&1 || need+=("${cmd#*:}")
done
if [ "${#need[@]}" -gt 0 ]; then
  [ "$(id -u)" -eq 0 ] || die "cannot install ${need[*]}: need root (apt-get install ${need[*]})"
  say "installing ${need[*]} from Debian"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# --------------------------------------------------------------------------- the base's inputs
# apt: the sources this machine uses for the suite, and the apt.conf.d files that say how it
# fetches (Acquire::: proxies, certificates, validity checks) — they go into the base too.
sources=()
if [ -n "${EGRESS_ROUTER_BASE_SOURCES:-}" ]; then
  sources=("$EGRESS_ROUTER_BASE_SOURCES")
else
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] && grep -v '^[[:space:]]*#' "$f" | grep -qw "$suite" && sources+=("$f")
  done
fi
[ "${#sources[@]}" -gt 0 ] || die "cannot find apt sources for $suite: set EGRESS_ROUTER_BASE_SOURCES to a sources file"
aptopts=()
for f in /etc/apt/apt.conf.d/*; do
  [ -f "$f" ] && grep -q '^[[:space:]]*Acquire' "$f" && aptopts+=("--aptopt=$f")
done
# pip: the system-wide configuration (index, certificate, timeouts); the user's own
# (~/.config/pip) names directories of this machine's disk that a container cannot see.
pip_files=()
for f in /etc/pip.conf /etc/xdg/pip/*; do
  [ -f "$f" ] && pip_files+=("$f")
done
ca_bundle=/etc/ssl/certs/ca-certificates.crt
[ -f "$ca_bundle" ] || die "cannot find this machine's CA certificates: $ca_bundle is missing (apt-get install ca-certificates)"

mmdebstrap_args=(
  --variant=apt
  # merged /usr without the usrmerge package, which pulls in perl (~50 MB)
  --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr
  --include="$packages"
  "${aptopts[@]}"
  --dpkgopt='path-exclude=/usr/share/man/*'
  --dpkgopt='path-exclude=/usr/share/doc/*'
  --dpkgopt='path-include=/usr/share/doc/*/copyright'
  --dpkgopt='path-exclude=/usr/share/locale/*'
  --dpkgopt='path-exclude=/usr/share/info/*'
)
# The files copied into the base are part of its identity, and so is this recipe.
inputs_hash="$(
  {
    printf '%s\n' "$suite" "${mmdebstrap_args[@]}" "${pip_files[@]}" local-ca-v1
    cat "${sources[@]}" "${aptopts[@]#--aptopt=}" "${pip_files[@]}" "$ca_bundle"
  } | sha256sum | cut -c1-16
)"
base="$base_repo:$suite-$inputs_hash"

# --------------------------------------------------------------------------- the base
start=$SECONDS
if podman image exists "$base"; then
  say "base $base: cached"
else
  say "base $base: building with mmdebstrap ($suite; $packages)"
  # The bundle also as a local CA, so that ca-certificates (pulled in by a later apt-get
  # install) regenerates the bundle with this machine's certificates still in it.
  local_ca=/usr/local/share/ca-certificates/build-host.crt
  copy_in=(--customize-hook="mkdir -p \"\$1${local_ca%/*}\" && cp '$ca_bundle' \"\$1$local_ca\"")
  for f in "$ca_bundle" "${pip_files[@]}"; do
    copy_in+=(--customize-hook="mkdir -p \"\$1$(dirname "$f")\" && cp '$f' \"\$1$f\"")
  done
  tmp="$(mktemp -d /var/tmp/egress-router-base.XXXXXX)"
  trap 'rm -rf "$tmp"' EXIT
  mmdebstrap --quiet "${mmdebstrap_args[@]}" "${copy_in[@]}" "$suite" "$tmp/base.tar" "${sources[@]}" \
    >>"$log" 2>&1 || failed "cannot build the base with mmdebstrap"
  podman import --quiet --change 'CMD ["/bin/bash"]' \
    --change "LABEL org.opencontainers.image.title=egress-router-base" \
    "$tmp/base.tar" "$base" >>"$log" 2>&1 || failed "cannot import the base into podman"
  rm -rf "$tmp"
  say "base $base: built in $((SECONDS - start)) s"
fi

# --------------------------------------------------------------------------- the image
# What the Containerfile copies, as a digest on the image: the tests refuse an image older
# than the source (tests/integration/test_image.py computes the same digest).
context_files() {
  find pyproject.toml constraints.txt README.md Containerfile src scripts/build-cni.sh \
    -type f ! -path '*/__pycache__/*' ! -path '*.egg-info/*' -print0 | LC_ALL=C sort -z
}
source_digest="$(context_files | xargs -0 sha256sum | sha256sum | cut -c1-64)"
# The build context: a copy of just those files with normalised metadata. podman's layer
# cache keys a COPY by the files' content AND mode, so a clone made under another umask
# (0002: group-writable files) missed the cache from the first COPY on and rebuilt every
# layer, dependencies included; times are set to the epoch too (they do not change the cache
# key today, but they are the other per-clone difference and go into the layers).
context="$(mktemp -d /var/tmp/egress-router-context.XXXXXX)"
trap 'rm -rf "$context"' EXIT
context_files | xargs -0 cp --parents --no-preserve=all -t "$context"
find "$context" -type d -exec chmod 0755 {} +
find "$context" -type f -exec chmod 0644 {} +
find "$context" -exec touch -h -d @0 {} +
start=$SECONDS
say "image $image: podman build on $base"
# Also tagged by that digest: the tests of several checkouts on one machine each find
# their own image, whichever was built last under the version tag.
source_tag="localhost/egress-router:src-${source_digest:0:16}"
# --jobs 2: the build and cni stages both follow deps and run side by side.
podman build --pull=never --network host --layers --jobs 2 \
  --label "egress-router.source-sha256=$source_digest" \
  --build-arg BASE="$base" -t "$image" -t "$source_tag" -f "$context/Containerfile" "$context" \
  >>"$log" 2>&1 \
  || failed "cannot build $image"
# Only the newest few source tags stay (their layers remain as the build cache).
podman images --format '{{.Repository}}:{{.Tag}} {{.CreatedAt}}' localhost/egress-router \
  | awk '$1 ~ /:src-/' | sort -k2 -r | awk 'NR > 8 {print $1}' \
  | while read -r old; do podman untag "$old" "$old" >/dev/null 2>&1 || true; done
size="$(podman image inspect --format '{{.Size}}' "$image")"
say "image $image: built in $((SECONDS - start)) s, $((size / 1000000)) MB"
printf '%s\n' "$image"
