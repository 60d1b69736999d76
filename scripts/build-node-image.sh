#!/usr/bin/env bash
# Builds the not-so-hollow node image (images/not-so-hollow-node) without Docker or a registry:
# the Debian base comes from mmdebstrap, the image from buildah (rootful, chroot isolation, vfs
# storage private to this run and removed at the end), the result is an OCI archive that
# `ctr -n k8s.io images import` (containerd 1.6) and `skopeo copy`/`buildah push` take as is.
#
#   scripts/build-node-image.sh [options]
#     --netready-bin FILE   netready to put in the image (default: target/release/netready,
#                           built first when missing); its debug info is stripped
#     --netready-from-source  build netready inside the image's first stage instead
#     --kubelet SOURCE      URL, file, or "none" (stand-in mode only)
#                           (default: https://dl.k8s.io/release/<version>/bin/linux/amd64/kubelet)
#     --kubelet-version V   default v1.28.15
#     --kubelet-sha256 SUM  checked when given (a URL's published .sha256 is checked anyway)
#     --base IMAGE          base image from a registry instead of building one with mmdebstrap
#     --mirror URL          Debian mirror for mmdebstrap (default http://deb.debian.org/debian)
#     --image REF           image name (default localhost/netready/not-so-hollow-node:<version>)
#     --output FILE         OCI archive (default target/images/not-so-hollow-node.oci.tar)
#     --push                also push REF to its registry (buildah push docker://REF)
set -euo pipefail
cd "$(dirname "$0")/.."

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
netready_bin="" from_source=0 kubelet_version=v1.28.15 kubelet="" kubelet_sha256=""
base="" mirror=http://deb.debian.org/debian push=0
image="localhost/netready/not-so-hollow-node:$version"
output=target/images/not-so-hollow-node.oci.tar

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
  exit "${1:-0}"
}
need() { [[ $# -ge 2 && -n "$2" ]] || { echo "build-node-image: $1 needs a value" >&2; exit 2; }; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --netready-bin) need "$@"; netready_bin=$2; shift 2 ;;
    --netready-from-source) from_source=1; shift ;;
    --kubelet) need "$@"; kubelet=$2; shift 2 ;;
    --kubelet-version) need "$@"; kubelet_version=$2; shift 2 ;;
    --kubelet-sha256) need "$@"; kubelet_sha256=$2; shift 2 ;;
    --base) need "$@"; base=$2; shift 2 ;;
    --mirror) need "$@"; mirror=$2; shift 2 ;;
    --image) need "$@"; image=$2; shift 2 ;;
    --output) need "$@"; output=$2; shift 2 ;;
    --push) push=1; shift ;;
    -h | --help) usage 0 ;;
    *) echo "build-node-image: unknown option $1" >&2; usage 2 ;;
  esac
done
kubelet=${kubelet:-https://dl.k8s.io/release/$kubelet_version/bin/linux/amd64/kubelet}

[[ $(id -u) -eq 0 ]] || { echo "build-node-image: run as root (rootful buildah)" >&2; exit 1; }
for tool in buildah mmdebstrap strip; do
  command -v "$tool" >/dev/null || {
    echo "build-node-image: $tool missing (scripts/install-deps.sh installs it)" >&2
    exit 1
  }
done

work=$(mktemp -d /tmp/netready-node-image.XXXXXX)
bah=(buildah --root "$work/storage" --runroot "$work/run" --storage-driver vfs)
cleanup() {
  set +e
  "${bah[@]}" rm --all >/dev/null 2>&1 || true
  # A build cut short can leave chroot bind mounts under the private storage.
  grep -o " ${work}[^ ]*" /proc/mounts | sort -r | while read -r m; do umount -l "$m" || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# The build context: only what the Dockerfile reads (a binary, the image's files, a kubelet),
# or the whole source tree when netready is built inside the image.
if ((from_source)); then
  context=$PWD
  netready_arg=""
else
  if [[ -z "$netready_bin" ]]; then
    netready_bin=target/release/netready
    [[ -x "$netready_bin" ]] || cargo build --release --locked --bin netready
  fi
  context=$work/context
  mkdir -p "$context/images/not-so-hollow-node"
  cp -r images/not-so-hollow-node/rootfs "$context/images/not-so-hollow-node/"
  strip --strip-debug -o "$context/netready" "$netready_bin"
  netready_arg=netready
fi
case "$kubelet" in
  none | http://* | https://*) kubelet_arg=$kubelet ;;
  *)
    [[ -f "$kubelet" ]] || { echo "build-node-image: no kubelet file $kubelet" >&2; exit 1; }
    if ((from_source)); then
      echo "build-node-image: --kubelet FILE with --netready-from-source: put the file" \
        "inside the repository and give its relative path" >&2
      [[ "$(realpath "$kubelet")" == "$PWD"/* ]] || exit 1
      kubelet_arg=$(realpath --relative-to="$PWD" "$kubelet")
    else
      cp "$kubelet" "$context/kubelet"
      kubelet_arg=kubelet
    fi
    ;;
esac

if [[ -z "$base" ]]; then
  base=localhost/netready/debian-base:bookworm
  echo "build-node-image: base from mmdebstrap ($mirror)"
  suites=("deb $mirror bookworm main" "deb $mirror bookworm-updates main")
  if [[ "$mirror" == http://deb.debian.org/debian ]]; then
    suites+=("deb http://deb.debian.org/debian-security bookworm-security main")
  fi
  mmdebstrap --quiet --variant=minbase --include=ca-certificates \
    --aptopt='Acquire::Retries "3"' bookworm "$work/base.tar" "${suites[@]}"
  ctr=$("${bah[@]}" from scratch)
  "${bah[@]}" add "$ctr" "$work/base.tar" / >/dev/null
  "${bah[@]}" config --cmd /bin/bash "$ctr"
  "${bah[@]}" commit --quiet "$ctr" "$base" >/dev/null
  "${bah[@]}" rm "$ctr" >/dev/null
  rm -f "$work/base.tar"
fi

echo "build-node-image: building $image (kubelet: $kubelet_arg)"
"${bah[@]}" bud --isolation chroot --network host --layers=false --pull=never \
  -f "$PWD/images/not-so-hollow-node/Dockerfile" \
  --build-arg BASE="$base" \
  --build-arg NETREADY_BIN="$netready_arg" \
  --build-arg KUBELET_VERSION="$kubelet_version" \
  --build-arg KUBELET_SOURCE="$kubelet_arg" \
  --build-arg KUBELET_SHA256="$kubelet_sha256" \
  -t "$image" "$context"

mkdir -p "$(dirname "$output")"
rm -f "$output"
# The ref name annotation is what `ctr images import` names the image after.
"${bah[@]}" push --quiet "$image" "oci-archive:$output:$image"
if ((push)); then
  "${bah[@]}" push "$image" "docker://$image"
fi
echo "build-node-image: $output ($(du -h "$output" | cut -f1)) holds $image"
