#!/usr/bin/env python3
"""Driver + report for `make bench-net` (issue 12), stdlib only.

Called by scripts/bench-net.sh once the testnet is up:
  bench_net_report.py --dir TESTNET_DIR --tally BIN --raw RATE --out-md F --out-json F

For each target rate it runs `tally --output json bench` against all five nodes, snapshots
every node's /metrics and /proc before and after, checks that all nodes agree on the block
hash at a common height, and stops once committed TPS grows by less than 10%.
"""
import argparse
import json
import os
import subprocess
import sys
import time
import urllib.request

CLK = os.sysconf("SC_CLK_TCK")
NPROC = os.cpu_count() or 1
VALIDATORS = 4


def http_get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


def metrics(url):
    """Parse a Prometheus text page into {name{labels}: float} (no buckets)."""
    out = {}
    try:
        text = http_get(url)
    except Exception as e:  # node down: recorded as empty
        print(f"warning: {url}: {e}", file=sys.stderr)
        return out
    for line in text.splitlines():
        if not line or line.startswith("#") or "_bucket{" in line:
            continue
        try:
            k, v = line.rsplit(" ", 1)
            out[k] = float(v)
        except ValueError:
            pass
    return out


def proc_cpu(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK  # utime + stime
    except OSError:
        return None


def proc_hwm_mib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def load_nodes(d):
    tn = json.load(open(os.path.join(d, "testnet.json")))
    nodes = []
    for i, n in enumerate(tn["nodes"]):
        pid = int(open(os.path.join(d, f"node{i}", "pid")).read().strip())
        rpc = n["rpc"] if n["rpc"].startswith("http") else "http://" + n["rpc"]
        met = n["metrics"] if n["metrics"].startswith("http") else "http://" + n["metrics"]
        if not met.rstrip("/").endswith("/metrics"):
            met = met.rstrip("/") + "/metrics"
        nodes.append({"name": n.get("name", f"node{i}"), "role": n.get("role", "?"),
                      "rpc": rpc.rstrip("/"), "metrics": met, "pid": pid})
    return nodes


def snapshot(nodes):
    return [{"m": metrics(n["metrics"]), "cpu": proc_cpu(n["pid"])} for n in nodes]


def delta(a, b, key):
    return b["m"].get(key, 0.0) - a["m"].get(key, 0.0)


def fork_check(nodes):
    heights = []
    for n in nodes:
        try:
            heights.append(json.loads(http_get(n["rpc"] + "/v1/blocks/latest"))["height"])
        except Exception:
            heights.append(None)
    live = [h for h in heights if h is not None]
    if not live:
        return {"height": None, "agree": False, "hashes": {}}
    h = min(live)
    hashes = {}
    for n in nodes:
        try:
            hashes[n["name"]] = json.loads(http_get(f"{n['rpc']}/v1/blocks/{h}"))["hash"]
        except Exception as e:
            hashes[n["name"]] = f"error: {e}"
    agree = len(set(hashes.values())) == 1 and len(hashes) == len(nodes)
    return {"height": h, "heights": heights, "agree": agree, "hash": next(iter(hashes.values())),
            "hashes": hashes if not agree else {}}


def wait_mempool_empty(nodes, limit_s=20):
    t0 = time.time()
    while time.time() - t0 < limit_s:
        if all(metrics(n["metrics"]).get("tally_mempool_txs", 0) == 0 for n in nodes):
            return True
        time.sleep(0.5)
    return False


def run_step(args, nodes, rate, raw):
    accounts = max(64, min(256, rate // 8))
    urls = ",".join(n["rpc"] for n in nodes)
    cmd = [args.tally, "--node", urls, "--keys-dir", os.path.join(args.dir, "wallet", "keys"),
           "--output", "json", "bench", "--fund-from", "account0", "--accounts", str(accounts),
           "--rate", str(rate), "--duration", f"{args.duration}s",
           "--drain-timeout", f"{args.drain}s"]
    print(f"== step: {rate} tx/s, {accounts} accounts, {args.duration} s", file=sys.stderr, flush=True)
    before = snapshot(nodes)
    t0 = time.time()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    # The generator's CPU: sampled from /proc/<pid>/stat while it runs, and exactly from
    # wait4's rusage at exit (the last /proc sample misses the final moments).
    last_proc = 0.0
    while p.poll() is None:
        c = proc_cpu(p.pid)
        if c is not None:
            last_proc = c
        time.sleep(0.2)
    out, err = p.communicate()
    wall = time.time() - t0
    after = snapshot(nodes)
    try:
        rep = json.loads(out.decode())
    except ValueError:
        rep = {"ok": False, "error": out.decode()[-500:] + err.decode()[-500:]}
    # child rusage: resource.getrusage(RUSAGE_CHILDREN) deltas (only tally is our child here)
    import resource
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    gen_cpu_total = ru.ru_utime + ru.ru_stime
    gen_cpu = gen_cpu_total - args._gen_cpu_seen
    args._gen_cpu_seen = gen_cpu_total

    n0a, n0b = before[0], after[0]
    blocks = delta(n0a, n0b, "tally_blocks_committed_total")
    txs = delta(n0a, n0b, "tally_txs_committed_total")
    ivs = delta(n0a, n0b, "tally_block_interval_seconds_sum")
    ivc = delta(n0a, n0b, "tally_block_interval_seconds_count")
    rsum = delta(n0a, n0b, "tally_consensus_rounds_per_height_sum")
    rcnt = delta(n0a, n0b, "tally_consensus_rounds_per_height_count")
    exs = delta(n0a, n0b, "tally_block_execution_seconds_sum")
    exc = delta(n0a, n0b, "tally_block_execution_seconds_count")
    cws = delta(n0a, n0b, "tally_block_commit_write_seconds_sum")
    cwc = delta(n0a, n0b, "tally_block_commit_write_seconds_count")
    rejections = {}
    for a, b in zip(before, after):
        for k in b["m"]:
            if k.startswith("tally_mempool_rejections_total{"):
                d = b["m"][k] - a["m"].get(k, 0.0)
                if d:
                    reason = k.split('reason="', 1)[1].split('"', 1)[0]
                    rejections[reason] = rejections.get(reason, 0) + int(d)
    per_node = []
    for n, a, b in zip(nodes, before, after):
        cpu = (b["cpu"] - a["cpu"]) if (a["cpu"] is not None and b["cpu"] is not None) else None
        per_node.append({"node": n["name"], "role": n["role"],
                         "cpu_s": round(cpu, 2) if cpu is not None else None,
                         "cpu_cores": round(cpu / wall, 2) if cpu is not None else None,
                         "peak_rss_mib": round(proc_hwm_mib(n["pid"]) or 0, 1),
                         "height": int(b["m"].get("tally_block_height", 0))})
    gen_cores = gen_cpu / wall if wall else 0.0
    limit = raw * NPROC / VALIDATORS
    limit_adj = raw * max(NPROC - gen_cores, 0.0) / VALIDATORS
    tps = rep.get("committed_tps") or 0.0
    lat = rep.get("latency_ms", {})
    fork = fork_check(nodes)
    step = {
        "target_rate": rate, "accounts": accounts, "duration_s": args.duration,
        "wall_s": round(wall, 1),
        "submitted": rep.get("submitted"), "submit_rate": round(rep.get("submit_rate") or 0, 1),
        "accepted": rep.get("accepted"), "committed": rep.get("committed"),
        "committed_seen_by_polling": rep.get("committed_seen_by_polling"),
        "not_committed": rep.get("not_committed"),
        "rejected": rep.get("rejected"), "rejected_by_reason_client": rep.get("rejected_by_reason", {}),
        "committed_tps": round(tps, 1),
        "ratio_to_limit": round(tps / limit, 3),
        "ratio_to_limit_minus_generator": round(tps / limit_adj, 3) if limit_adj else None,
        "finality_ms": {k: lat.get(k) for k in ("p50", "p95", "p99", "max")},
        "block_interval_s": round(ivs / ivc, 3) if ivc else None,
        "blocks": int(blocks), "txs_per_block": round(txs / blocks, 1) if blocks else None,
        "rounds_per_height": round(rsum / rcnt, 2) if rcnt else None,
        "block_execution_ms": round(1000 * exs / exc, 1) if exc else None,
        "block_commit_write_ms": round(1000 * cws / cwc, 1) if cwc else None,
        "mempool_rejections_by_reason": rejections,
        "nodes": per_node,
        "generator_cpu_s": round(gen_cpu, 2), "generator_cpu_s_proc_sampled": round(last_proc, 2),
        "generator_cores": round(gen_cores, 2),
        "limit_minus_generator_tps": round(limit_adj, 0),
        "all_accepted_committed": bool(rep.get("ok")) and rep.get("not_committed") == 0
                                  and rep.get("accepted") == rep.get("committed"),
        "bench_ok": rep.get("ok"),
        "no_fork": fork["agree"], "fork_check": fork,
    }
    if rep.get("error"):
        step["error"] = rep["error"]
    print(f"   committed {step['committed']}/{step['accepted']} accepted, {tps:.0f} TPS "
          f"({step['ratio_to_limit']:.2f}x limit), p50 {lat.get('p50')} ms p99 {lat.get('p99')} ms, "
          f"rejections {rejections}, no fork at h{fork['height']}: {fork['agree']}",
          file=sys.stderr, flush=True)
    return step


def fmt(v, nd=0):
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:,.{nd}f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def write_md(path, rep):
    s = rep["steps"]
    lim = rep["limit_tps"]
    L = []
    L.append("# Network benchmark: 4 validators + 1 full node on one machine (`make bench-net`)\n")
    L.append(f"Run {rep['started_utc']} on `{rep['host']}` ({rep['nproc']} cores), release builds, "
             f"loopback ({rep['base_ip']}..), 500 ms block time (testnet default), fresh chain, "
             f"`tally bench` against all 5 RPC endpoints, {rep['duration_s']} s per step, "
             f"load steps {rep['total_wall_s']:.0f} s (plus build, raw-rate measurement and testnet start). First cut of issue 12: measured, nothing optimised.\n")
    L.append("## The limit\n")
    L.append(f"- raw k256 verify, one core (ledger bench binary, first figure, same run): "
             f"**{rep['raw_verify_one_core']:,.0f} /s**")
    L.append(f"- limit = raw × {rep['nproc']} cores / {VALIDATORS} validators = **{lim:,.0f} TPS** "
             f"(assumes verification scales linearly across cores; every node verifies every tx once)")
    L.append(f"- 0.6 × limit = {0.6 * lim:,.0f} TPS. The load generator shares the cores: its CPU per step "
             f"is below, and the column \"ratio (−gen)\" divides by raw × (cores − generator cores) / 4.\n")
    L.append("## Per step\n")
    L.append("| target tx/s | submitted/s | committed TPS | ratio to limit | ratio (−gen) | p50 | p95 | p99 "
             "| block interval | txs/block | rounds/height | exec + write per block (node0) | mempool rejections (all nodes) | all accepted committed | no fork |")
    L.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for x in s:
        f = x["finality_ms"]
        rej = ", ".join(f"{k} {v:,}" for k, v in sorted(x["mempool_rejections_by_reason"].items())) or "0"
        L.append(f"| {x['target_rate']:,} | {fmt(x['submit_rate'])} | **{fmt(x['committed_tps'])}** | "
                 f"{x['ratio_to_limit']:.3f} | {fmt(x['ratio_to_limit_minus_generator'], 3)} | "
                 f"{fmt(f['p50'])} ms | {fmt(f['p95'])} ms | {fmt(f['p99'])} ms | "
                 f"{fmt(x['block_interval_s'], 2)} s | {fmt(x['txs_per_block'], 0)} | {fmt(x['rounds_per_height'], 2)} | "
                 f"{fmt(x['block_execution_ms'], 0)} + {fmt(x['block_commit_write_ms'], 0)} ms | {rej} | "
                 f"{'yes' if x['all_accepted_committed'] else 'NO'} ({x['committed']}/{x['accepted']}) | "
                 f"{'yes' if x['no_fork'] else 'NO'} (h{x['fork_check']['height']}) |")
    L.append("")
    L.append("CPU seconds during the step (cores used = CPU s / step wall time) and peak RSS "
             "(VmHWM since start) per node, and the load generator's CPU:\n")
    hdr = "| target tx/s | " + " | ".join(f"{n['node']} ({n['role']})" for n in s[0]["nodes"]) + " | tally bench |"
    L.append(hdr)
    L.append("|---" * (len(s[0]["nodes"]) + 2) + "|")
    for x in s:
        cells = [f"{fmt(n['cpu_s'], 1)} s ({fmt(n['cpu_cores'], 2)} cores), {fmt(n['peak_rss_mib'], 0)} MiB"
                 for n in x["nodes"]]
        L.append(f"| {x['target_rate']:,} | " + " | ".join(cells) +
                 f" | {fmt(x['generator_cpu_s'], 1)} s ({fmt(x['generator_cores'], 2)} cores) |")
    L.append("")
    best = max(s, key=lambda x: x["committed_tps"])
    f = best["finality_ms"]
    peak_rss = max(n["peak_rss_mib"] for x in s for n in x["nodes"])
    met = lambda b: "**met**" if b else "**missed**"
    L.append("## Targets (issue 12)\n")
    L.append(f"Best step: {best['target_rate']:,} tx/s offered → {best['committed_tps']:,.0f} TPS committed.\n")
    L.append("| target | measured | |")
    L.append("|---|---|---|")
    L.append(f"| committed TPS >= 0.6 × limit ({0.6 * lim:,.0f}) | {best['committed_tps']:,.0f} "
             f"({best['ratio_to_limit']:.2f}x; {fmt(best['ratio_to_limit_minus_generator'], 2)}x of the limit minus the generator) "
             f"| {met(best['ratio_to_limit'] >= 0.6)} |")
    L.append(f"| p50 finality <= 1.5 s at that load | {fmt(f['p50'])} ms | {met(f['p50'] is not None and f['p50'] <= 1500)} |")
    L.append(f"| p99 finality <= 3 s at that load | {fmt(f['p99'])} ms | {met(f['p99'] is not None and f['p99'] <= 3000)} |")
    L.append(f"| RSS per node <= 300 MiB with 1M accounts | {peak_rss:,.0f} MiB peak, but with ~{sum(x['accounts'] for x in s) + 4} accounts, "
             f"not 1M | **not measured** |")
    L.append(f"| no fork, every accepted tx committed | "
             f"{'yes in every step' if all(x['no_fork'] and x['all_accepted_committed'] for x in s) else 'NO in some step (see table)'} | "
             f"{met(all(x['no_fork'] and x['all_accepted_committed'] for x in s))} |")
    L.append(f"| throughput with the optimisations switched off, same report | — | **not done** |")
    L.append("")
    L.append(rep.get("notes_md", ""))
    open(path, "w").write("\n".join(L) + "\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True)
    ap.add_argument("--tally", required=True)
    ap.add_argument("--raw", type=float, required=True)
    ap.add_argument("--rates", default="250,500,1000,1500,2000,3000")
    ap.add_argument("--duration", type=int, default=20)
    ap.add_argument("--drain", type=int, default=30)
    ap.add_argument("--base-ip", default="127.0.60.2")
    ap.add_argument("--out-json", required=True)
    ap.add_argument("--out-md", required=True)
    ap.add_argument("--notes", default="")
    ap.add_argument("--max-wall", type=int, default=300, help="no new step after this many seconds")
    args = ap.parse_args()
    args._gen_cpu_seen = 0.0
    started = time.time()
    nodes = load_nodes(args.dir)
    steps = []
    for rate in [int(r) for r in args.rates.split(",")]:
        if time.time() - started > args.max_wall:
            print("time budget reached; no further steps", file=sys.stderr)
            break
        wait_mempool_empty(nodes)
        st = run_step(args, nodes, rate, args.raw)
        steps.append(st)
        if len(steps) >= 2 and st["committed_tps"] < 1.1 * steps[-2]["committed_tps"]:
            print("committed TPS stopped growing (< 1.1x the previous step); stopping", file=sys.stderr)
            break
    rep = {
        "started_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
        "host": os.uname().nodename, "nproc": NPROC, "validators": VALIDATORS, "full_nodes": len(nodes) - VALIDATORS,
        "base_ip": args.base_ip, "duration_s": args.duration,
        "raw_verify_one_core": args.raw, "limit_tps": args.raw * NPROC / VALIDATORS,
        "steps": steps,
        "best_committed_tps": max(x["committed_tps"] for x in steps) if steps else None,
        "total_wall_s": time.time() - started,
    }
    if args.notes and os.path.exists(args.notes):
        rep["notes_md"] = open(args.notes).read()
    json.dump({k: v for k, v in rep.items() if k != "notes_md"}, open(args.out_json, "w"), indent=2)
    write_md(args.out_md, rep)
    ok = all(x["no_fork"] and x["all_accepted_committed"] for x in steps)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
