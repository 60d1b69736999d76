#!/usr/bin/env bash
# Installs what netready's build, tests and local node need on a fresh Debian 12 machine.
set -euo pipefail
packages=(
  containerd runc containernetworking-plugins  # upstream runtime and real CNI plugins
  busybox-static gcc libc6-dev                  # test images: busybox, a static pause
  make                                          # jemalloc, the binary's allocator, builds with make
  protobuf-compiler                             # k8s-cri compiles the CRI proto with protoc
  iproute2 util-linux iptables                  # namespaces, nsenter/unshare, service VIPs
  prometheus                                    # promtool checks /metrics output in tests
  fonts-dejavu-core                             # text in PNG plots
  iperf3                                        # traffic after network ready
  iputils-ping curl                             # allowed in netperf pods' commands
  golang-go golang-google-grpc-dev              # interop: a grpc-go CRI client as kubelet dials
  python3 python3-venv                          # interop: a venv for grpcio and h2 from PyPI
  mmdebstrap buildah                            # the node image: a Debian base, then the image
  shellcheck                                    # every shell script is checked in the tests
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# Interop clients nobody here wrote: grpcio (C-core, sends the socket path %-encoded) and
# python-hyper's h2/hpack/hyperframe (adversarial HTTP/2); kubernetes-validate checks the
# manifests against the API schemas; PyYAML reads the Prometheus rule files in the tests.
# Debian 12's grpcio is 1.51, older than the 1.57 that sends that form, so they come from
# PyPI, into a venv of their own: Debian's python is externally managed. The tests find it
# there (tests/testkit/src/interop.rs).
venv="${NETREADY_TEST_VENV:-/opt/netready-test/venv}"
if ! "$venv/bin/python3" -c 'import grpc, h2, hpack, hyperframe, kubernetes_validate, yaml, sys; sys.exit(tuple(map(int, grpc.__version__.split(".")[:2])) < (1, 57))' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/python3" -m pip install --quiet --disable-pip-version-check 'grpcio>=1.57' 'h2>=4.1' kubernetes-validate pyyaml
fi
# The Prometheus Operator's PodMonitor is checked against the schema its CRD generates
# (@kubernetes-models/prometheus-operator) with the machine's Node.js, from the npm registry.
npm_dir="${NETREADY_TEST_NPM:-/opt/netready-test/npm}"
if [[ ! -d "$npm_dir/node_modules/@kubernetes-models/prometheus-operator" || ! -d "$npm_dir/node_modules/yaml" ]]; then
  if ! command -v npm >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm
  fi
  mkdir -p "$npm_dir"
  npm install --prefix "$npm_dir" --silent --no-audit --no-fund \
    @kubernetes-models/prometheus-operator@6.0.0 yaml@2
fi
# Debian enables containerd's systemd unit; netready's tests and local node start their own.
