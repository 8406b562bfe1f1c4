"""What SQLite's page size does to the nexus's two kinds of writes, on this disk.

    /usr/bin/python3 bench/sqlite_pages.py [--sizes 4096,8192,16384,65536] [--reps 2]

For each page size, in a fresh WAL database with synchronous=FULL (the nexus's settings) in a
temporary directory:
  - "payload": 20,000 rows of 4 KiB payload in transactions of 2,000, each followed by a
    transaction of 2,000 small result rows: microseconds per task (workload B's store writes);
  - "pair": 600 times one small task row, commit, one result row, commit: p50 and p90 of the
    pair in microseconds (workload C's two commits).
docs/benchmarks.md ("Machine") records what it printed on our machine.
"""
import argparse
import os
import sqlite3
import tempfile
import time


def connect(path, page_size):
    c = sqlite3.connect(path, isolation_level=None)
    c.execute("PRAGMA page_size=%d" % page_size)
    c.execute("PRAGMA journal_mode=WAL")
    c.execute("PRAGMA synchronous=FULL")
    c.execute("CREATE TABLE tasks(id INTEGER PRIMARY KEY, batch INT, idx INT, payload BLOB)")
    c.execute("CREATE UNIQUE INDEX tasks_batch_idx ON tasks(batch, idx)")
    c.execute("CREATE TABLE results(task INTEGER PRIMARY KEY, status INT, output BLOB, error TEXT)")
    c.execute("CREATE TABLE batches(id INTEGER PRIMARY KEY, finished INT)")
    return c


def payload_cost(c):
    blob = os.urandom(4096)
    t0 = time.perf_counter()
    for t in range(10):
        c.execute("BEGIN IMMEDIATE")
        c.executemany("INSERT INTO tasks VALUES(?,?,?,?)",
                      ((t * 2000 + i, 1, t * 2000 + i, blob) for i in range(2000)))
        c.execute("COMMIT")
        c.execute("BEGIN IMMEDIATE")
        c.executemany("INSERT INTO results VALUES(?,?,?,?)",
                      ((t * 2000 + i, 0, blob[:64], "") for i in range(2000)))
        c.execute("COMMIT")
    return (time.perf_counter() - t0) / 20000 * 1e6


def pair_latency(c):
    lat = []
    for i in range(600):
        t0 = time.perf_counter()
        c.execute("BEGIN IMMEDIATE")
        c.execute("INSERT INTO batches VALUES(?, NULL)", (i,))
        c.execute("INSERT INTO tasks VALUES(?,?,?,?)", (100000 + i, 1000 + i, 0, b"7"))
        c.execute("COMMIT")
        c.execute("BEGIN IMMEDIATE")
        c.execute("INSERT INTO results VALUES(?,?,?,?)", (100000 + i, 0, b"7", ""))
        c.execute("UPDATE batches SET finished = 1 WHERE id = ?", (i,))
        c.execute("COMMIT")
        lat.append((time.perf_counter() - t0) * 1e6)
    lat.sort()
    return lat[len(lat) // 2], lat[len(lat) * 9 // 10]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="4096,8192,16384,65536")
    ap.add_argument("--reps", type=int, default=2)
    a = ap.parse_args()
    sizes = [int(s) for s in a.sizes.split(",")]
    if a.reps < 1 or a.reps > 20 or any(s not in (512, 1024, 2048, 4096, 8192, 16384, 32768, 65536) for s in sizes):
        ap.error("--sizes takes powers of two from 512 to 65536, --reps 1 to 20")
    with tempfile.TemporaryDirectory(prefix="sqlite-pages-") as d:
        for rep in range(1, a.reps + 1):
            for size in sizes:
                path = os.path.join(d, "p%d-%d.db" % (size, rep))
                c = connect(path, size)
                cost = payload_cost(c)
                p50, p90 = pair_latency(c)
                c.close()
                print("rep %d page %6d: payload %5.1f us/task   commit pair p50 %5.0f us, p90 %5.0f us"
                      % (rep, size, cost, p50, p90), flush=True)


if __name__ == "__main__":
    main()
