#!/usr/bin/env bash
# Fresh-clone check (issue 16): what a new user gets from the README's two commands.
#
# Clones this repository (HEAD, or --ref REF: committed work only) into a temporary
# directory and runs, with an empty temporary HOME -- so an empty ~/.cache/tally: no target
# directory, no prebuilt RocksDB -- and only the Rust toolchain and the crate registry cache
# reused (CARGO_HOME, RUSTUP_HOME):
#   1. make test
#   2. make testnet, in the background and without a terminal, until every node answers
#      /v1/status with a height > 5; then SIGINT to its process group (what Ctrl-C sends)
#      and a check that the supervisor and every node process are gone
#   3. with --bench-build: `cargo bench -p ledger --bench ledger --no-run`, the compile
#      step of `make bench-net`, with make's build variables
# and prints each step's duration and whether RocksDB's C++ was compiled in it: by the
# one-per-machine prebuild (scripts/rocksdb-prebuild.sh, its own log line) or in-tree by
# librocksdb-sys (a librocksdb.a in the target directory's build outputs).
#
# The testnet uses the fixed addresses 127.0.0.2-6 (ports 26656, 26657, 26660): nothing
# else may run a testnet there meanwhile (checked before the run).
#
# Usage: scripts/fresh-clone-check.sh [--ref REF] [--bench-build] [--keep] [--skip-test]
#   --keep       keep the temporary clone, HOME and target directory (printed)
#   --skip-test  leave out make test (to check the testnet part alone)
# Step logs go to $FRESH_CLONE_LOGS (default: a new /tmp/tally-fresh-logs.XXXXXX), kept.
set -euo pipefail

ref=HEAD
keep=0
bench_build=0
skip_test=0
while [ $# -gt 0 ]; do
  case "$1" in
    --ref) ref="$2"; shift 2 ;;
    --keep) keep=1; shift ;;
    --bench-build) bench_build=1; shift ;;
    --skip-test) skip_test=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "fresh-clone-check: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

src=$(git -C "$(dirname "$0")/.." rev-parse --show-toplevel)
sha=$(git -C "$src" rev-parse --verify "$ref^{commit}")
shared="$src/../shared"
HEIGHT=5
BUILD_DEADLINE=${FRESH_CLONE_BUILD_DEADLINE:-4500}  # s for make testnet's release build
HEIGHT_DEADLINE=${FRESH_CLONE_HEIGHT_DEADLINE:-300} # s from the banner to height > 5
STOP_DEADLINE=60                                    # s from SIGINT to make's exit

# ---- preflight: the testnet's fixed addresses must be free ---------------------------
busy=$(ss -Hltn 2>/dev/null | awk '{ print $4 }' | grep -E '^127\.0\.0\.[2-6]:(26656|26657|26660)$' || true)
if [ -n "$busy" ]; then
  echo "fresh-clone-check: a testnet already listens on $(echo "$busy" | tr '\n' ' ')- stop it first" >&2
  exit 1
fi

tmp=$(mktemp -d /tmp/tally-fresh.XXXXXX)
logs=${FRESH_CLONE_LOGS:-$(mktemp -d /tmp/tally-fresh-logs.XXXXXX)}
mkdir -p "$logs"
testnet_pid=""
step_pid=""

# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
  local rc=$?
  # A step still running (the script was interrupted): its process group.
  for p in "$testnet_pid" "$step_pid"; do
    if [ -n "$p" ] && kill -0 "$p" 2>/dev/null; then
      kill -INT -- "-$p" 2>/dev/null || kill -INT "$p" 2>/dev/null || true
      timeout 30 tail --pid="$p" -f /dev/null || kill -KILL -- "-$p" 2>/dev/null || true
    fi
  done
  if [ "$keep" = 1 ]; then
    echo "kept: $tmp (clone $tmp/tally, HOME $tmp/home)"
  else
    rm -rf "$tmp"
  fi
  echo "logs: $logs"
  exit "$rc"
}
trap cleanup EXIT
trap 'echo "fresh-clone-check: command failed at line $LINENO" >&2' ERR
trap 'exit 130' INT
trap 'exit 143' TERM

