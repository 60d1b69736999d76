#!/usr/bin/env bash
# Installs what netready's build, tests and local node need on a fresh Debian 12 machine.
set -euo pipefail
packages=(
  containerd runc containernetworking-plugins  # upstream runtime and real CNI plugins
  busybox-static gcc libc6-dev                  # test images: busybox, a static pause
  protobuf-compiler                             # k8s-cri compiles the CRI proto with protoc
  iproute2 util-linux iptables                  # namespaces, nsenter/unshare, service VIPs
  prometheus                                    # promtool checks /metrics output in tests
  fonts-dejavu-core                             # text in PNG plots
  iperf3                                        # traffic after network ready
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# Debian enables containerd's systemd unit; netready's tests and local node start their own.
