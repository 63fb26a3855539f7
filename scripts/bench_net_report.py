#!/usr/bin/env python3
"""Driver + report for `make bench-net` (issue 12), stdlib only.

Called by scripts/bench-net.sh:
  bench_net_report.py drive --dir TESTNET_DIR --tally BIN --raw RATE --label L --out-json F
      once per phase, with the testnet up in that phase's configuration. For each target rate
      it runs `tally --output json bench` against all five nodes, snapshots every node's
      /metrics and /proc before and after (and samples VmRSS during the step), checks that all
      nodes agree on the block hash at a common height, and (--stop-when-flat) stops once
      committed TPS grows by less than 10%. --profile runs `perf record` on node0 during the
      top-rate step.
  bench_net_report.py render --phases A.json,B.json,... --out-md F --out-json F
      combines the phases (the default configuration first) into the report.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import time
import urllib.request

CLK = os.sysconf("SC_CLK_TCK")
NPROC = os.cpu_count() or 1
VALIDATORS = 4
VERIFYING_NODES = VALIDATORS + 1  # the full node verifies every tx too


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


def proc_status_mib(pid, field):
    """A memory field of /proc/<pid>/status (VmRSS, VmHWM) in MiB, or None."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
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


# Every k256 verification of a transaction's signature a node makes (all paths summed).
VERIFY_METRIC = "tally_tx_signature_verifications_total"


def counter_growth(a, b, name):
    """Growth of a counter summed over its label sets; None when the node does not export it."""
    keys = [k for k in b["m"] if k == name or k.startswith(name + "{")]
    if not keys:
        return None
    return sum(b["m"][k] - a["m"].get(k, 0.0) for k in keys)


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