real_home=$HOME
export CARGO_HOME="${CARGO_HOME:-$real_home/.cargo}"
export RUSTUP_HOME="${RUSTUP_HOME:-$real_home/.rustup}"
export HOME="$tmp/home"
mkdir -p "$HOME"
# Whatever the caller's shell had: the Makefile's defaults under the new HOME apply.
unset CARGO_TARGET_DIR ROCKSDB_LIB_DIR ROCKSDB_STATIC ROCKSDB_COMPILE CARGO_BUILD_TARGET_DIR
target="$HOME/.cache/tally/target"

clone="$tmp/tally"
git clone --quiet --no-checkout "$src" "$clone"
git -C "$clone" -c advice.detachedHead=false checkout --quiet --detach "$sha"
if [ -d "$shared" ]; then
  ln -s "$(cd "$shared" && pwd)" "$tmp/shared"
else
  echo "fresh-clone-check: warning: no $shared; tests that read ../shared/vectors will fail" >&2
fi

echo "fresh-clone-check: $(git -C "$clone" log -1 --format='%h %s' | cut -c1-90)"
echo "  clone  $clone"
echo "  HOME   $HOME (empty; CARGO_HOME=$CARGO_HOME, RUSTUP_HOME=$RUSTUP_HOME reused)"
echo "  target $target (empty)"
echo "  logs   $logs"
echo "  machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg) at the start (shared: other builds may run)"

# ---- step bookkeeping ----------------------------------------------------------------
names=()
durations=()
results=()
rocks=()
loads=()
notes=()

