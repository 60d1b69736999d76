#!/usr/bin/env bash
# Starts a kubemark cluster of not-so-hollow nodes: on the kubemark master, node credentials
# (TLS bootstrap), the control pods and Service, optionally kube-proxy and the CNI's manifest;
# on the admin cluster, the node pods (images/not-so-hollow-node), their configuration, the
# records collector and Prometheus scraping. Then waits until NUM_NODES nodes are Ready.
#
#   KUBEMARK_MASTER_KUBECONFIG=master.kubeconfig NUM_NODES=100 \
#     KUBEMARK_IMAGE_REGISTRY=registry.example.com/netready KUBEMARK_IMAGE_TAG=v0.1.0 \
#     CNI_MANIFEST=my-cni.yaml scripts/start-kubemark-netperf.sh [--dry-run] [--examples]
#
# --dry-run   print every object it would apply (YAML, each after "# cluster: admin|master")
#             and every other command, and change nothing
# --examples  also apply the example netperf Deployment and Job on the master
# Knobs: scripts/lib/kubemark.sh (kubemark's NUM_NODES, KUBEMARK_IMAGE_REGISTRY,
# KUBEMARK_IMAGE_TAG, plus the node pods' resources, labels, taints, the CNI manifest,
# control replicas, discovery, the collector); README, "Deploy on kubemark".
set -euo pipefail
examples=0
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY_RUN=1 ;;
    --examples) examples=1 ;;
    -h | --help)
      sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
      exit 0
      ;;
    *) echo "start-kubemark-netperf: unknown option $arg" >&2; exit 2 ;;
  esac
done
# shellcheck source=scripts/lib/kubemark.sh
source "$(dirname "$0")/lib/kubemark.sh"
need_master

# The master's address and CA, from its kubeconfig, for the nodes' bootstrap kubeconfig.
KUBEMARK_MASTER_URL=$(kubectl_master config view --raw --minify -o 'jsonpath={.clusters[0].cluster.server}')
master_ca=$(kubectl_master config view --raw --minify \
  -o 'jsonpath={.clusters[0].cluster.certificate-authority-data}')
[[ -n "$KUBEMARK_MASTER_URL" ]] || fail "no server in $KUBEMARK_MASTER_KUBECONFIG"
[[ -n "$master_ca" ]] || fail "no certificate-authority-data in $KUBEMARK_MASTER_KUBECONFIG" \
  "(the node pods need the CA inline)"
export KUBEMARK_MASTER_URL

# A bootstrap token per start: id [a-z0-9]{6}, secret [a-z0-9]{16} (the API server's format).
token() {
  local s=""
  while ((${#s} < $1)); do s+=$(head -c 64 /dev/urandom | LC_ALL=C tr -dc 'a-z0-9'); done
  echo "${s:0:$1}"
}
TOKEN_ID=$(token 6)
TOKEN_SECRET=$(token 16)
TOKEN_EXPIRATION=$(date -u -d "+${TOKEN_TTL_HOURS} hours" +%Y-%m-%dT%H:%M:%SZ)
export TOKEN_ID TOKEN_SECRET TOKEN_EXPIRATION
BOOTSTRAP_KUBECONFIG_B64=$(base64 -w0 <<EOF2
apiVersion: v1
kind: Config
clusters:
  - name: kubemark
    cluster:
      server: $KUBEMARK_MASTER_URL
      certificate-authority-data: $master_ca
contexts:
  - name: kubemark
    context: {cluster: kubemark, user: kubelet-bootstrap}
current-context: kubemark
users:
  - name: kubelet-bootstrap
    user:
      token: $TOKEN_ID.$TOKEN_SECRET
EOF2
)
export BOOTSTRAP_KUBECONFIG_B64

say "run $RUN_ID: $NUM_NODES nodes of $NODE_IMAGE"
# --- the kubemark master ---
apply_template master "$templates/node-bootstrap.yaml"
apply_template master "$templates/netperf-control.yaml"
if [[ "$DEPLOY_KUBE_PROXY" == true ]]; then
  apply_template master "$templates/kube-proxy.yaml"
fi
if [[ -n "$CNI_MANIFEST" ]]; then
  [[ -f "$CNI_MANIFEST" ]] || fail "CNI_MANIFEST=$CNI_MANIFEST: no such file"
  # The CNI's own manifest, unchanged: its DaemonSet runs on the node pods through
  # containerd like any ordinary pod.
  apply master <"$CNI_MANIFEST"
fi
if ((examples)); then
  apply_template master "$templates/netperf-examples.yaml"
fi

# --- the admin cluster ---
apply_template admin "$templates/kubemark-namespace.yaml"
apply_template admin "$templates/kubeconfig-secret.yaml"
[[ -z "$REGISTRY_MIRROR" ]] || apply_template admin "$templates/node-registries.yaml"
if [[ -n "$CNI_CONF_TEMPLATE_FILE" ]]; then
  [[ -f "$CNI_CONF_TEMPLATE_FILE" ]] || fail "CNI_CONF_TEMPLATE_FILE=$CNI_CONF_TEMPLATE_FILE: no such file"
  CNI_CONF_TEMPLATE_INDENTED=$(sed 's/^/    /' "$CNI_CONF_TEMPLATE_FILE")
  export CNI_CONF_TEMPLATE_INDENTED
  apply_template admin "$templates/cni-conf-template.yaml"
fi
[[ -z "$RESULTS_COLLECTOR" ]] || apply_template admin "$templates/netready-collector.yaml"
apply_template admin "$templates/not-so-hollow-node.yaml"
# The Prometheus Operator's PodMonitor and PrometheusRule (the dashboard's recording rules)
# when its CRDs are there; kubemark-templates/prometheus/scrape-config.yaml and
# netready-rules.yaml for a Prometheus without it.
if ((DRY_RUN)) || kubectl_admin get crd podmonitors.monitoring.coreos.com >/dev/null 2>&1; then
  apply_template admin "$templates/prometheus/podmonitor.yaml"
  apply admin <"$templates/prometheus/netready-prometheusrule.yaml"
else
  say "no PodMonitor CRD on the admin cluster: give your Prometheus" \
    "kubemark-templates/prometheus/scrape-config.yaml and netready-rules.yaml"
fi

if ((DRY_RUN)); then
  echo "# would wait for $NUM_NODES Ready nodes labelled ${NODE_LABELS%%,*} on master"
  exit 0
fi
say "waiting up to ${NODE_READY_TIMEOUT}s for $NUM_NODES Ready nodes"
deadline=$((SECONDS + NODE_READY_TIMEOUT))
while :; do
  ready=$(kubectl_master get nodes -l "${NODE_LABELS%%,*}" --no-headers 2>/dev/null |
    awk '$2 == "Ready"' | wc -l)
  ((ready >= NUM_NODES)) && break
  ((SECONDS < deadline)) || fail "$ready of $NUM_NODES nodes Ready after ${NODE_READY_TIMEOUT}s"
  sleep 10
done
say "$ready nodes Ready; run id $RUN_ID"