def start_profile(args, pid):
    """perf record (no call graphs: self time only) on node0, from 5 s into the step for 8 s."""
    data = os.path.join(args.dir, "perf-node0.data")
    try:
        return {"data": data, "p": subprocess.Popen(
            ["sh", "-c", f"sleep 5; exec perf record -F 499 -p {pid} -o {data} -- sleep 8"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)}
    except OSError as e:
        print(f"warning: no profile: {e}", file=sys.stderr)
        return None


def component(sym, dso):
    """Coarse owner of a symbol, for the profile summary."""
    if dso.startswith("[kernel"):
        return "kernel (syscalls, scheduling, loopback TCP)"
    if dso.startswith("libc") or sym.startswith(("_int_", "malloc", "cfree", "__mem", "free")):
        return "libc (malloc/free, memcpy)"
    for prefix, name in (("k256", "k256 (signature verification)"), ("subtle", "k256 (signature verification)"),
                         ("elliptic_curve", "k256 (signature verification)"), ("ecdsa", "k256 (signature verification)"),
                         ("rocksdb", "RocksDB"), ("mi_", "mimalloc"), ("_mi_", "mimalloc"), ("jmt", "jmt state tree"),
                         ("sha2", "SHA-256"), ("libp2p", "libp2p"), ("yamux", "libp2p"), ("snow", "libp2p"),
                         ("hashbrown", "hash maps"), ("tokio", "tokio"), ("hyper", "HTTP (axum/hyper)"),
                         ("axum", "HTTP (axum/hyper)"), ("serde", "serde"), ("borsh", "borsh"),
                         ("tally", "tally (node code)"), ("ledger", "tally (node code)"),
                         ("consensus", "tally (node code)"), ("futures", "async runtime (futures)"),
                         ("<futures", "async runtime (futures)"), ("core::", "Rust core/alloc"),
                         ("<core", "Rust core/alloc"), ("alloc::", "Rust core/alloc"), ("<alloc", "Rust core/alloc"),
                         ("bytes", "Rust core/alloc"), ("std::", "Rust core/alloc")):
        if sym.lstrip("<").startswith(prefix):
            return name
    return "other"


def finish_profile(perf):
    perf["p"].wait()
    try:
        out = subprocess.run(["perf", "report", "-i", perf["data"], "--no-children", "--sort", "dso,sym",
                              "--stdio", "-q"], capture_output=True, text=True, timeout=120).stdout
    except (OSError, subprocess.TimeoutExpired) as e:
        print(f"warning: perf report: {e}", file=sys.stderr)
        return None
    rows, groups = [], {}
    for line in out.splitlines():
        parts = line.split(None, 3)
        if len(parts) < 4 or not parts[0].endswith("%"):
            continue
        pct, dso, sym = float(parts[0].rstrip("%")), parts[1], parts[3].strip()
        sym = re.sub(r"::h[0-9a-f]{16}$", "", sym)
        rows.append({"pct": pct, "dso": dso, "sym": sym[:110]})
        g = component(sym, dso)
        groups[g] = groups.get(g, 0.0) + pct
    return {"top": rows[:15], "components": dict(sorted(groups.items(), key=lambda kv: -kv[1]))}


def run_step(args, nodes, rate, raw):
    accounts = max(64, min(256, rate // 8))
    urls = ",".join(n["rpc"] for n in nodes)
    cmd = [args.tally, "--node", urls, "--keys-dir", os.path.join(args.dir, "wallet", "keys"),
           "--output", "json", "bench", "--fund-from", "account0", "--accounts", str(accounts),
           "--rate", str(rate), "--duration", f"{args.duration}s",
           "--drain-timeout", f"{args.drain}s"]
    if args.batch > 0:
        cmd += ["--batch", str(args.batch)]
    print(f"== step: {rate} tx/s, {accounts} accounts, {args.duration} s"
          + (f", batches of {args.batch}" if args.batch > 0 else ""), file=sys.stderr, flush=True)
    before = snapshot(nodes)
    t0 = time.time()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    perf = None
    if args.profile:
        perf = start_profile(args, nodes[0]["pid"])
    # The generator's CPU: sampled from /proc/<pid>/stat while it runs, and exactly from
    # wait4's rusage at exit (the last /proc sample misses the final moments).
    last_proc = 0.0
    rss_peak = [0.0] * len(nodes)
    while p.poll() is None:
        c = proc_cpu(p.pid)
        if c is not None:
            last_proc = c
        for i, n in enumerate(nodes):
            rss_peak[i] = max(rss_peak[i], proc_status_mib(n["pid"], "VmRSS") or 0.0)
        time.sleep(0.2)
    out, err = p.communicate()
    wall = time.time() - t0
    profile = finish_profile(perf) if perf else None
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
    def by_label(prefix, label):
        # Sum over all nodes of a labelled counter's growth during the step, by label value.
        out = {}
        for a, b in zip(before, after):
            for k in b["m"]:
                if k.startswith(prefix + "{") and f'{label}="' in k:
                    d = b["m"][k] - a["m"].get(k, 0.0)
                    if d:
                        v = k.split(f'{label}="', 1)[1].split('"', 1)[0]
                        out[v] = out.get(v, 0) + int(d)
        return out

    rejections = by_label("tally_mempool_rejections_total", "reason")
    # Bounded channels and rate limits: what was dropped before reaching a node.
    p2p_drops = by_label("tally_p2p_dropped_total", "kind")
    # Gossip messages received by node0 per committed tx (batching shows here).
    gossip_in = sum(v for k, v in n0b["m"].items()
                    if k.startswith("tally_gossip_messages_total{") and 'direction="in"' in k) - \
        sum(v for k, v in n0a["m"].items()
            if k.startswith("tally_gossip_messages_total{") and 'direction="in"' in k)
    reannounced = sum(delta(a, b, "tally_mempool_reannounced_total") for a, b in zip(before, after))
    per_node = []
    committed = rep.get("committed") or 0
    for i, (n, a, b) in enumerate(zip(nodes, before, after)):
        cpu = (b["cpu"] - a["cpu"]) if (a["cpu"] is not None and b["cpu"] is not None) else None
        verifs = counter_growth(a, b, VERIFY_METRIC)
        # Without the counter (an older build) each node is taken to verify each tx once.
        vpt = (verifs / committed) if (verifs is not None and committed) else None
        outside = None
        if cpu is not None and committed:
            outside = 1e6 * cpu / committed - (vpt if vpt is not None else 1.0) * 1e6 / raw
        per_node.append({"node": n["name"], "role": n["role"],
                         "verifications_per_committed_tx": round(vpt, 3) if vpt is not None else None,
                         "cpu_us_outside_verify_per_tx": round(outside, 1) if outside is not None else None,
                         "cpu_s": round(cpu, 2) if cpu is not None else None,
                         "cpu_cores": round(cpu / wall, 2) if cpu is not None else None,
                         "cpu_us_per_committed_tx": round(1e6 * cpu / rep["committed"], 1)
                         if cpu is not None and rep.get("committed") else None,
                         "rss_step_peak_mib": round(rss_peak[i], 1),
                         "peak_rss_mib": round(proc_status_mib(n["pid"], "VmHWM") or 0, 1),
                         "height": int(b["m"].get("tally_block_height", 0))})
    gen_cores = gen_cpu / wall if wall else 0.0
    limit = raw * NPROC / VALIDATORS
    limit_adj = raw * max(NPROC - gen_cores, 0.0) / VALIDATORS
    # Issue 22's fair limit: every one of the 5 nodes verifies every tx, on the cores the
    # load generator leaves.
    fair = raw * max(NPROC - gen_cores, 0.0) / VERIFYING_NODES
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
        "fair_limit_tps": round(fair, 0),
        "ratio_to_fair_limit": round(tps / fair, 3) if fair else None,
        "finality_ms": {k: lat.get(k) for k in ("p50", "p95", "p99", "max")},
        "block_interval_s": round(ivs / ivc, 3) if ivc else None,
        "blocks": int(blocks), "txs_per_block": round(txs / blocks, 1) if blocks else None,
        "rounds_per_height": round(rsum / rcnt, 2) if rcnt else None,
        "block_execution_ms": round(1000 * exs / exc, 1) if exc else None,
        "block_commit_write_ms": round(1000 * cws / cwc, 1) if cwc else None,
        "mempool_rejections_by_reason": rejections,
        "p2p_dropped_by_kind": p2p_drops,
        "node0_gossip_in_per_committed_tx": round(gossip_in / rep["committed"], 3) if rep.get("committed") else None,
        "reannounced_all_nodes": int(reannounced),
        "nodes": per_node,
        "generator_cpu_s": round(gen_cpu, 2), "generator_cpu_s_proc_sampled": round(last_proc, 2),
        "generator_cores": round(gen_cores, 2),
        "limit_minus_generator_tps": round(limit_adj, 0),
        "all_accepted_committed": bool(rep.get("ok")) and rep.get("not_committed") == 0
                                  and rep.get("accepted") == rep.get("committed"),
        "bench_ok": rep.get("ok"),
        "no_fork": fork["agree"], "fork_check": fork,
    }
    # Accepted but not committed within the drain: still pending in a mempool (the nodes are
    # behind the offered rate, as the ablations without the verify-once cache are on a slow
    # machine), not checked, or unknown to the node (lost). Pending ones are waited for
    # here, so a slow configuration reads as slow, not as losing transactions.
    # A tx the node does not know (unknown) is lost; one not checked in the bench's check
    # window is counted lost unless the mempools drain after it.
    nc = rep.get("not_committed") or 0
    unknown = rep.get("not_committed_unknown", nc)
    not_checked = rep.get("not_committed_not_checked", 0)
    step["not_committed_still_pending"] = rep.get("not_committed_still_pending", 0)
    step["not_committed_unknown"] = unknown
    step["not_committed_not_checked"] = not_checked
    step["drained_after_s"] = None
    if nc and not unknown:
        t = time.time()
        if wait_mempool_empty(nodes, limit_s=args.backlog_wait):
            step["drained_after_s"] = round(time.time() - t, 1)
    step["no_tx_lost"] = bool(rep.get("accepted")) and unknown == 0 and \
        (not_checked == 0 or step["drained_after_s"] is not None)
    if rep.get("error"):
        step["error"] = rep["error"]
    if profile:
        step["profile_node0"] = profile
    print(f"   committed {step['committed']}/{step['accepted']} accepted, {tps:.0f} TPS "
          f"({step['ratio_to_limit']:.2f}x limit), p50 {lat.get('p50')} ms p99 {lat.get('p99')} ms, "
          f"rejections {rejections}, no fork at h{fork['height']}: {fork['agree']}",
          file=sys.stderr, flush=True)
    return step


def step_ok(x):
    """No fork and no accepted tx lost: one still pending in the mempools at the drain
    deadline is slow, not lost. Phases of runs before these fields count as before."""
    return x["no_fork"] and x.get("no_tx_lost", x["all_accepted_committed"])


def committed_cell(x):
    if x["all_accepted_committed"]:
        return f"yes ({x['committed']:,}/{x['accepted']:,})"
    if x.get("no_tx_lost"):
        pending = x.get("not_committed_still_pending", 0)
        later = (f"committed {x['drained_after_s']} s later" if x.get("drained_after_s") is not None
                 else "still pending when the bench moved on (slow, not lost)")
        return f"{x['committed']:,}/{x['accepted']:,} in the drain; {pending:,} pending, {later}"
    return (f"NO ({x['committed']}/{x['accepted']}; "
            f"{x.get('not_committed_unknown', '?')} unknown to the node)")


def fmt(v, nd=0):
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:,.{nd}f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def mean_node(step, key):
    """Mean over the nodes of a per-node figure (None when no node has it)."""
    xs = [n[key] for n in step["nodes"] if n.get(key) is not None]
    return sum(xs) / len(xs) if xs else None


def mean_cpu_us(step):
    return mean_node(step, "cpu_us_per_committed_tx")


def fair_ratio(x):
    """Ratio to issue 22's fair limit; phases of runs before that field are recomputed."""
    return x.get("ratio_to_fair_limit")


def drops(step):
    d = step.get("p2p_dropped_by_kind")
    if d is None:
        return "—"
    return ", ".join(f"{k} {v:,}" for k, v in sorted(d.items())) or "0"


def write_md(path, rep):
    main = rep["phases"][0]
    s = main["steps"]
    lim = rep["limit_tps"]
    L = []
    L.append("# Network benchmark: 4 validators + 1 full node on one machine (`make bench-net`)\n")
    L.append(f"Run {rep['started_utc']} on `{rep['host']}` ({rep['nproc']} cores), release builds, "
             f"loopback ({rep['base_ip']}..), 500 ms block time (testnet default), "
             f"**{rep['genesis_accounts']:,} extra funded accounts in genesis**, commit `{rep.get('commit', '?')}`, "
             f"`tally bench` against all 5 RPC endpoints, {rep['duration_s']} s per step. "
             f"`make bench-net` took {rep['total_wall_s'] / 60:.1f} min in all (build, raw rate, "
             f"genesis, every phase).\n")
    raw = rep["raw_verify_one_core"]
    best = max(s, key=lambda x: x["committed_tps"])
    L.append("## The limit\n")
    L.append(f"- raw k256 verify, one core (ledger bench binary, same run): **{raw:,.0f} /s** "
             f"({1e6 / raw:,.0f} µs per verification)")
    L.append(f"- **fair limit** (issue 22) = raw × (cores − generator cores) / {VERIFYING_NODES} nodes that "
             f"verify every tx (4 validators and the full node). At the best step the generator held "
             f"{best['generator_cores']:.2f} cores: **{fmt(best.get('fair_limit_tps'))} TPS**; 0.8 × that = "
             f"{fmt((best.get('fair_limit_tps') or 0) * 0.8)} TPS.")
    L.append(f"- the old limit (issue 12) = raw × {rep['nproc']} cores / {VALIDATORS} validators = "
             f"{lim:,.0f} TPS, still printed beside it (\"ratio to limit\").")
    L.append("- CPU per tx outside verification = a node's CPU per committed tx − its tx-signature "
             "verifications per committed tx (`tally_tx_signature_verifications_total`) × "
             f"{1e6 / raw:,.0f} µs.\n")
    L.append(f"## Rising load (default configuration: {main['label']})\n")
    L.append("| target tx/s | submitted/s | committed TPS | ratio to fair limit | ratio to limit | p50 | p95 | p99 "
             "| block interval | txs/block | rounds/height | exec + write per block (node0) | gossip msgs in per tx (node0) "
             "| mempool rejections (all nodes) | p2p drops (all nodes) | re-announced | all accepted committed | no fork |")
    L.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for x in s:
        f = x["finality_ms"]
        rej = ", ".join(f"{k} {v:,}" for k, v in sorted(x["mempool_rejections_by_reason"].items())) or "0"
        L.append(f"| {x['target_rate']:,} | {fmt(x['submit_rate'])} | **{fmt(x['committed_tps'])}** | "
                 f"{fmt(fair_ratio(x), 3)} | {x['ratio_to_limit']:.3f} | "
                 f"{fmt(f['p50'])} ms | {fmt(f['p95'])} ms | {fmt(f['p99'])} ms | "
                 f"{fmt(x['block_interval_s'], 2)} s | {fmt(x['txs_per_block'], 0)} | {fmt(x['rounds_per_height'], 2)} | "
                 f"{fmt(x['block_execution_ms'], 0)} + {fmt(x['block_commit_write_ms'], 0)} ms | "
                 f"{fmt(x.get('node0_gossip_in_per_committed_tx'), 3)} | {rej} | {drops(x)} | "
                 f"{fmt(x.get('reannounced_all_nodes'))} | "
                 f"{committed_cell(x)} | "
                 f"{'yes' if x['no_fork'] else 'NO'} (h{x['fork_check']['height']}) |")
    L.append("")
    L.append("Per node during each step: CPU (cores = CPU s / step wall time; µs of CPU per committed tx, "
             "and of it outside the tx-signature verifications the node made per committed tx), "
             "peak RSS sampled every 0.2 s during the step (VmRSS), and VmHWM since the node started "
             "(includes building the genesis state). Last column: the load generator.\n")
    hdr = "| target tx/s | " + " | ".join(f"{n['node']} ({n['role']})" for n in s[0]["nodes"]) + " | tally bench |"
    L.append(hdr)
    L.append("|---" * (len(s[0]["nodes"]) + 2) + "|")
    for x in s:
        cells = [f"{fmt(n['cpu_cores'], 2)} cores, {fmt(n.get('cpu_us_per_committed_tx'), 0)} µs/tx "
                 f"({fmt(n.get('cpu_us_outside_verify_per_tx'), 0)} outside {fmt(n.get('verifications_per_committed_tx'), 2)} "
                 f"verifications); "
                 f"RSS {fmt(n.get('rss_step_peak_mib'), 0)} MiB (HWM {fmt(n['peak_rss_mib'], 0)})"
                 for n in x["nodes"]]
        L.append(f"| {x['target_rate']:,} | " + " | ".join(cells) +
                 f" | {fmt(x['generator_cores'], 2)} cores |")
    L.append("")
    best = max(s, key=lambda x: x["committed_tps"])
    # Optimisations: every phase at the same offered rate
    ab = [(ph, st) for ph in rep["phases"] for st in ph["steps"] if st["target_rate"] == rep["ab_rate"]]
    if len(ab) > 1:
        L.append(f"## Optimisations on and off (same run, same chain, {rep['ab_rate']:,} tx/s offered)\n")
        L.append("After the rising-load phase, each phase restarts all five nodes with one configuration "
                 "and runs the same load for the same time. The default is measured before and after the "
                 "others; \"vs default\" divides by the mean of those two (the rising-load step, first row, "
                 "ran right after the genesis state was built, while RocksDB was still compacting it, so "
                 "it is shown but not used as the base).\n")
        L.append("| configuration | committed TPS | vs default | ratio to fair limit | p50 | p99 | rounds/height | CPU per tx per node (mean) | of it outside verification | verifications per tx per node | gossip msgs in per tx (node0) | peak RSS (max node) | all committed, no fork |")
        L.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        defaults = [st["committed_tps"] for ph, st in ab[1:] if ph["label"].startswith("default")]
        base = (sum(defaults) / len(defaults)) if defaults else (ab[0][1]["committed_tps"] or 1.0)
        for ph, st in ab:
            f = st["finality_ms"]
            rss = max((n.get("rss_step_peak_mib") or 0) for n in st["nodes"])
            L.append(f"| {ph['label']} | {fmt(st['committed_tps'])} | {st['committed_tps'] / base:.2f}x | "
                     f"{fmt(fair_ratio(st), 3)} | "
                     f"{fmt(f['p50'])} ms | {fmt(f['p99'])} ms | {fmt(st['rounds_per_height'], 2)} | "
                     f"{fmt(mean_cpu_us(st), 0)} µs | {fmt(mean_node(st, 'cpu_us_outside_verify_per_tx'), 0)} µs | "
                     f"{fmt(mean_node(st, 'verifications_per_committed_tx'), 2)} | "
                     f"{fmt(st.get('node0_gossip_in_per_committed_tx'), 3)} | {rss:,.0f} MiB | "
                     f"{committed_cell(st)}, {'no fork' if st['no_fork'] else 'FORK'} |")
        L.append("")
    best = max(s, key=lambda x: x["committed_tps"])
    prof = best.get("profile_node0")
    if prof:
        L.append(f"## Profile (perf, node0, 8 s of the {best['target_rate']:,} tx/s step, self time)\n")
        L.append("| component | share of node0's CPU |")
        L.append("|---|---|")
        for k, v in prof["components"].items():
            if v >= 0.5:
                L.append(f"| {k} | {v:.1f}% |")
        L.append("\nTop symbols:\n")
        L.append("| self | symbol |")
        L.append("|---|---|")
        for r in prof["top"]:
            L.append(f"| {r['pct']:.1f}% | `{r['sym']}` ({r['dso']}) |")
        L.append("")
    f = best["finality_ms"]
    rss = max((n.get("rss_step_peak_mib") or 0) for x in s for n in x["nodes"])
    ok_all = all(step_ok(x) for ph in rep["phases"] for x in ph["steps"])
    outside = mean_node(best, "cpu_us_outside_verify_per_tx")
    fair = fair_ratio(best)
    met = lambda b: "**met**" if b else "**missed**"

    def short(v, target, unit, lower_is_better=True):
        # How far a missed target is, in the target's own unit.
        if v is None:
            return ""
        gap = (v - target) if lower_is_better else (target - v)
        return f" (short by {gap:,.{0 if unit != 'x' else 2}f}{unit})" if gap > 0 else ""

    L.append("## Targets (issue 22)\n")
    L.append(f"Best step: {best['target_rate']:,} tx/s offered → {best['committed_tps']:,.0f} TPS committed.\n")
    L.append("| target | measured | |")
    L.append("|---|---|---|")
    L.append(f"| CPU per tx per node outside signature verification <= 20 µs | {fmt(outside, 0)} µs "
             f"(mean of the 5 nodes at the best step; {fmt(mean_cpu_us(best), 0)} µs in all, "
             f"{fmt(mean_node(best, 'verifications_per_committed_tx'), 2)} verifications per tx)"
             f"{short(outside, 20, ' µs')} | {met(outside is not None and outside <= 20)} |")
    L.append(f"| committed TPS >= 0.8 × fair limit ({fmt((best.get('fair_limit_tps') or 0) * 0.8)}) | "
             f"{best['committed_tps']:,.0f} ({fmt(fair, 2)}x of the fair limit{short(fair, 0.8, 'x', False)}; "
             f"{best['ratio_to_limit']:.2f}x of the old 4-validator limit) | {met(fair is not None and fair >= 0.8)} |")
    L.append(f"| p50 finality <= 1 s at that load | {fmt(f['p50'])} ms | {met(f['p50'] is not None and f['p50'] <= 1000)} |")
    L.append(f"| p99 finality <= 2 s at that load | {fmt(f['p99'])} ms | {met(f['p99'] is not None and f['p99'] <= 2000)} |")
    # The load the chain sustains with the finality targets met, and how far that is from
    # 0.8x (the best step above is usually past the knee, with a growing backlog).
    timely = [x for x in s if (x["finality_ms"].get("p50") or 1e12) <= 1000
              and (x["finality_ms"].get("p99") or 1e12) <= 2000]
    if timely:
        t = max(timely, key=lambda x: x["committed_tps"])
        tf = fair_ratio(t)
        L.append(f"| committed TPS >= 0.8 × fair limit with p50 <= 1 s and p99 <= 2 s (highest such step) | "
                 f"{t['committed_tps']:,.0f} at {t['target_rate']:,} tx/s offered ({fmt(tf, 2)}x of the fair limit"
                 f"{short(tf, 0.8, 'x', False)}; p50 {fmt(t['finality_ms']['p50'])} ms, p99 {fmt(t['finality_ms']['p99'])} ms) | "
                 f"{met(tf is not None and tf >= 0.8)} |")
    else:
        L.append("| committed TPS >= 0.8 × fair limit with p50 <= 1 s and p99 <= 2 s | no step met both finality targets | **missed** |")
    L.append(f"| RSS per node <= 300 MiB with 1M accounts | {rss:,.0f} MiB (highest VmRSS of any node during any step, "
             f"{rep['genesis_accounts']:,} genesis accounts) | "
             f"{met(rss <= 300) if rep['genesis_accounts'] >= 1_000_000 else '**not measured at 1M**'} |")
    L.append(f"| no fork, every accepted tx committed (checked per tx by `tally bench`, block hashes compared) | "
             f"{'yes in every step of every phase' if ok_all else 'NO in some step (see tables)'} | {met(ok_all)} |")
    L.append(f"| each lever measured on and off, same run | "
             f"{'see the on/off table' if len(ab) > 1 else '—'} | {met(len(ab) > 1)} |")
    L.append("")
    L.append(rep.get("notes_md", ""))
    open(path, "w").write("\n".join(L) + "\n")


def drive(args):
    args._gen_cpu_seen = 0.0
    args._rates = [int(r) for r in args.rates.split(",")]
    started = time.time()
    nodes = load_nodes(args.dir)
    steps = []
    for rate in args._rates:
        if time.time() - started > args.max_wall:
            print("time budget reached; no further steps", file=sys.stderr)
            break
        wait_mempool_empty(nodes)
        st = run_step(args, nodes, rate, args.raw)
        steps.append(st)
        if args.stop_when_flat and len(steps) >= 2 and st["committed_tps"] < 1.05 * steps[-2]["committed_tps"]:
            print("committed TPS stopped growing (< 1.05x the previous step); stopping", file=sys.stderr)
            break
    phase = {"label": args.label, "steps": steps, "wall_s": time.time() - started,
             "best_committed_tps": max(x["committed_tps"] for x in steps) if steps else None,
             "best_rate": max(steps, key=lambda x: x["committed_tps"])["target_rate"] if steps else None}
    json.dump(phase, open(args.out_json, "w"), indent=2)
    ok = all(step_ok(x) for x in steps)
    return 0 if ok else 1


def render(args):
    if args.from_json:
        # Re-render an earlier run's report (e.g. after editing the notes).
        rep = json.load(open(args.from_json))
        if args.notes and os.path.exists(args.notes):
            rep["notes_md"] = open(args.notes).read()
        write_md(args.out_md, rep)
        return 0
    phases = [json.load(open(p)) for p in args.phases.split(",") if os.path.exists(p)]
    if not phases:
        sys.exit("error: no phase results to render")
    rep = {
        "started_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(args.started)),
        "host": os.uname().nodename, "nproc": NPROC, "validators": VALIDATORS, "full_nodes": 1,
        "base_ip": args.base_ip, "duration_s": args.duration, "genesis_accounts": args.genesis_accounts,
        "raw_verify_one_core": args.raw, "limit_tps": args.raw * NPROC / VALIDATORS,
        "ab_rate": phases[0].get("best_rate"),
        "commit": args.commit,
        "phases": phases, "total_wall_s": time.time() - args.started,
    }
    if args.notes and os.path.exists(args.notes):
        rep["notes_md"] = open(args.notes).read()
    json.dump({k: v for k, v in rep.items() if k != "notes_md"}, open(args.out_json, "w"), indent=2)
    write_md(args.out_md, rep)
    ok = all(step_ok(x) for ph in phases for x in ph["steps"])
    return 0 if ok else 1


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("drive", help="run load steps against a running testnet; write one phase's JSON")
    d.add_argument("--dir", required=True)
    d.add_argument("--tally", required=True)
    d.add_argument("--raw", type=float, required=True)
    d.add_argument("--label", required=True)
    d.add_argument("--rates", default="250,500,1000,1500,2000,3000")
    d.add_argument("--stop-when-flat", action="store_true")
    d.add_argument("--profile", action="store_true", help="perf-profile node0 during the top-rate step")
    d.add_argument("--duration", type=int, default=20)
    d.add_argument("--drain", type=int, default=30)
    d.add_argument("--backlog-wait", type=int, default=300,
                   help="how long to wait for txs still pending after the drain before calling them lost")
    d.add_argument("--batch", type=int, default=0,
                   help="tally bench --batch: txs per POST /v1/txs/batch, signed before the step (0: one request per tx)")
    d.add_argument("--out-json", required=True)
    d.add_argument("--max-wall", type=int, default=400, help="no new step after this many seconds")
    r = sub.add_parser("render", help="combine phase JSONs into network.md + network.json")
    r.add_argument("--phases", help="comma-separated phase JSON files, default configuration first")
    r.add_argument("--from-json", help="re-render this network.json instead (notes may change)")
    r.add_argument("--raw", type=float)
    r.add_argument("--started", type=float, help="unix time the run started")
    r.add_argument("--duration", type=int, default=20)
    r.add_argument("--genesis-accounts", type=int, default=0)
    r.add_argument("--commit", default="?", help="git commit the binaries were built from")
    r.add_argument("--base-ip", default="127.0.60.2")
    r.add_argument("--out-json")
    r.add_argument("--out-md", required=True)
    r.add_argument("--notes", default="")
    args = ap.parse_args()
    return drive(args) if args.cmd == "drive" else render(args)


if __name__ == "__main__":
    sys.exit(main())
