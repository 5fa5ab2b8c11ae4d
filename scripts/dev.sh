#!/usr/bin/env bash
# Runs `chorus dev`: one process, RocksDB in ./chorus-data, HTTP/WebSocket on 127.0.0.1:8080.
# Extra arguments go to `chorus dev` (e.g. --listen 127.0.0.1:9000 --data /tmp/chorus).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
cargo build --bin chorus
exec "$CARGO_TARGET_DIR/debug/chorus" dev "$@"
