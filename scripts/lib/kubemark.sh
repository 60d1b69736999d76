#!/usr/bin/env bash
# Shared by start-kubemark-netperf.sh, stop-kubemark-netperf.sh and cni-regression.sh: the knobs
# (kubemark's own names where kubemark has one), template rendering, and kubectl for the two
# clusters — the admin cluster the node pods run on (kubectl's current context, or
# ADMIN_KUBECONFIG) and the kubemark master they register with (KUBEMARK_MASTER_KUBECONFIG).
# With DRY_RUN=1 nothing is sent to either: objects are printed as YAML documents, each after a
# comment naming its cluster, and other commands as "# would run: ...".

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck disable=SC2034 # used by the scripts that source this file
templates=$repo/kubemark-templates
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$repo/Cargo.toml" | head -n1)

# kubemark's knobs.
: "${NUM_NODES:=10}"
: "${KUBEMARK_NAMESPACE:=kubemark}"
: "${KUBEMARK_IMAGE_REGISTRY:=localhost/netready}"
: "${KUBEMARK_IMAGE_TAG:=$version}"
: "${KUBEMARK_MASTER_KUBECONFIG:=}"
# The node pods.
: "${NODE_IMAGE:=$KUBEMARK_IMAGE_REGISTRY/not-so-hollow-node:$KUBEMARK_IMAGE_TAG}"
: "${NODE_CPU_REQUEST:=250m}"
: "${NODE_MEMORY_REQUEST:=256Mi}"
: "${NODE_CPU_LIMIT:=2}"
: "${NODE_MEMORY_LIMIT:=2Gi}"
: "${NODE_LABELS:=netready.io/not-so-hollow=true}"
: "${NODE_TAINTS:=}"
NODE_POD_NODE_SELECTOR=${NODE_POD_NODE_SELECTOR:-"{}"}
: "${MAX_PODS:=110}"
: "${CLUSTER_DNS:=}"
: "${CLUSTER_CIDR:=}"
: "${REGISTRY_MIRROR:=}"
: "${CNI_CONF_TEMPLATE_FILE:=}"
: "${PRELOAD_HOST_DIR:=/var/lib/netready-preload}"
# netready.
: "${RUN_ID:=netperf-$(date -u +%Y%m%d-%H%M%S)}"
: "${CNI_RELEASE:=unknown}"
: "${DISCOVERY:=true}"
: "${COLLECTOR:=true}"
: "${COLLECTOR_STORAGE:=200Gi}"
: "${RESULTS_COLLECTOR:=http://netready-collector.$KUBEMARK_NAMESPACE.svc:8080}"
: "${SCRAPE_INTERVAL:=30s}"
# The master's side.
: "${CNI_MANIFEST:=}"
: "${CONTROL_REPLICAS:=100}"
: "${DEPLOY_KUBE_PROXY:=false}"
: "${KUBE_PROXY_IMAGE:=registry.k8s.io/kube-proxy:v1.28.15}"
: "${NETPERF_REPLICAS:=10}"
# The application model in the examples: servers behind a Service with this fixed ClusterIP
# (in the cluster's service range: beside CLUSTER_DNS, else in kubemark's default
# 10.0.0.0/16) and clients sending HTTP load through it.
if [[ -n "$CLUSTER_DNS" ]]; then : "${NETPERF_MODEL_VIP:=${CLUSTER_DNS%.*}.201}"; fi
: "${NETPERF_MODEL_VIP:=10.0.0.201}"
: "${NETPERF_MODEL_SERVERS:=10}"
: "${NETPERF_MODEL_CLIENTS:=10}"
: "${NETPERF_MODEL_LOAD:=rate=50,duration=5m,connections=4}"
: "${TOKEN_TTL_HOURS:=168}"
: "${NODE_READY_TIMEOUT:=1800}"
DRY_RUN=${DRY_RUN:-0}
[[ "$COLLECTOR" == true ]] || RESULTS_COLLECTOR=""

export NUM_NODES KUBEMARK_NAMESPACE NODE_IMAGE NODE_CPU_REQUEST NODE_MEMORY_REQUEST \
  NODE_CPU_LIMIT NODE_MEMORY_LIMIT NODE_LABELS NODE_TAINTS NODE_POD_NODE_SELECTOR MAX_PODS \
  CLUSTER_DNS CLUSTER_CIDR REGISTRY_MIRROR PRELOAD_HOST_DIR RUN_ID CNI_RELEASE DISCOVERY \
  COLLECTOR_STORAGE RESULTS_COLLECTOR SCRAPE_INTERVAL CONTROL_REPLICAS KUBE_PROXY_IMAGE \
  NETPERF_REPLICAS NETPERF_MODEL_VIP NETPERF_MODEL_SERVERS NETPERF_MODEL_CLIENTS NETPERF_MODEL_LOAD

say() { echo "$(basename "$0"): $*" >&2; }
fail() {
  say "error: $*"
  exit 1
}

# Prints a template with every ${VAR} replaced by the environment's value; an unset variable
# is an error naming it and the file (a half-rendered object must never be applied).
render() {
  perl -pe 'BEGIN { $f = shift @ARGV }
    s/\$\{([A-Z0-9_]+)\}/defined $ENV{$1} ? $ENV{$1} : die "$f: \${$1} is not set\n"/ge' \
    "$1" "$1"
}

# apply_template CLUSTER TEMPLATE: rendered completely first, so a template that fails to
# render applies nothing.
apply_template() {
  local yaml
  # Explicit: errexit does not hold inside a function called from an || list.
  yaml=$(render "$2") || fail "not applied: $2 did not render"
  apply "$1" <<<"$yaml"
}

kubectl_admin() {
  if [[ -n "${ADMIN_KUBECONFIG:-}" ]]; then
    kubectl --kubeconfig "$ADMIN_KUBECONFIG" "$@"
  else
    kubectl "$@"
  fi
}

kubectl_master() {
  kubectl --kubeconfig "$KUBEMARK_MASTER_KUBECONFIG" "$@"
}

# apply CLUSTER: YAML on stdin is applied there (server-side, strict field validation), or
# printed under DRY_RUN.
apply() {
  local cluster=$1 yaml
  yaml=$(cat)
  if ((DRY_RUN)); then
    printf -- '---\n# cluster: %s\n%s\n' "$cluster" "$yaml"
    return
  fi
  "kubectl_$cluster" apply --server-side --field-manager=netready-kubemark \
    --validate=strict -f - <<<"$yaml" >&2
}

# run CLUSTER ARGS...: a kubectl command that changes something, or its description.
run() {
  local cluster=$1
  shift
  if ((DRY_RUN)); then
    echo "# would run on $cluster: kubectl $*"
    return
  fi
  "kubectl_$cluster" "$@" >&2
}

need_master() {
  [[ -n "$KUBEMARK_MASTER_KUBECONFIG" ]] ||
    fail "KUBEMARK_MASTER_KUBECONFIG is not set: the kubeconfig of the kubemark master"
  [[ -f "$KUBEMARK_MASTER_KUBECONFIG" ]] ||
    fail "KUBEMARK_MASTER_KUBECONFIG=$KUBEMARK_MASTER_KUBECONFIG: no such file"
  command -v kubectl >/dev/null || fail "kubectl is not on PATH"
}
