#!/usr/bin/env bash
# make bench-net (issue 12, first cut: measure, don't optimise).
# Builds release, measures the raw k256 verify rate (the limit), starts 4 validators + 1 full
# node on loopback (BENCH_NET_BASE_IP, default 127.0.60.2..6) in a fresh temp dir, drives them
# with `tally bench` at rising rates until committed TPS stops growing, and writes
# bench/network.md + bench/network.json. The testnet is always stopped on exit.
# Env: BENCH_NET_RATES (250,500,1000,1500,2000,3000) BENCH_NET_DURATION (20)
#      BENCH_NET_OUT (bench) BENCH_NET_KEEP_DIR=1 keeps the temp dir.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tally/target}"
CARGO="${CARGO:-cargo}"
BASE_IP="${BENCH_NET_BASE_IP:-127.0.60.2}"
RATES="${BENCH_NET_RATES:-250,500,1000,1500,2000,3000}"
DURATION="${BENCH_NET_DURATION:-20}"
OUT="${BENCH_NET_OUT:-bench}"
REL="$CARGO_TARGET_DIR/release"
T0=$(date +%s)

echo "== make release"
make --no-print-directory release

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

DIR=$(mktemp -d /tmp/tally-bench-net.XXXXXX)
UP_PID=""
cleanup() {
  set +e
  if [ -n "$UP_PID" ]; then
    "$REL/tallyd" testnet stop --dir "$DIR" >/dev/null 2>&1
    kill -TERM "$UP_PID" 2>/dev/null
    for _ in $(seq 1 40); do kill -0 "$UP_PID" 2>/dev/null || break; sleep 0.5; done
    kill -KILL "$UP_PID" 2>/dev/null
  fi
  if [ "${BENCH_NET_KEEP_DIR:-0}" = 1 ]; then echo "testnet dir kept: $DIR"; else rm -rf "$DIR"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "== testnet: 4 validators + 1 full node on $BASE_IP.. in $DIR"
"$REL/tallyd" testnet up --validators 4 --full-nodes 1 --dir "$DIR" --base-ip "$BASE_IP" \
  --non-interactive --accounts 4 >"$DIR/up.log" 2>&1 &
UP_PID=$!
# wait until every node has a pid file and node0 has committed a few blocks
for _ in $(seq 1 60); do
  if [ -f "$DIR/testnet.json" ] && [ -f "$DIR/node4/pid" ] &&
     h=$(curl -sf "http://$BASE_IP:26657/v1/blocks/latest" | python3 -c 'import sys,json; print(json.load(sys.stdin)["height"])' 2>/dev/null) &&
     [ "${h:-0}" -ge 3 ]; then break; fi
  kill -0 "$UP_PID" 2>/dev/null || { cat "$DIR/up.log" >&2; exit 1; }
  sleep 0.5
done
echo "   up (height ${h:-?})"

mkdir -p "$OUT"
NOTES="$OUT/network-notes.md.in"
[ -f "$NOTES" ] || NOTES=/dev/null
python3 scripts/bench_net_report.py --dir "$DIR" --tally "$REL/tally" --raw "$RAW" \
  --rates "$RATES" --duration "$DURATION" --base-ip "$BASE_IP" \
  --out-json "$OUT/network.json" --out-md "$OUT/network.md" --notes "$NOTES" && rc=0 || rc=$?
echo "== wrote $OUT/network.md and $OUT/network.json ($(( $(date +%s) - T0 )) s in all)"
exit $rc
