"""Turns the JSON lines of one bench/run.sh run into the comparison table (or normalised JSON).

    python3 bench/report.py --mesh mesh.jsonl [--peers peers.jsonl] [--json]

mesh.jsonl: what bench/mesh_bench prints ("system": "hive-mesh").  peers.jsonl: what the peer
scripts in shared/bench/peers append ("peer": name).  Figures are medians over the repetitions;
ratios and the bar of issue 7 use only figures measured in this run.
"""
import argparse
import json
import os
import platform
import statistics
import sys
import time


def load(path, mesh):
    rows = []
    if not path or not os.path.exists(path):
        return rows
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line.startswith("{"):
                continue
            r = json.loads(line)
            if not mesh:
                r["system"] = r.pop("peer")
                if "p99_us" in r:
                    r["p99"] = r["p99_us"]
            rows.append(r)
    return rows


def group(rows):
    g = {}
    for r in rows:
        g.setdefault((r["system"], r["workload"]), []).append(r)
    return g


def med(rs, key="value"):
    v = [r[key] for r in rs if r.get(key) is not None]
    return statistics.median(v) if v else None


def num(v, unit=""):
    if v is None:
        return "–"
    if abs(v) >= 100:
        s = "{:,.0f}".format(v)
    elif abs(v) >= 10:
        s = "{:.1f}".format(v)
    else:
        s = "{:.2f}".format(v)
    return s + (" " + unit if unit else "")


WL_NAMES = {
    "A": "A no-op batch (20,000)", "B": "B sha256 4 KiB (20,000)", "C": "C sequential (2,000)",
    "E": "E 1,000,000-task batch", "E-rss": "E nexus peak RSS", "F-idle": "F idle CPU, 1,000 spores",
    "F-load": "F scheduling, 1,000 spores", "D": "D word count",
    "rtt-64B": "round trip 64 B", "rtt-4096B": "round trip 4 KiB",
    "pipelined-64B": "pipelined 64 B", "pipelined-4096B": "pipelined 4 KiB",
}


