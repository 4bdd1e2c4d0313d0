#!/usr/bin/env bash
# Checks the deployment artefacts with the real tools (installed on first use by deploy/tools.sh):
#   1. the chart's copies of the rules and the dashboard are current
#   2. helm lint --strict (default values, and the full values file: SASL_SSL + S3 + KEDA kafka + seeding)
#   3. helm template (default + full values) | kubernetes-validate --strict
#   4. the chart's guards: each combination that cannot work on a real cluster fails with its message
#   5. thresholds from values reach the rendered PrometheusRule
#   6. promtool check rules + promtool test rules
#   7. with --live: every dashboard query against a real Prometheus scraping a short pipeline run
# Usage: deploy/check.sh [--live] [--sync]   (--sync rewrites the chart's copies first)
set -euo pipefail

DEPLOY_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$DEPLOY_DIR/.." && pwd)"
CHART="$ROOT/helm/autoannotator"
PY="${AA_PYTHON:-$ROOT/.venv/bin/python}"
LIVE=0
SYNC=0
for arg in "$@"; do
  case "$arg" in
    --live) LIVE=1 ;;
    --sync) SYNC=1 ;;
    *) echo "deploy/check.sh: unknown argument $arg" >&2; exit 2 ;;
  esac
done

# shellcheck source=deploy/tools.sh
source "$DEPLOY_DIR/tools.sh"
HELM="$AA_HELM"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

step() { printf '== %s\n' "$*"; }

if [ "$SYNC" = 1 ]; then
  cp "$DEPLOY_DIR/prometheus/autoannotator.rules.yaml" "$CHART/files/autoannotator.rules.yaml"
  "$PY" "$DEPLOY_DIR/grafana/dashboard.py"
fi

step "chart files match deploy/ (rules, dashboard)"
cmp "$DEPLOY_DIR/prometheus/autoannotator.rules.yaml" "$CHART/files/autoannotator.rules.yaml" \
  || { echo "helm/autoannotator/files/autoannotator.rules.yaml differs: run deploy/check.sh --sync" >&2; exit 1; }
"$PY" "$DEPLOY_DIR/grafana/dashboard.py" --check

step "helm lint --strict"
"$HELM" lint --strict "$CHART"
"$HELM" lint --strict "$CHART" -f "$CHART/ci/full-values.yaml"

for values in default full; do
  step "helm template ($values values) | kubernetes-validate --strict"
  if [ "$values" = default ]; then
    "$HELM" template autoannotator "$CHART" > "$WORK/$values.yaml"
  else
    "$HELM" template autoannotator "$CHART" -f "$CHART/ci/full-values.yaml" > "$WORK/$values.yaml"
  fi
  # CRDs (ServiceMonitor, PrometheusRule, ScaledObject) have no bundled schema: warned, not failed.
  "$AA_KUBE_VALIDATE" --strict --quiet - < "$WORK/$values.yaml"
done

step "chart guards: each refused combination fails with its message"
# values (as --set flags) | the message that must appear
expect_fail() {
  local message="$1"; shift
  if out="$("$HELM" template autoannotator "$CHART" "$@" 2>&1)"; then
    echo "expected helm template $* to fail with: $message" >&2; exit 1
  fi
  grep -qF -- "$message" <<<"$out" || { echo "helm template $* failed, but not with: $message" >&2; echo "$out" >&2; exit 1; }
  echo "refused as expected: $*"
}
expect_fail "accessModes [ReadWriteOnce]: a file:// store on a volume without ReadWriteMany" \
  --set 'store.persistence.accessModes={ReadWriteOnce}'
expect_fail "is a file:// URI, but no volume holds it" --set store.uri=file:///data/models
expect_fail "reviewer.replicas > 1 needs reviewer.persistence.enabled=false" --set reviewer.replicas=2
expect_fail "reviewer.replicas > 1 needs pipeline.reviewer.mode llm" --set reviewer.replicas=2 \
  --set reviewer.persistence.enabled=false --set pipeline.reviewer.mode=human --set reviewer.human.enabled=true \
  --set reviewer.human.tokenSecret.name=t
expect_fail "trainer.gpu > 0, but the trainer image installs CPU-only torch" --set trainer.gpu=1
expect_fail "trainer.gpu > 0, but the trainer image installs CPU-only torch" --set trainer.gpu=1 --set trainer.cudaImage=true
expect_fail "seed.artifacts.nope: no specialist of that name" --set seed.enabled=true --set seed.artifacts.nope=s3://b/a
expect_fail "autoscaling: enable at most one of keda and hpa" \
  --set autoscaling.keda.enabled=true --set autoscaling.hpa.enabled=true
# ... and what they point to renders: RWO on one node, the CUDA trainer image, S3 with several replicas.
"$HELM" template autoannotator "$CHART" --set 'store.persistence.accessModes={ReadWriteOnce}' \
  --set store.persistence.singleNode=true > /dev/null
"$HELM" template autoannotator "$CHART" --set trainer.gpu=1 --set trainer.cudaImage=true \
  --set image.trainerTag=0.1.0-trainer-cuda > /dev/null
rendered="$("$HELM" template autoannotator "$CHART" --show-only templates/reviewer.yaml --set reviewer.replicas=2 \
  --set reviewer.persistence.enabled=false)"
grep -qE "^  replicas: 2$" <<<"$rendered" || { echo "reviewer.replicas=2 in llm mode did not render 2 replicas" >&2; exit 1; }

step "alert thresholds from values reach the PrometheusRule"
rendered="$("$HELM" template autoannotator "$CHART" --show-only templates/monitoring.yaml \
  --set monitoring.prometheusRule.enabled=true --set-json 'monitoring.prometheusRule.thresholds={"consumerLag":
  777, "rejectedRatio": 0.123, "e2eLatencyP99Seconds": 321, "reviewQueuePending": 42, "llmSpendPerHourUsd": 3.5}')"
for want in "consumer_lag:sum > 777" "rejected_share:ratio5m > 0.123" "p99_10m > 321" \
            '{status="open"}) > 42' "rate15m > 3.5"; do
  grep -qF -- "$want" <<<"$rendered" || { echo "threshold not rendered: $want" >&2; exit 1; }
done

step "promtool check rules / test rules"
promtool check rules "$DEPLOY_DIR/prometheus/autoannotator.rules.yaml"
(cd "$DEPLOY_DIR/prometheus" && promtool test rules autoannotator.rules.test.yaml)

if [ "$LIVE" = 1 ]; then
  step "dashboard queries against a real Prometheus scraping a pipeline run"
  "$PY" "$DEPLOY_DIR/live_check.py" --require-data  # every panel must return data, not only parse
fi
step "deploy-check passed"
