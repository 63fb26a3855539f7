#!/usr/bin/env bash
# Installs what a fresh Debian machine lacks to build and test Tally. Idempotent: does
# nothing (quickly) when everything is present.
set -euo pipefail

need_apt=()
command -v clang >/dev/null 2>&1 || need_apt+=(clang)
command -v g++ >/dev/null 2>&1 || need_apt+=(g++)
command -v make >/dev/null 2>&1 || need_apt+=(make)
# librocksdb-sys runs bindgen, which loads libclang at build time.
if ! ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1 && ! ls /usr/lib/x86_64-linux-gnu/libclang*.so* >/dev/null 2>&1; then
  need_apt+=(libclang-dev)
fi
if ! dpkg -s libclang-dev >/dev/null 2>&1; then
  need_apt+=(libclang-dev)
fi

if [ ${#need_apt[@]} -gt 0 ]; then
  # shellcheck disable=SC2207
  need_apt=($(printf '%s\n' "${need_apt[@]}" | sort -u))
  echo "bootstrap: installing ${need_apt[*]} (needed to compile RocksDB)"
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
      echo "bootstrap: need root (or sudo) to apt-get install ${need_apt[*]}" >&2; exit 1
    fi
  fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# The network-fault tests (tests/it/netfaults.rs, `tallyd testnet --hosts netns`) need
# `ip` (iproute2) for namespaces, veths and bridges, `nft` for partitions inside the
# namespaces, and `faketime` for clock skew. Only root can use them, so only root installs
# them; without them those tests say why and skip.
need_net=()
command -v ip >/dev/null 2>&1 || need_net+=(iproute2)
command -v nft >/dev/null 2>&1 || need_net+=(nftables)
command -v faketime >/dev/null 2>&1 || need_net+=(faketime)
if [ ${#need_net[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    echo "bootstrap: installing ${need_net[*]} (for the network-fault tests)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_net[@]}" >/dev/null
  else
    echo "bootstrap: not root: ${need_net[*]} not installed; the network-fault tests will skip" >&2
  fi
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "bootstrap: cargo is missing; install Rust (rustup) first" >&2
  exit 1
fi
for comp in rustfmt clippy; do
  if ! cargo "${comp/rustfmt/fmt}" --version >/dev/null 2>&1; then
    echo "bootstrap: adding rustup component $comp"
    rustup component add "$comp" || { echo "bootstrap: could not add $comp" >&2; exit 1; }
  fi
done
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "bootstrap: cargo-nextest not found; installing it (one-time, a few minutes)"
  cargo install cargo-nextest --locked --quiet || echo "bootstrap: nextest unavailable; 'make test' falls back to cargo test"
fi

# RocksDB's C++, compiled once per machine for every cargo profile (see the Makefile):
# librocksdb-sys links $ROCKSDB_LIB_DIR/librocksdb.a when ROCKSDB_STATIC is set.
if [ -n "${ROCKSDB_LIB_DIR:-}" ] && [ -n "${ROCKSDB_STATIC:-}" ] && [ -z "${ROCKSDB_COMPILE:-}" ] &&
  [ ! -f "$ROCKSDB_LIB_DIR/librocksdb.a" ]; then
  bash "$(dirname "$0")/rocksdb-prebuild.sh" >/dev/null
fi
