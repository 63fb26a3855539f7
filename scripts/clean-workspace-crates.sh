#!/usr/bin/env bash
# Removes the artifacts of this workspace's own crates from $CARGO_TARGET_DIR (every
# profile), keeping the dependencies' (RocksDB, libp2p) warm: `cargo clean -p` for each
# workspace package. Used by .ci/run (a warm target directory must not hide a missing
# build step) and by scripts/upgrade-test.sh (the previous release's build leaves its
# workspace crates under the same artifact names as ours: cargo hashes a path package by
# its path relative to the workspace root, so two checkouts of one workspace collide, and
# a file older than the other checkout's artifact would look fresh).
set -euo pipefail
CARGO=${CARGO:-cargo}
mapfile -t packages < <($CARGO tree --workspace --depth 0 --prefix none --format '{p}' | awk 'NF { print $1 }' | sort -u)
if [ ${#packages[@]} -eq 0 ]; then
  echo "clean-workspace-crates: no workspace packages found" >&2
  exit 1
fi
echo "cargo clean -p ${packages[*]} (dependencies stay built)"
clean=()
for p in "${packages[@]}"; do clean+=(-p "$p"); done
$CARGO clean "${clean[@]}"
