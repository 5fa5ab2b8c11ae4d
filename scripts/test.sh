#!/usr/bin/env bash
# Everything CI checks: formatting, lints, crate layering, and every test (unit, storage
# conformance, end-to-end against a started `chorus` process).
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

echo "== layering: the client SDK stays light (no storage, raft or server crates)"
if cargo tree -p chorus-client -e normal --prefix none | grep -Eq '^(rocksdb|librocksdb-sys|openraft|chorus-storage|chorus-node|chorus-edge|axum) '; then
  echo "chorus-client must not depend on storage, raft or server crates" >&2
  exit 1
fi

echo "== tests"
# The end-to-end tests start the built binary.
cargo build --bin chorus
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast
else
  cargo test --workspace --no-fail-fast
fi
