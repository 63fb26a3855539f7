#!/usr/bin/env python3
"""What a transaction costs a node besides its signature (issue 22, lever 3), stdlib only.

One short measurement on a local testnet (4 validators + 1 full node): starts the nodes
with the given environment, waits for blocks, runs `tally bench --batch N` for a few
seconds, optionally records a perf profile of node0 meanwhile, and prints per node the
CPU per committed tx, the part of it outside signature verification (verifications
counted by `tally_tx_signature_verifications_total`, each costed at the raw verify rate),
verifications per committed tx, context switches per second and threads. The testnet is
stopped at the end; the directory is kept for the next run (same chain) unless --clean.

  python3 scripts/hotpath.py --bin DIR --dir /tmp/hp-net --label base [--env K=V ...] \\
      [--raw 5600] [--rate 800] [--duration 20] [--perf perf.data] [--clean] [--idle]
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_net_report import load_nodes, metrics, proc_cpu  # noqa: E402

VERIFY = "tally_tx_signature_verifications_total"


def ctx_switches(pid):
    out = {"threads": 0, "vol": 0, "invol": 0}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k == "Threads":
                out["threads"] = int(v)
            elif k == "voluntary_ctxt_switches":
                out["vol"] = int(v)
            elif k == "nonvoluntary_ctxt_switches":
                out["invol"] = int(v)
    # The process's own line counts its main thread only: add every thread's.
    vol = invol = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if line.startswith("voluntary_ctxt_switches"):
                        vol += int(line.split()[1])
                    elif line.startswith("nonvoluntary_ctxt_switches"):
                        invol += int(line.split()[1])
        except OSError:
            pass  # a thread that ended meanwhile
    out["vol"], out["invol"] = vol, invol
    return out


def verifications(m):
    return sum(v for k, v in m.items() if k.startswith(VERIFY))


def snap(nodes):
    return [{"m": metrics(n["metrics"]), "cpu": proc_cpu(n["pid"]), "cs": ctx_switches(n["pid"])}
            for n in nodes]


def height(node):
    return int(metrics(node["metrics"]).get("tally_block_height", 0))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bin", required=True, help="directory with tallyd and tally")
    p.add_argument("--dir", required=True)
    p.add_argument("--label", default="run")
    p.add_argument("--env", action="append", default=[])
    p.add_argument("--base-ip", default="127.0.70.2")
    p.add_argument("--genesis-accounts", type=int, default=10000)
    p.add_argument("--raw", type=float, default=5600.0, help="raw k256 verifies/s, one core")
    p.add_argument("--rate", type=int, default=800)
    p.add_argument("--duration", type=int, default=20)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--perf", help="record node0 with perf -g for 8 s into this file")
    p.add_argument("--dwarf", action="store_true",
                   help="with --perf: DWARF call graphs (the release build keeps no frame pointers)")
    p.add_argument("--clean", action="store_true", help="delete --dir at the end")
    p.add_argument("--idle", action="store_true",
                   help="no load: print each node's CPU (ms per s) over --duration s")
    a = p.parse_args()
    tallyd, tally = os.path.join(a.bin, "tallyd"), os.path.join(a.bin, "tally")
    if not os.path.exists(os.path.join(a.dir, "testnet.json")):
        subprocess.run([tallyd, "testnet", "init", "--dir", a.dir, "--base-ip", a.base_ip,
                        "--validators", "4", "--full-nodes", "1", "--accounts", "4",
                        "--genesis-accounts", str(a.genesis_accounts)],
                       check=True, stdout=subprocess.DEVNULL)
    env = dict(os.environ)
    env.update(kv.split("=", 1) for kv in a.env)
    log = open(os.path.join(a.dir, f"start-{a.label}.log"), "w")
    sup = subprocess.Popen([tallyd, "testnet", "start", "--dir", a.dir, "--non-interactive"],
                           env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 300
        nodes = None
        while nodes is None:
            if sup.poll() is not None or time.time() > deadline:
                sys.exit(f"testnet did not come up; see {log.name}")
            try:
                nodes = load_nodes(a.dir)
                h0 = max(height(n) for n in nodes)
            except (OSError, ValueError):
                nodes = None
                time.sleep(0.5)
        while min(height(n) for n in nodes) < h0 + 3:
            if sup.poll() is not None or time.time() > deadline:
                sys.exit(f"no blocks; see {log.name}")
            time.sleep(0.5)
        if a.idle:
            before, t0 = snap(nodes), time.time()
            time.sleep(a.duration)
            after, wall = snap(nodes), time.time() - t0
            for n, b, e in zip(nodes, before, after):
                cs = e["cs"]["vol"] + e["cs"]["invol"] - b["cs"]["vol"] - b["cs"]["invol"]
                print(f"{n['name']}: idle CPU {(e['cpu'] - b['cpu']) / wall * 1e3:.1f} ms/s, "
                      f"{cs / wall:.0f} context switches/s, {e['cs']['threads']} threads")
            return
        cmd = [tally, "--node", ",".join(n["rpc"] for n in nodes),
               "--keys-dir", os.path.join(a.dir, "wallet", "keys"), "--output", "json",
               "bench", "--fund-from", "account0", "--accounts", "128", "--rate", str(a.rate),
               "--duration", f"{a.duration}s", "--drain-timeout", "30s", "--batch", str(a.batch)]
        first = snap(nodes)
        bench = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        # The batches are signed before the measured window: start counting after that.
        time.sleep(3)
        before, t0 = snap(nodes), time.time()
        perf = None
        if a.perf:
            graph = "--call-graph dwarf,16384 -F 199" if a.dwarf else "-g -F 499"
            perf = subprocess.Popen(["sh", "-c", f"sleep 4; exec perf record {graph} -p "
                                     f"{nodes[0]['pid']} -o {a.perf} -- sleep 8"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(max(1, a.duration - 4))
        after, t1 = snap(nodes), time.time()
        out, _ = bench.communicate()
        if perf:
            perf.wait()
        last = snap(nodes)
        wall = t1 - t0
        verify_us = 1e6 / a.raw
        rows = []
        for n, b, e in zip(nodes, before, after):
            txs = e["m"].get("tally_txs_committed_total", 0) - b["m"].get("tally_txs_committed_total", 0)
            cpu = e["cpu"] - b["cpu"]
            ver = verifications(e["m"]) - verifications(b["m"])
            cs = (e["cs"]["vol"] + e["cs"]["invol"] - b["cs"]["vol"] - b["cs"]["invol"]) / wall
            per_tx = cpu / txs * 1e6 if txs else float("nan")
            vpt = ver / txs if txs else float("nan")
            rows.append({"node": n["name"], "txs": txs, "tps": txs / wall, "cpu_us_per_tx": per_tx,
                         "outside_us_per_tx": per_tx - vpt * verify_us, "verify_per_tx": vpt,
                         "ctx_per_s": cs, "threads": e["cs"]["threads"],
                         "invol_per_s": (e["cs"]["invol"] - b["cs"]["invol"]) / wall})
        try:
            result = json.loads(out.decode().strip().splitlines()[-1])
        except (ValueError, IndexError):
            result = {}
        print(f"== {a.label} ({' '.join(a.env) or 'defaults'}): {wall:.1f} s window, "
              f"bench: {json.dumps({k: result.get(k) for k in ('submitted', 'accepted', 'committed', 'tps', 'lost', 'latency_ms') if k in result})}")
        print("node   | TPS  | CPU µs/tx | outside verify µs/tx | verif/tx (window) | ctx sw/s (invol) | threads")
        for r in rows:
            print(f"{r['node']:6} | {r['tps']:4.0f} | {r['cpu_us_per_tx']:9.0f} | {r['outside_us_per_tx']:20.0f} "
                  f"| {r['verify_per_tx']:8.2f} | {r['ctx_per_s']:7.0f} ({r['invol_per_s']:5.0f}) | {r['threads']}")
        mean = lambda k: sum(r[k] for r in rows) / len(rows)  # noqa: E731
        print(f"mean   | {mean('tps'):4.0f} | {mean('cpu_us_per_tx'):9.0f} | {mean('outside_us_per_tx'):20.0f} "
              f"| {mean('verify_per_tx'):8.2f} | {mean('ctx_per_s'):7.0f} ({mean('invol_per_s'):5.0f}) |")
        # Verifications per tx over the whole bench (every tx admitted and committed): a
        # window in the middle would count admissions a block ahead of their commits.
        paths = {}
        for b, e in zip(first, last):
            for k, v in e["m"].items():
                if k.startswith(VERIFY):
                    paths[k[len(VERIFY):]] = paths.get(k[len(VERIFY):], 0) + v - b["m"].get(k, 0)
        txs = sum(e["m"].get("tally_txs_committed_total", 0) - b["m"].get("tally_txs_committed_total", 0)
                  for b, e in zip(first, last))
        print("whole bench, verifications per committed tx by path (all nodes): " + ", ".join(
            f"{k} {v / txs:.3f}" for k, v in sorted(paths.items()) if txs))
        # The waste around the pool: re-announcements and what the peers refused.
        def total(prefix):
            out = {}
            for b, e in zip(first, last):
                for k, v in e["m"].items():
                    if k.startswith(prefix):
                        out[k[len(prefix):]] = out.get(k[len(prefix):], 0) + v - b["m"].get(k, 0)
            return {k: v for k, v in out.items() if v}
        print(f"whole bench, all nodes: heights started before timeout_commit ended "
              f"{total('tally_timeout_commit_skipped_total')}")
        print(f"whole bench, all nodes: re-announced {total('tally_mempool_reannounced_total')}, "
              f"rejections {total('tally_mempool_rejections_total')}")
        print(json.dumps({"label": a.label, "env": a.env, "rows": rows}))
    finally:
        subprocess.run([tallyd, "testnet", "stop", "--dir", a.dir],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            sup.wait(timeout=30)
        except subprocess.TimeoutExpired:
            sup.kill()
            sup.wait()
        if a.clean:
            shutil.rmtree(a.dir, ignore_errors=True)


if __name__ == "__main__":
    main()
