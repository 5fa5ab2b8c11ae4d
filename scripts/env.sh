# Sourced by scripts/dev.sh and scripts/test.sh: makes a fresh Debian machine with only the
# Rust toolchain able to build Chorus, and shares one build between running and testing.

# RocksDB's build runs bindgen, which needs libclang. Install it when missing.
# (libclang-cpp, which some machines have, is not what bindgen loads.)
if ! ls /usr/lib/llvm-*/lib/libclang.so* /usr/lib/llvm-*/lib/libclang-[0-9]*.so* >/dev/null 2>&1 \
   && ! ldconfig -p 2>/dev/null | grep -Eq 'libclang(-[0-9.]+)?\.so'; then
  echo "installing libclang-dev (needed to build RocksDB)..." >&2
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq libclang-dev >/dev/null
fi

# One target dir outside the checkout: RocksDB's C++ is compiled once and reused by
# `chorus dev`, the tests, the benches and CI runs on the same machine.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/chorus-target}"
