#!/usr/bin/env bash
# make upgrade-test: the rolling-upgrade harness (issue 21). Builds the previous release --
# the commit named in upgrade/BASE -- in a temporary git worktree with the SAME
# CARGO_TARGET_DIR (the dependencies are reused), copies its tallyd and tally out of
# target/debug before the current tree's build puts its own there, removes the worktree
# (also on failure) and the workspace crates' artifacts it left (cargo gives both
# checkouts' crates the same artifact names, so this tree's would otherwise link BASE's),
# then builds this tree and runs tests/it/upgrade.rs with TALLY_BASE_BIN pointing at them.
#
# `scripts/upgrade-test.sh base` stops once the BASE binaries exist. The BASE binaries are kept in $CARGO_TARGET_DIR/upgrade-base/<commit>/ (one commit is
# one build: a second run skips it). TALLY_BASE_BIN=<dir with tallyd and tally> uses
# binaries built elsewhere instead.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${CARGO_TARGET_DIR:?run through make (make upgrade-test), or eval \"\$(make -s env)\" first}"
CARGO=${CARGO:-cargo}

base=$(tr -d '[:space:]' < upgrade/BASE)
if ! [[ $base =~ ^[0-9a-f]{40}$ ]]; then
  echo "upgrade/BASE: expected the previous release's full commit hash (40 hex digits), found '$base'" >&2
  exit 1
fi

if [ -z "${TALLY_BASE_BIN:-}" ]; then
  TALLY_BASE_BIN=$CARGO_TARGET_DIR/upgrade-base/$base
  if [ -x "$TALLY_BASE_BIN/tallyd" ] && [ -x "$TALLY_BASE_BIN/tally" ]; then
    echo "upgrade-test: BASE ${base:0:12} already built in $TALLY_BASE_BIN"
  else
    if ! git cat-file -e "$base^{commit}" 2>/dev/null; then
      # A shallow clone (CI may make one) lacks the release: fetch it if a remote has it.
      echo "upgrade-test: BASE ${base:0:12} is not in this clone; fetching it"
      git fetch --quiet origin "$base" 2>/dev/null || git fetch --quiet --unshallow 2>/dev/null || true
    fi
    if ! git cat-file -e "$base^{commit}" 2>/dev/null; then
      echo "upgrade/BASE: commit $base is not in this clone and no remote gave it (git fetch the release it names)" >&2
      if [ "${TALLY_UPGRADE_REQUIRED:-0}" = 1 ]; then
        exit 1
      fi
      echo "upgrade-test: SKIPPED: the rolling-upgrade tests need the previous release's commit (set TALLY_UPGRADE_REQUIRED=1 to make this an error)" >&2
      exit 0
    fi
    tmp=$(mktemp -d "${TMPDIR:-/tmp}/tally-upgrade-base.XXXXXX")
    # The worktree goes also when the build fails or is interrupted.
    cleanup() {
      git worktree remove --force "$tmp/src" 2>/dev/null || true
      rm -rf "$tmp"
      git worktree prune
    }
    trap cleanup EXIT
    trap 'exit 130' INT TERM
    git worktree add --quiet --detach "$tmp/src" "$base"
    echo "upgrade-test: building BASE ${base:0:12} in $tmp/src"
    (cd "$tmp/src" && $CARGO build --bins -p tally-node -p tally-wallet)
    # Copied now: the current tree's build below replaces target/debug/tallyd and tally.
    mkdir -p "$TALLY_BASE_BIN.partial"
    cp "$CARGO_TARGET_DIR/debug/tallyd" "$CARGO_TARGET_DIR/debug/tally" "$TALLY_BASE_BIN.partial/"
    echo "$base" > "$TALLY_BASE_BIN.partial/COMMIT"
    cleanup
    trap - EXIT INT TERM
    # The workspace crates just built are BASE's under the names of ours (see
    # clean-workspace-crates.sh): the build below must compile this tree's own. Done
    # before the binaries are filed under their commit, so a run interrupted before this
    # point builds BASE again and cleans then.
    bash scripts/clean-workspace-crates.sh
    rm -rf "$TALLY_BASE_BIN"
    mv "$TALLY_BASE_BIN.partial" "$TALLY_BASE_BIN"
  fi
fi
export TALLY_BASE_BIN
# `upgrade-test.sh base`: only the BASE binaries (make test builds them before its own
# build, so the clean above never makes it compile this tree twice).
if [ "${1:-}" = base ]; then
  exit 0
fi

# The current tree: the binaries the tests run (the same build as make test's, so after it
# this compiles nothing), then the upgrade tests one at a time (--no-capture runs them
# serially: two 5-node networks at once on two cores would stretch the block gaps measured).
# --workspace with a filter, not -p tally-tests: a one-package build unifies features
# differently and recompiled ~2 minutes' worth of crates.
$CARGO build --workspace --bins --tests
if $CARGO nextest --version >/dev/null 2>&1; then
  $CARGO nextest run --workspace --no-capture \
    -E 'package(tally-tests) & binary(it) & test(/^upgrade::/)'
else
  $CARGO test -p tally-tests --test it -- upgrade:: --nocapture --test-threads=1
fi
