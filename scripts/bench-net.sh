#!/usr/bin/env bash
# make bench-net (issue 12): throughput and finality of 4 validators + 1 full node on loopback.
#
#  1. builds release,
#  2. measures the raw k256 verify rate on one core (issue 22's fair limit = raw x (cores -
#     generator cores) / 5 verifying nodes; issue 12's raw x cores / 4 printed beside it),
#  3. creates a testnet with BENCH_NET_GENESIS_ACCOUNTS extra funded accounts in genesis,
#  4. phase "default": rising rates until committed TPS grows < 5% (perf profile of node0
#     during each step; the report shows the best step's),
#  5. at the best rate of 4: the default again, one phase per optimisation switched off, all
#     of them off, then the default once more (a control for drift): same chain, all five
#     nodes restarted per phase,
#  6. writes bench/network.md + bench/network.json (scripts/bench_net_report.py).
# The testnet is always stopped on exit; the bench fails if any step forks or loses a tx.
# Env: BENCH_NET_RATES (1000,1500,1750,2000,2500,3000,3500,4000,5000) BENCH_NET_DURATION (20)
#      BENCH_NET_GENESIS_ACCOUNTS (1000000) BENCH_NET_BASE_IP (127.0.60.2)
#      BENCH_NET_OUT (bench) BENCH_NET_ABLATIONS=0 skips step 5, BENCH_NET_KEEP_DIR=1 keeps the dir.
#      BENCH_NET_BATCH (256): `tally bench --batch N`, N txs per POST /v1/txs/batch, signed
#      before each step (0: one POST /v1/txs per tx, signed as it goes; measured as a
#      phase of its own either way).
set -euo pipefail
cd "$(dirname "$0")/.."
# The Makefile's build variables (target dir, the prebuilt RocksDB), also when this script
# runs on its own: other values would make librocksdb-sys build again.
if [ -z "${ROCKSDB_LIB_DIR:-}" ]; then
  eval "$(make -s env)"
  bash scripts/bootstrap.sh
fi
CARGO="${CARGO:-cargo}"
BASE_IP="${BENCH_NET_BASE_IP:-127.0.60.2}"
RATES="${BENCH_NET_RATES:-1000,1500,1750,2000,2500,3000,3500,4000,5000}"
DURATION="${BENCH_NET_DURATION:-20}"
GENESIS_ACCOUNTS="${BENCH_NET_GENESIS_ACCOUNTS:-1000000}"
ABLATIONS="${BENCH_NET_ABLATIONS:-1}"
OUT="${BENCH_NET_OUT:-bench}"
BATCH="${BENCH_NET_BATCH:-256}"
REL="$CARGO_TARGET_DIR/release"
T0=$(date +%s)
# What the binaries are built from (a dirty tree outside bench/ is marked).
COMMIT="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
git diff --quiet HEAD -- . ':!bench' 2>/dev/null || COMMIT="$COMMIT+uncommitted"
DRIVER=(python3 scripts/bench_net_report.py)

DIR=$(mktemp -d /tmp/tally-bench-net.XXXXXX)
mkdir -p "$DIR/bin" "$DIR/phases"

echo "== build: release"
make --no-print-directory release
cp "$REL/tallyd" "$DIR/bin/tallyd"
cp "$REL/tally" "$DIR/bin/tally"
TALLYD="$DIR/bin/tallyd"

