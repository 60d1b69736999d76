#!/usr/bin/env bash
# Stops what start-kubemark-netperf.sh started. The node pods go first and gracefully: each
# tears its pods down (CNI DEL, so the CNI's IPAM gets every IP back) before it exits. Then
# their Node objects, credentials, control pods and kube-proxy leave the master, and the
# namespace (with the records collector and its volume, unless --keep-collector) the admin
# cluster.
#
#   KUBEMARK_MASTER_KUBECONFIG=master.kubeconfig scripts/stop-kubemark-netperf.sh [--dry-run]
#     [--keep-collector]
set -euo pipefail
keep_collector=0
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY_RUN=1 ;;
    --keep-collector) keep_collector=1 ;;
    -h | --help)
      sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
      exit 0
      ;;
    *) echo "stop-kubemark-netperf: unknown option $arg" >&2; exit 2 ;;
  esac
done
# shellcheck source=scripts/lib/kubemark.sh
source "$(dirname "$0")/lib/kubemark.sh"
need_master
ns=$KUBEMARK_NAMESPACE
part_of=app.kubernetes.io/part-of=netready-kubemark

# The node pods: SIGTERM, each with its grace period for the teardown.
run admin -n "$ns" scale rc not-so-hollow-node --replicas=0
run admin -n "$ns" wait --for=delete pod -l name=not-so-hollow-node --timeout=15m
run admin -n "$ns" delete rc not-so-hollow-node --ignore-not-found
run admin -n "$ns" delete configmap netready-config node-registries cni-conf-template --ignore-not-found
run admin -n "$ns" delete secret kubeconfig --ignore-not-found
run admin -n "$ns" delete podmonitor netready --ignore-not-found

# The master: the nodes, their credentials, the control pods, kube-proxy.
run master delete nodes -l "${NODE_LABELS%%,*}" --ignore-not-found
run master -n kube-system delete secret -l "$part_of" --ignore-not-found
run master delete clusterrolebinding -l "$part_of" --ignore-not-found
control=$(render "$templates/netperf-control.yaml") || fail "netperf-control.yaml did not render"
if ((DRY_RUN)); then
  printf -- '---\n# would delete on master:\n%s\n' "$control"
else
  kubectl_master delete --ignore-not-found -f - <<<"$control" >&2
fi
if [[ "$DEPLOY_KUBE_PROXY" == true ]]; then
  run master -n kube-system delete daemonset,configmap,serviceaccount netready-kube-proxy \
    --ignore-not-found
  run master delete clusterrolebinding netready-kubemark:kube-proxy --ignore-not-found
fi

if ((keep_collector)); then
  say "the collector stays in namespace $ns (records of run(s) in its volume)"
else
  run admin delete namespace "$ns" --ignore-not-found --wait=true
fi
say "stopped"
