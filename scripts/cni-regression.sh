#!/usr/bin/env bash
# A CNI vendor's regression run on kubemark: deploy the not-so-hollow nodes with the CNI's
# manifest, churn netperf pods, collect every node's records from the collector, report, and
# compare against a baseline run. The exit code is `netready compare`'s: 0 no regression,
# 1 regression, 2 a run is invalid (e.g. too many pods never became network-ready).
#
#   KUBEMARK_MASTER_KUBECONFIG=master.kubeconfig NUM_NODES=100 CNI_RELEASE=v1.2.3 \
#     scripts/cni-regression.sh --cni-manifest my-cni.yaml --baseline baseline.jsonl \
#       [--churn cl2|scale] [--rounds 3] [--out DIR] [--max-lag 50ms] [--keep] [--dry-run]
#
# --churn cl2    ClusterLoader2 with kubemark-templates/cl2/netperf-churn.yaml (needs
#                `clusterloader2` on PATH); scale (default): the example netperf Deployment
#                scaled to NETPERF_REPLICAS and back to 0, --rounds times
# --out DIR      records.jsonl, report.txt, compare.txt (default netready-kubemark-results/<run>)
# --max-lag D    largest p99 of netready's own lag in a valid run (netready compare --max-lag)
# --keep         leave the cluster running (default: stop-kubemark-netperf.sh at the end)
# --dry-run      print what it would apply and run; change nothing
# Metrics: the node pods' /metrics are scraped by Prometheus (PodMonitor); with PROMETHEUS_URL
# set, the run's recorded series are saved beside the records.
set -euo pipefail
cni_manifest="" baseline="" churn=scale rounds=3 out="" keep=0 max_lag=50ms
usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
  exit "${1:-0}"
}
while [[ $# -gt 0 ]]; do
  case "$1" in
    --cni-manifest) cni_manifest=${2:?--cni-manifest needs a file}; shift 2 ;;
    --baseline) baseline=${2:?--baseline needs a file}; shift 2 ;;
    --churn) churn=${2:?--churn needs cl2 or scale}; shift 2 ;;
    --rounds) rounds=${2:?--rounds needs a number}; shift 2 ;;
    --out) out=${2:?--out needs a directory}; shift 2 ;;
    --max-lag) max_lag=${2:?--max-lag needs a duration}; shift 2 ;;
    --keep) keep=1; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h | --help) usage 0 ;;
    *) echo "cni-regression: unknown option $1" >&2; usage 2 ;;
  esac
done
: "${RUN_ID:=cni-regression-$(date -u +%Y%m%d-%H%M%S)}"
export RUN_ID DRY_RUN
# shellcheck source=scripts/lib/kubemark.sh
source "$(dirname "$0")/lib/kubemark.sh"
need_master
[[ -n "$cni_manifest" ]] || fail "--cni-manifest is required: the CNI under test"
[[ -f "$cni_manifest" ]] || fail "--cni-manifest $cni_manifest: no such file"
[[ "$churn" == cl2 || "$churn" == scale ]] || fail "--churn $churn: expected cl2 or scale"
[[ "$rounds" =~ ^[1-9][0-9]*$ ]] || fail "--rounds $rounds: expected a positive number"
if [[ -n "$baseline" && ! -f "$baseline" ]]; then
  fail "--baseline $baseline: no such file"
fi
((DRY_RUN)) || [[ -n "$baseline" ]] || fail "--baseline is required (a records file of an earlier run)"
[[ "$COLLECTOR" == true ]] || fail "COLLECTOR=false: the regression run reads records from the collector"
out=${out:-netready-kubemark-results/$RUN_ID}
netready=${NETREADY:-$(command -v netready || echo "$repo/target/release/netready")}
dry=()
((DRY_RUN)) && dry=(--dry-run)

CNI_MANIFEST=$cni_manifest "$repo/scripts/start-kubemark-netperf.sh" "${dry[@]}"
# shellcheck disable=SC2317 # called by the EXIT trap
stop_cluster() {
  if ((keep == 0)); then
    "$repo/scripts/stop-kubemark-netperf.sh" --keep-collector "${dry[@]}" || true
  fi
}
trap stop_cluster EXIT

say "churn: $churn, $rounds rounds"
if [[ "$churn" == cl2 ]]; then
  if ((DRY_RUN)); then
    echo "# would run: clusterloader2 --provider=kubemark --kubeconfig=$KUBEMARK_MASTER_KUBECONFIG --testconfig=$templates/cl2/netperf-churn.yaml --testoverrides=(CL2_NETPERF_ROUNDS=$rounds)"
  else
    command -v clusterloader2 >/dev/null || fail "--churn cl2: clusterloader2 is not on PATH"
    overrides=$(mktemp)
    echo "CL2_NETPERF_ROUNDS: $rounds" >"$overrides"
    clusterloader2 --provider=kubemark --kubeconfig="$KUBEMARK_MASTER_KUBECONFIG" \
      --testconfig="$templates/cl2/netperf-churn.yaml" --testoverrides="$overrides" \
      --report-dir="$out/cl2" >&2
    rm -f "$overrides"
  fi
else
  # The example Deployment alone, at 0 replicas: the rounds scale it.
  examples=$(NETPERF_REPLICAS=0 render "$templates/netperf-examples.yaml") ||
    fail "netperf-examples.yaml did not render"
  awk 'BEGIN{RS="---\n"; ORS="---\n"} /kind: Deployment/' <<<"$examples" | apply master
  for ((r = 1; r <= rounds; r++)); do
    run master -n netperf scale deployment netperf --replicas="$NETPERF_REPLICAS"
    run master -n netperf rollout status deployment netperf --timeout=15m
    run master -n netperf scale deployment netperf --replicas=0
    run master -n netperf wait --for=delete pod -l app.kubernetes.io/name=netperf --timeout=15m
  done
fi

# Records: one request to the collector, not one exec per node.
if ((DRY_RUN)); then
  echo "# would run on admin: kubectl -n $KUBEMARK_NAMESPACE exec statefulset/netready-collector -- curl -fsS http://localhost:8080/v1/records?run_id=$RUN_ID > $out/records.jsonl"
  echo "# would run: netready report $out/records.jsonl; netready compare --max-lag $max_lag ${baseline:-BASELINE} $out/records.jsonl"
  exit 0
fi
mkdir -p "$out"
kubectl_admin -n "$KUBEMARK_NAMESPACE" exec statefulset/netready-collector -- \
  curl -fsS "http://localhost:8080/v1/records?run_id=$RUN_ID" >"$out/records.jsonl"
say "$(wc -l <"$out/records.jsonl") records in $out/records.jsonl"
if [[ -n "${PROMETHEUS_URL:-}" ]]; then
  curl -fsS "$PROMETHEUS_URL/api/v1/query" --data-urlencode \
    'query={__name__=~"netready_.*|cluster:netready_.*"}' >"$out/metrics.json" ||
    say "warning: could not read metrics from $PROMETHEUS_URL"
fi
"$netready" report "$out/records.jsonl" | tee "$out/report.txt"
set +e
"$netready" compare --max-lag "$max_lag" "$baseline" "$out/records.jsonl" | tee "$out/compare.txt"
code=${PIPESTATUS[0]}
set -e
say "compare: exit $code (0 no regression, 1 regression, 2 invalid run)"
exit "$code"
