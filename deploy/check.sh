#!/usr/bin/env bash
# Checks the deployment artefacts with the real tools (installed on first use by deploy/tools.sh):
#   1. the chart's copies of the rules and the dashboard are current
#   2. helm lint --strict (default values, and the full values file)
#   3. helm template (default + full values) | kubernetes-validate --strict
#   4. promtool check rules + promtool test rules
#   5. with --live: every dashboard query against a real Prometheus scraping a short pipeline run
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

step "promtool check rules / test rules"
promtool check rules "$DEPLOY_DIR/prometheus/autoannotator.rules.yaml"
(cd "$DEPLOY_DIR/prometheus" && promtool test rules autoannotator.rules.test.yaml)

if [ "$LIVE" = 1 ]; then
  step "dashboard queries against a real Prometheus scraping a pipeline run"
  "$PY" "$DEPLOY_DIR/live_check.py" --require-data  # every panel must return data, not only parse
fi
step "deploy-check passed"