def machine():
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return "%s, %d cores (%s), kernel %s" % (time.strftime("%Y-%m-%d %H:%M %Z"), os.cpu_count(), cpu,
                                             platform.release())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mesh", required=True)
    ap.add_argument("--peers")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    mesh = load(a.mesh, True)
    peers = load(a.peers, False)
    if a.json:
        for r in mesh + peers:
            o = {"workload": r["workload"], "system": r["system"], "value": r["value"], "unit": r["unit"]}
            if r.get("p99") is not None:
                o["p99"] = r["p99"]
            o["n"] = r.get("n")
            o["rep"] = r.get("rep")
            print(json.dumps(o))
        return

    g = group(mesh + peers)
    print("Hive Mesh benchmarks, " + machine())
    print()
    print("| workload | system | median | p99 (median) | runs | min–max |")
    print("|---|---|---|---|---|---|")
    order = ["A", "B", "C", "E", "E-rss", "F-idle", "F-load", "rtt-64B", "rtt-4096B", "pipelined-64B",
             "pipelined-4096B", "D"]
    systems = ["hive-mesh"] + sorted({s for s, _ in g if s != "hive-mesh"})
    for w in order:
        for s in systems:
            rs = g.get((s, w))
            if not rs:
                continue
            vals = [r["value"] for r in rs]
            unit = rs[0]["unit"]
            print("| %s | %s | %s | %s | %d | %s–%s |" % (
                WL_NAMES.get(w, w), s, num(med(rs), unit), num(med(rs, "p99"), "us") if med(rs, "p99") else "",
                len(rs), num(min(vals)), num(max(vals))))
    if any(r["workload"] == "C" for r in mesh):
        c = g[("hive-mesh", "C")]
        print()
        if med(c, "p50_finished"):
            print("C until the batch's last Progress (which carries the result): p50 %s, p99 %s" % (
                num(med(c, "p50_finished"), "us"), num(med(c, "p99_finished"), "us")))
        else:  # runs recorded before the result rode with the last Progress
            print("C including the fetch of the result (what the peers' C measures): p50 %s, p99 %s" % (
                num(med(c, "p50_with_fetch"), "us"), num(med(c, "p99_with_fetch"), "us")))

    def m(s, w, key="value"):
        rs = g.get((s, w))
        return med(rs, key) if rs else None

    # Ratios mesh / peer for A, B, C.
    peer_systems = [s for s in systems if s != "hive-mesh" and not s.startswith("raw-")]
    if peers:
        print()
        print("Ratios mesh / peer, same run (A, B: throughput, higher is better; C: latency, D: wall time,"
              " lower is better)")
        print()
        print("| peer | A | B | C p50 | C p99 | D |")
        print("|---|---|---|---|---|---|")
        for s in peer_systems:
            cells = []
            for w, key in (("A", "value"), ("B", "value"), ("C", "value"), ("C", "p99"), ("D", "value")):
                x, y = m("hive-mesh", w, key), m(s, w, key)
                cells.append("%s×" % num(x / y) if x and y else "–")
            print("| %s | %s |" % (s, " | ".join(cells)))

    # The bar of issue 7.
    print()
    print("The bar (issue 7), from this run's figures:")
    print()
    print("| bar | measured | target | verdict |")
    print("|---|---|---|---|")

    def row(name, measured, target, ok):
        verdict = "not measured" if ok is None else ("met" if ok else "MISSED")
        print("| %s | %s | %s | %s |" % (name, measured, target, verdict))

    A = m("hive-mesh", "A")
    row("A durable tasks/s", num(A), ">= 100,000", None if A is None else A >= 100000)
    dask, pool = m("dask", "A"), m("mp-pool", "A")
    row("A vs Dask", "%s×" % num(A / dask) if A and dask else "–", ">= 150×", None if not (A and dask) else A / dask >= 150)
    row("A vs multiprocessing.Pool(2)", "%s×" % num(A / pool) if A and pool else "–", ">= 3×",
        None if not (A and pool) else A / pool >= 3)
    B, rawB = m("hive-mesh", "B"), m("raw-zmq-cpp", "pipelined-4096B")
    row("B vs raw ZeroMQ pipelined 4 KiB", "%s / %s = %s" % (num(B), num(rawB), num(B / rawB)) if B and rawB else "–",
        ">= 0.5", None if not (B and rawB) else B / rawB >= 0.5)
    C50, C99 = m("hive-mesh", "C"), m("hive-mesh", "C", "p99")
    r50, r99 = m("raw-zmq-cpp", "rtt-64B"), m("raw-zmq-cpp", "rtt-64B", "p99")
    row("C p50 vs raw ZeroMQ round trip", "%s / %s us = %s×" % (num(C50), num(r50), num(C50 / r50)) if C50 and r50 else "–",
        "<= 2.5×", None if not (C50 and r50) else C50 / r50 <= 2.5)
    row("C p99 vs raw ZeroMQ round trip", "%s / %s us = %s×" % (num(C99), num(r99), num(C99 / r99)) if C99 and r99 else "–",
        "<= 3×", None if not (C99 and r99) else C99 / r99 <= 3)
    E, Erss = m("hive-mesh", "E"), m("hive-mesh", "E-rss")
    row("E nexus peak RSS", num(Erss, "MiB"), "<= 256 MiB", None if Erss is None else Erss <= 256)
    row("E throughput vs A", "%s / %s = %s" % (num(E), num(A), num(E / A)) if E and A else "–", ">= 0.5",
        None if not (E and A) else E / A >= 0.5)
    F = m("hive-mesh", "F-idle")
    row("F nexus idle CPU", num(F, "% of a core"), "<= 10%", None if F is None else F <= 10)
    D, poolD = m("hive-mesh", "D"), m("mp-pool", "D")
    row("D word count vs multiprocessing.Pool(2)", "%s / %s s" % (num(D), num(poolD)) if D and poolD else
        ("%s s (pool not run)" % num(D) if D else "–"), "faster than the local pool",
        None if not (D and poolD) else D < poolD)


if __name__ == "__main__":
    sys.exit(main())
