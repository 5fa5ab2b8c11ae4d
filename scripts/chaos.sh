#!/usr/bin/env bash
# The chaos suite (chaos-tests/, its own workspace): its checks, its checker's unit tests, the
# ~2-minute seeded short run against the `chorus` binary of the main build, and the proof that
# the checker fails a run that loses acknowledged data (every node's data deleted).
#
#   scripts/chaos.sh                 # what CI runs
#   scripts/chaos.sh --seed S ...    # one run with the given runner arguments instead
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh

# The binary under test, from the main workspace's target dir (env.sh's CARGO_TARGET_DIR).
CHORUS="$CARGO_TARGET_DIR/debug/chorus"
[ -x "$CHORUS" ] || cargo build --workspace --bins
# Its own target dir: sharing the main one would make the two workspaces rebuild each other.
export CARGO_TARGET_DIR="${CHAOS_TARGET_DIR:-$HOME/.cache/chorus-chaos-target}"
cd chaos-tests
RUNNER="$CARGO_TARGET_DIR/debug/chorus-chaos"

if [ "$#" -gt 0 ]; then
  cargo build -q
  exec "$RUNNER" --chorus "$CHORUS" "$@"
fi

echo "== chaos: fmt, clippy, checker unit tests"
cargo fmt -- --check
cargo clippy -q --all-targets -- -D warnings
cargo test -q
cargo build -q

# A seed that passes (see chaos-tests/README.md for the pinned ones); 24 faults ≈ 2 minutes.
echo "== chaos: short run"
"$RUNNER" --chorus "$CHORUS" --seed "${CHAOS_SEED:-2}" --faults 24

echo "== chaos: the checker reports a fault Chorus does not survive (every node's data deleted)"
"$RUNNER" --chorus "$CHORUS" --seed 3 --faults 4 --wipe-all --expect-violation
