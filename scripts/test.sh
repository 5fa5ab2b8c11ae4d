#!/usr/bin/env bash
# Everything CI checks: formatting, lints, crate layering, the Prometheus config and alert rules
# (promtool), and every test (unit, storage conformance, end-to-end against a started `chorus`
# process, and a real Prometheus scraping it).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh

echo "== fmt" && cargo fmt --all -- --check
echo "== clippy" && cargo clippy --workspace --all-targets -- -D warnings

echo "== layering: chorus-types, chorus-streams and chorus-api stay pure"
for crate in chorus-types chorus-streams chorus-api; do
  if cargo tree -p "$crate" -e normal --prefix none | grep -Eq '^(rocksdb|tonic|axum|tokio) '; then
    echo "$crate must not depend on rocksdb, tonic, axum or tokio" >&2
    cargo tree -p "$crate" -e normal | grep -E 'rocksdb|tonic|axum|tokio' >&2
    exit 1
  fi
done

echo "== deploy: Prometheus config, alert rules and their unit tests"
# promtool checks the files here; the prometheus server is what t50_prometheus scrapes with.
if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1; then
  echo "installing prometheus (promtool and the server the scrape test starts)..." >&2
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq prometheus >/dev/null
fi
promtool check config deploy/prometheus.yml
promtool check rules deploy/alerts.yml
promtool test rules deploy/alerts.test.yml
# deploy/k8s/prometheus-scrape.yml uses kubernetes_sd_configs, which Debian's promtool is built
# without; t52_deploy_files parses it instead. The manifests build with kustomize when kubectl
# is at hand (no API server is needed for that).
if command -v kubectl >/dev/null 2>&1; then
  kubectl kustomize deploy/k8s >/dev/null && echo "kubectl kustomize deploy/k8s: ok"
fi

echo "== deploy: Kubernetes manifests against the API schemas"
# kubernetes-validate (PyPI) carries the Kubernetes JSON schemas, so no API server is needed.
TOOLS="$HOME/.cache/chorus-tools"
if [ ! -x "$TOOLS/venv/bin/kubernetes-validate" ]; then
  echo "installing kubernetes-validate into $TOOLS/venv..." >&2
  if ! python3 -m venv "$TOOLS/venv" >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv "$TOOLS/venv"
  fi
  "$TOOLS/venv/bin/pip" install -q kubernetes-validate==1.37.0
fi
"$TOOLS/venv/bin/kubernetes-validate" --strict deploy/k8s/nodes.yaml deploy/k8s/edges.yaml

echo "== layering: the client SDK stays light (no storage, raft or server crates)"
if cargo tree -p chorus-client -e normal --prefix none | grep -Eq '^(rocksdb|librocksdb-sys|openraft|chorus-storage|chorus-node|chorus-edge|axum) '; then
  echo "chorus-client must not depend on storage, raft or server crates" >&2
  exit 1
fi

echo "== tests"
# The end-to-end tests start the built binary.
cargo build --workspace --bins
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast
else
  cargo test --workspace --no-fail-fast
fi

echo "== chaos: faults against a real 3-node cluster (chaos-tests/)"
./scripts/chaos.sh
