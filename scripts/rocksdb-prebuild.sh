#!/usr/bin/env bash
# Builds RocksDB's C++ once per machine and librocksdb-sys version, into
# $HOME/.cache/tally/rocksdb/<version>/librocksdb.a. The Makefile points every cargo
# profile at it (ROCKSDB_LIB_DIR + ROCKSDB_STATIC, which librocksdb-sys's build script
# honours), so debug, release and bench builds link one archive instead of each compiling
# RocksDB again (~12 minutes of two cores each).
#
# The archive is built by librocksdb-sys's own build script (same sources, same flags,
# lz4 on as in the workspace) from a throw-away crate that depends on exactly the version
# pinned in Cargo.lock. Prints the directory on stdout; progress goes to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."

version=$(awk '/^name = "librocksdb-sys"$/ { getline; gsub(/"/, "", $3); print $3; exit }' Cargo.lock)
if [ -z "$version" ]; then
  echo "rocksdb-prebuild: librocksdb-sys is not in Cargo.lock" >&2
  exit 1
fi
cache="${TALLY_CACHE_DIR:-$HOME/.cache/tally}"
dir="${ROCKSDB_LIB_DIR:-$cache/rocksdb/$version}"
if [ -f "$dir/librocksdb.a" ]; then
  echo "$dir"
  exit 0
fi

# One prebuild at a time per cache (two make runs started together): the second waits
# for the first and then finds the archive.
mkdir -p "$cache"
exec 9>"$cache/rocksdb-prebuild.lock"
if ! flock -n 9; then
  echo "rocksdb-prebuild: another prebuild is running; waiting for it" >&2
  flock 9
fi
if [ -f "$dir/librocksdb.a" ]; then
  echo "$dir"
  exit 0
fi

work=$(mktemp -d)
build="$cache/rocksdb-build"
pid=""
cleanup() {
  # cargo, its build script and the compilers: their own process group (setsid below).
  if [ -n "$pid" ]; then kill -- "-$pid" 2>/dev/null || true; fi
  rm -rf "$work" "$build"
}
trap cleanup EXIT
mkdir -p "$work/src"
cat > "$work/Cargo.toml" <<TOML
[package]
name = "tally-rocksdb-prebuild"
version = "0.0.0"
edition = "2021"
publish = false

[dependencies]
librocksdb-sys = { version = "=$version", features = ["lz4"] }

[workspace]
TOML
echo 'fn main() {}' > "$work/src/main.rs"
# The workspace's lock file, so lz4-sys, bindgen and cc are the versions the workspace uses.
cp Cargo.lock "$work/Cargo.lock"

echo "rocksdb-prebuild: compiling RocksDB $version once for every profile (about 12 minutes on 2 cores; later builds link it)" >&2
start=$(date +%s)
# No ROCKSDB_LIB_DIR here: this is the build that makes the archive. In the background,
# with a line every two minutes, so a long silent step is visibly alive.
setsid env -u ROCKSDB_LIB_DIR -u ROCKSDB_STATIC -u ROCKSDB_COMPILE CARGO_TARGET_DIR="$build" \
  cargo build --release --quiet --manifest-path "$work/Cargo.toml" -p librocksdb-sys >&2 &
pid=$!
while ! timeout 120 tail --pid="$pid" -f /dev/null; do
  echo "rocksdb-prebuild: still compiling ($(( ($(date +%s) - start) / 60 )) min)" >&2
done
rc=0
wait "$pid" || rc=$?
pid=""
if [ "$rc" -ne 0 ]; then
  echo "rocksdb-prebuild: cargo build of librocksdb-sys failed (exit $rc)" >&2
  exit "$rc"
fi
archive=$(find "$build/release/build" -path "*/librocksdb-sys-*/out/librocksdb.a" 2>/dev/null | head -n1)
if [ -z "$archive" ]; then
  echo "rocksdb-prebuild: the build finished without producing librocksdb.a" >&2
  exit 1
fi
mkdir -p "$dir"
cp "$archive" "$dir/librocksdb.a.tmp"
mv "$dir/librocksdb.a.tmp" "$dir/librocksdb.a"
echo "rocksdb-prebuild: $dir/librocksdb.a ready in $(( $(date +%s) - start )) s" >&2
echo "$dir"