# A live process (not a zombie) with this pid.
alive() {
  local s
  s=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  s=${s##*) }
  [[ "$s" != [ZX]* ]]
}

fmt_secs() { printf '%dm%02ds' $(( $1 / 60 )) $(( $1 % 60 )); }

# librocksdb.a files librocksdb-sys compiled in-tree (one per profile directory).
intree_archives() {
  { find "$target" -path '*/build/librocksdb-sys-*/out/librocksdb.a' 2>/dev/null || true; } | wc -l
}

# rocksdb_summary LOG BEFORE: how RocksDB's C++ got into this step.
rocksdb_summary() {
  local log=$1 before=$2 s="" after pre secs
  pre=$(grep -c 'rocksdb-prebuild: compiling RocksDB' "$log" || true)
  if [ "$pre" -gt 0 ]; then
    secs=$(grep -o 'librocksdb.a ready in [0-9]* s' "$log" | grep -o '[0-9]*' | tail -1 || true)
    s="yes: prebuild${secs:+ $(fmt_secs "$secs")}"
  fi
  after=$(intree_archives)
  if [ "$after" -gt "$before" ]; then
    s="${s:+$s; }yes: in-tree x$((after - before))"
  fi
  echo "${s:-no (links the prebuilt archive)}"
}

# Waits for pid (a background job) with a progress line every 60 s; the mean 1-minute
# load average over the wait goes to $load_mean.
load_mean=""
wait_progress() {
  local pid=$1 name=$2 log=$3 t0=$4 sum=0 n=0 last
  while ! timeout 60 tail --pid="$pid" -f /dev/null; do
    sum=$(awk -v s="$sum" '{ print s + $1 }' /proc/loadavg)
    n=$((n + 1))
    last=$(grep -E '^ *(Compiling|Finished|Running|Starting|rocksdb-prebuild|bootstrap)' "$log" | tail -1 | cut -c1-80 || true)
    echo "  [$name] $(fmt_secs $(( $(date +%s) - t0 ))) load $(cut -d' ' -f1 /proc/loadavg): ${last:-...}"
  done
  load_mean=$(awk -v s="$sum" -v n="$n" 'BEGIN { if (n) printf "%.1f", s / n; else print "-" }')
}

record() { # name secs result rocksdb load note
  names+=("$1"); durations+=("$(fmt_secs "$2")"); results+=("$3"); rocks+=("$4"); loads+=("$5"); notes+=("$6")
}

failed=0

# run_step NAME CMD...: in the clone, stdin closed, output to $logs/NAME.log.
run_step() {
  local name=$1 log="$logs/$1.log" t0 rc=0 before note=""
  shift
  before=$(intree_archives)
  echo "== $name: $*"
  t0=$(date +%s)
  # Its own process group (job control for this job), so cleanup can stop all of it.
  set -m
  (cd "$clone" && exec "$@") </dev/null >"$log" 2>&1 &
  step_pid=$!
  set +m
  wait_progress "$step_pid" "$name" "$log" "$t0"
  wait "$step_pid" || rc=$?
  step_pid=""
  local secs=$(( $(date +%s) - t0 ))
  local summary
  summary=$(grep -E '^ *Summary \[' "$log" | tail -1 | sed 's/^ *//' || true)
  [ -n "$summary" ] && note="$summary"
  note="${note:+$note; }$(grep -c 'Compiling librocksdb-sys' "$log" || true)x 'Compiling librocksdb-sys' (Rust bindings)"
  local result=ok
  if [ "$rc" -ne 0 ]; then
    result="FAILED ($rc)"
    failed=1
    tail -n 30 "$log" | sed 's/^/    /'
  fi
  record "$name" "$secs" "$result" "$(rocksdb_summary "$log" "$before")" "$load_mean" "$note"
  echo "== $name: $result in $(fmt_secs "$secs")"
}

# ---- 1. make test ----------------------------------------------------------------------
if [ "$skip_test" = 0 ]; then
  run_step make-test make test
fi

# ---- 2. make testnet -------------------------------------------------------------------
# Height of node i from its RPC, or nothing.
height() {
  curl -s --max-time 2 "http://127.0.0.$((2 + $1)):26657/v1/status" 2>/dev/null |
    grep -o '"height":[0-9]*' | head -1 | cut -d: -f2 || true
}

testnet_step() {
  local log="$logs/make-testnet.log" before t0 t_banner t_height t_int rc=0 result=ok note
  local dir="$clone/testnet" nodes=5 hs all i h
  before=$(intree_archives)
  echo "== make-testnet: make testnet (background, no terminal; SIGINT once every node is at height > $HEIGHT)"
  t0=$(date +%s)
  # Job control for this job only: its own process group with SIGINT not ignored, as in a
  # terminal, so SIGINT to the group is what Ctrl-C does (make and tallyd both get it).
  set -m
  (cd "$clone" && exec make testnet) </dev/null >"$log" 2>&1 &
  testnet_pid=$!
  set +m
  # Build and init: until the banner ("Ctrl-C stops every node.") is printed.
  local sum=0 n=0 last
  while ! grep -q 'Ctrl-C stops every node.' "$log"; do
    if ! kill -0 "$testnet_pid" 2>/dev/null; then
      wait "$testnet_pid" || rc=$?
      testnet_pid=""
      tail -n 30 "$log" | sed 's/^/    /'
      failed=1
      record make-testnet "$(( $(date +%s) - t0 ))" "FAILED: exited $rc before the banner" "$(rocksdb_summary "$log" "$before")" "-" ""
      return
    fi
    if [ $(( $(date +%s) - t0 )) -gt "$BUILD_DEADLINE" ]; then
      failed=1
      record make-testnet "$(( $(date +%s) - t0 ))" "FAILED: no banner within ${BUILD_DEADLINE}s" "$(rocksdb_summary "$log" "$before")" "-" ""
      return
    fi
    if [ $(( ($(date +%s) - t0) / 60 )) -gt "$n" ]; then
      n=$((n + 1))
      sum=$(awk -v s="$sum" '{ print s + $1 }' /proc/loadavg)
      last=$(grep -E '^ *(Compiling|Finished|rocksdb-prebuild|bootstrap)' "$log" | tail -1 | cut -c1-80 || true)
      echo "  [make-testnet] $(fmt_secs $(( $(date +%s) - t0 ))) load $(cut -d' ' -f1 /proc/loadavg): ${last:-...}"
    fi
    timeout 2 tail --pid="$testnet_pid" -f /dev/null || true
  done
  t_banner=$(date +%s)
  local load
  load=$(awk -v s="$sum" -v n="$n" 'BEGIN { if (n) printf "%.1f", s / n; else print "-" }')
  echo "  [make-testnet] banner after $(fmt_secs $((t_banner - t0))); waiting for height > $HEIGHT on all $nodes nodes"
  # Every node above HEIGHT, read over RPC.
  while :; do
    all=1
    hs=""
    for ((i = 0; i < nodes; i++)); do
      h=$(height "$i")
      hs="$hs ${h:--}"
      if [ -z "$h" ] || [ "$h" -le "$HEIGHT" ]; then all=0; fi
    done
    [ "$all" = 1 ] && break
    if ! kill -0 "$testnet_pid" 2>/dev/null || [ $(( $(date +%s) - t_banner )) -gt "$HEIGHT_DEADLINE" ]; then
      echo "  [make-testnet] heights:$hs" >&2
      tail -n 30 "$log" | sed 's/^/    /'
      failed=1
      record make-testnet "$(( $(date +%s) - t0 ))" "FAILED: not all at height > $HEIGHT (heights:$hs)" "$(rocksdb_summary "$log" "$before")" "$load" ""
      return
    fi
    timeout 1 tail --pid="$testnet_pid" -f /dev/null || true
  done
  t_height=$(date +%s)
  echo "  [make-testnet] heights:$hs after $(fmt_secs $((t_height - t_banner))) more; SIGINT to make's process group"
  "$target/release/tallyd" testnet status --dir "$dir" >"$logs/testnet-status.txt" 2>&1 || true
  local pids=() p
  for ((i = 0; i < nodes; i++)); do
    p=$(cat "$dir/node$i/pid" 2>/dev/null || true)
    [ -n "$p" ] && pids+=("$p")
  done
  local sup
  sup=$(cat "$dir/supervisor.pid" 2>/dev/null || true)
  t_int=$(date +%s)
  kill -INT -- "-$testnet_pid"
  if ! timeout "$STOP_DEADLINE" tail --pid="$testnet_pid" -f /dev/null; then
    failed=1
    result="FAILED: make testnet still runs ${STOP_DEADLINE}s after SIGINT"
  fi
  wait "$testnet_pid" || rc=$?
  testnet_pid=""
  local t_stop
  t_stop=$(date +%s)
  # Every node process (and the supervisor) gone: no live process, by pid or by a command
  # line naming the testnet directory.
  local left=() c cmd
  for p in "${pids[@]}" $sup; do
    if alive "$p"; then left+=("$p"); fi
  done
  for c in /proc/[0-9]*/cmdline; do
    p=${c#/proc/}
    p=${p%/cmdline}
    cmd=$(tr '\0' ' ' <"$c" 2>/dev/null || true)
    if [[ "$cmd" == *"$dir"* ]] && alive "$p" && [[ " ${left[*]} " != *" $p "* ]]; then
      left+=("$p")
    fi
  done
  if [ ${#left[@]} -gt 0 ]; then
    failed=1
    result="FAILED: left running after SIGINT: ${left[*]}"
  elif [ ${#pids[@]} -ne "$nodes" ]; then
    failed=1
    result="FAILED: ${#pids[@]} node pid files, expected $nodes"
  fi
  note="build+init $(fmt_secs $((t_banner - t0))), to height > $HEIGHT $(fmt_secs $((t_height - t_banner))), SIGINT to exit $(fmt_secs $((t_stop - t_int))) (make exit $rc); ${#pids[@]} nodes + supervisor gone: $([ ${#left[@]} -eq 0 ] && echo yes || echo no)"
  note="$note; $(grep -c 'Compiling librocksdb-sys' "$log" || true)x 'Compiling librocksdb-sys' (Rust bindings)"
  record make-testnet "$((t_stop - t0))" "$result" "$(rocksdb_summary "$log" "$before")" "$load" "$note"
  echo "== make-testnet: $result in $(fmt_secs $((t_stop - t0)))"
}
testnet_step

# ---- 3. the compile step of make bench-net ---------------------------------------------
if [ "$bench_build" = 1 ]; then
  # shellcheck disable=SC2016 # expanded by that bash, in the clone
  run_step bench-build bash -c 'build_env=$(make -s env) && eval "$build_env" && cargo bench -p ledger --bench ledger --no-run'
fi

# ---- summary ---------------------------------------------------------------------------
echo
echo "fresh clone of $(git -C "$clone" log -1 --format=%h), $(nproc) cores, shared machine (mean 1-min load average per step shown)"
printf '%-13s %-9s %-10s %-42s %s\n' step duration load "RocksDB C++ compiled" result
for i in "${!names[@]}"; do
  printf '%-13s %-9s %-10s %-42s %s\n' "${names[$i]}" "${durations[$i]}" "${loads[$i]}" "${rocks[$i]}" "${results[$i]}"
  [ -n "${notes[$i]}" ] && echo "              ${notes[$i]}"
done
exit "$failed"