echo "== raw k256 verify rate (ledger bench binary, first figure only)"
BENCH_BIN=$($CARGO bench -p ledger --bench ledger --no-run --message-format=json 2>/dev/null |
  python3 -c 'import sys,json
for l in sys.stdin:
    try: m=json.loads(l)
    except ValueError: continue
    if m.get("reason")=="compiler-artifact" and m.get("executable") and m["target"]["name"]=="ledger" and "bench" in m["target"]["kind"]: print(m["executable"])' | tail -1)
[ -x "$BENCH_BIN" ] || { echo "error: ledger bench binary not found" >&2; exit 1; }
RAW=$(python3 - "$BENCH_BIN" <<'PY'
import re, subprocess, sys
p = subprocess.Popen([sys.argv[1], "--bench"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
rate = None
try:
    for line in p.stdout:
        m = re.search(r"raw k256 verify, one core:\s*([\d,.]+)\s*/s", line)
        if m:
            rate = float(m.group(1).replace(",", ""))
            break
finally:
    p.kill(); p.wait()
if rate is None:
    sys.exit("error: no 'raw k256 verify' line from the ledger bench")
print(rate)
PY
)
echo "   raw k256 verify, one core: $RAW /s; nproc $(nproc)"

SUP_PID=""
stop_net() {
  [ -n "$SUP_PID" ] || return 0
  "$TALLYD" testnet stop --dir "$DIR" >/dev/null 2>&1 || true
  for _ in $(seq 1 60); do kill -0 "$SUP_PID" 2>/dev/null || break; sleep 0.5; done
  kill -KILL "$SUP_PID" 2>/dev/null || true
  SUP_PID=""
}
cleanup() {
  set +e
  stop_net
  if [ "${BENCH_NET_KEEP_DIR:-0}" = 1 ]; then echo "testnet dir kept: $DIR"; else rm -rf "$DIR"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

height() {
  curl -sf "http://$1:26657/v1/blocks/latest" |
    python3 -c 'import sys,json; print(json.load(sys.stdin)["height"])' 2>/dev/null || echo 0
}
node_ip() { python3 -c "import ipaddress,sys; print(ipaddress.ip_address(sys.argv[1]) + int(sys.argv[2]))" "$BASE_IP" "$1"; }
LAST_IP=$(node_ip 4)

# start_net LABEL BIN [VAR=value ...]: all five nodes with that binary and environment; waits
# until node0 and the full node have each committed 3 more blocks.
start_net() {
  local label=$1 bin=$2; shift 2
  local h0 log; h0=$(height "$BASE_IP")
  log="$DIR/start-$(ls "$DIR/phases" | wc -l).log"
  env "$@" "$bin" testnet start --dir "$DIR" --non-interactive >"$log" 2>&1 &
  SUP_PID=$!
  local t=0
  while :; do
    local a b; a=$(height "$BASE_IP"); b=$(height "$LAST_IP")
    if [ "$a" -ge $((h0 + 3)) ] && [ "$b" -ge $((h0 + 3)) ]; then break; fi
    kill -0 "$SUP_PID" 2>/dev/null || { echo "error: testnet exited" >&2; tail -20 "$log" >&2; exit 1; }
    t=$((t + 1))
    if [ $t -ge 1200 ]; then echo "error: no blocks after 10 min" >&2; tail -20 "$log" >&2; exit 1; fi
    if [ $((t % 20)) = 0 ]; then echo "   waiting for blocks ($((t / 2)) s; node0 at $a, node4 at $b)"; fi
    sleep 0.5
  done
  echo "   $label: up at height $(height "$BASE_IP")"
}

# phase LABEL RATES BIN [VAR=value ...] [-- driver args]
phase() {
  local label=$1 rates=$2 bin=$3; shift 3
  local envs=() extra=()
  while [ $# -gt 0 ]; do
    if [ "$1" = "--" ]; then shift; extra=("$@"); break; fi
    envs+=("$1"); shift
  done
  echo "== phase: $label (rates $rates)"
  start_net "$label" "$bin" "${envs[@]}"
  local file="$DIR/phases/$(printf '%02d' "$(ls "$DIR/phases" | wc -l)").json"
  "${DRIVER[@]}" drive --dir "$DIR" --tally "$DIR/bin/tally" --raw "$RAW" --label "$label" \
    --rates "$rates" --duration "$DURATION" --batch "$BATCH" --out-json "$file" "${extra[@]}" || PHASE_FAILED=1
  stop_net
}
PHASE_FAILED=0

echo "== testnet: 4 validators + 1 full node on $BASE_IP.. in $DIR, $GENESIS_ACCOUNTS genesis accounts"
INIT_ARGS=(--validators 4 --full-nodes 1 --dir "$DIR" --base-ip "$BASE_IP" --accounts 4)
[ "$GENESIS_ACCOUNTS" -gt 0 ] && INIT_ARGS+=(--genesis-accounts "$GENESIS_ACCOUNTS")
TG=$(date +%s)
"$TALLYD" testnet init "${INIT_ARGS[@]}"
echo "   genesis written in $(( $(date +%s) - TG )) s ($(du -h "$DIR/genesis.json" | cut -f1))"

DEFAULT="default: batch submit, compact proposals, tx gossip batches, anonymous gossip, verify-once cache, 5 resident tree levels, no timeout_commit wait while busy"
phase "$DEFAULT" "$RATES" "$TALLYD" -- --stop-when-flat --profile
BEST=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["best_rate"])' "$DIR/phases/00.json")
if [ "$ABLATIONS" = 1 ]; then
  # One switch per lever (issue 22: each measured on and off in the same run).
  SIGS=TALLY_P2P_GOSSIP_AUTHOR_SIGNATURES=true
  NOCACHE=TALLY_MEMPOOL_REUSE_VERIFIED_SIGNATURES=false
  NOBATCH=TALLY_P2P_TX_BATCH_MS=0
  FULLPROP=TALLY_CONSENSUS_COMPACT_PROPOSALS=false
  TREE4=TALLY_STORAGE_TREE_CACHE_LEVELS=4
  WAIT=TALLY_CONSENSUS_SKIP_TIMEOUT_COMMIT_WHEN_BUSY=false
  ONEBYONE=(-- --batch 0)
  phase "default (re-measured)" "$BEST" "$TALLYD"
  phase "no batch submit (one POST /v1/txs per tx, signed during the step)" "$BEST" "$TALLYD" "${ONEBYONE[@]}"
  phase "full proposals (no compact proposals)" "$BEST" "$TALLYD" "$FULLPROP"
  phase "no tx gossip batching (one gossip message per tx)" "$BEST" "$TALLYD" "$NOBATCH"
  phase "libp2p author signatures on gossip" "$BEST" "$TALLYD" "$SIGS"
  phase "no verify-once cache (blocks re-verify every signature)" "$BEST" "$TALLYD" "$NOCACHE"
  phase "state tree: 4 resident levels instead of 5" "$BEST" "$TALLYD" "$TREE4"
  phase "timeout_commit waited out under load too" "$BEST" "$TALLYD" "$WAIT"
  phase "threads sized to the box: 1 tokio worker + 1 verify thread per node (not the default)" "$BEST" "$TALLYD" \
    TALLY_RUNTIME_WORKER_THREADS=1 TALLY_RUNTIME_VERIFY_THREADS=1
  phase "all of the above off" "$BEST" "$TALLYD" "$FULLPROP" "$NOBATCH" "$SIGS" "$NOCACHE" "$TREE4" "$WAIT" "${ONEBYONE[@]}"
  phase "default again (control)" "$BEST" "$TALLYD"
fi

mkdir -p "$OUT"
NOTES="$OUT/network-notes.md"
[ -f "$NOTES" ] || NOTES=""
PHASES=$(ls "$DIR"/phases/*.json | paste -sd, -)
"${DRIVER[@]}" render --phases "$PHASES" --raw "$RAW" --started "$T0" --duration "$DURATION" \
  --genesis-accounts "$GENESIS_ACCOUNTS" --base-ip "$BASE_IP" \
  --commit "$COMMIT" \
  --out-json "$OUT/network.json" --out-md "$OUT/network.md" --notes "$NOTES" && rc=0 || rc=$?
echo "== wrote $OUT/network.md and $OUT/network.json ($(( $(date +%s) - T0 )) s in all)"
[ "$PHASE_FAILED" = 0 ] || { echo "error: a phase saw a fork or a lost transaction (see the report)" >&2; exit 1; }
exit $rc
