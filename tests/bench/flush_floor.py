#!/usr/bin/python3
"""The disk's floor under a durable answer: what one store commit waits for.

A batch commit of the store (LMDB, store.sync = true) writes the batch's
dirty pages where they fall in the file, flushes them (fdatasync), then
writes the meta page through a descriptor opened with O_DSYNC (a second
flush). No answer of that batch leaves before both are done, so the time of
this pattern bounds from below the latency of every request that changes
the store (a command cycle's two requests both do).

This replays the pattern on a scratch file in DIR (put it on the data
directory's file system): PAGES scattered 4 KiB pages + fdatasync + one
O_DSYNC page, ROUNDS times for each PAGES value, and prints p50/p99/max in
ms per value, plus the rate of such flushes one writer could reach.

usage: tests/bench/flush_floor.py [--dir DIR] [--rounds N] [--pages 1,50,280]
"""
import argparse
import os
import random
import statistics
import tempfile
import time

PAGE = 4096
FILE_PAGES = 16384  # a 64 MiB file, like a small store's


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100.0 * len(xs)))]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", default="/var/tmp")
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--pages", default="1,50,280")
    a = ap.parse_args()
    counts = [int(x) for x in a.pages.split(",")]
    rnd = random.Random(1)
    fd, path = tempfile.mkstemp(prefix="flush-floor-", dir=a.dir)
    try:
        block = os.urandom(PAGE)
        for i in range(0, FILE_PAGES, 256):
            os.pwrite(fd, block * 256, i * PAGE)
        os.fsync(fd)
        meta = os.open(path, os.O_WRONLY | os.O_DSYNC)
        try:
            print(f"flush floor in {a.dir}: {a.rounds} rounds per row "
                  "(scattered 4 KiB pages + fdatasync + one O_DSYNC page)")
            for n in counts:
                times = []
                for _ in range(a.rounds):
                    pages = rnd.sample(range(2, FILE_PAGES), n)
                    t0 = time.perf_counter()
                    for p in pages:
                        os.pwrite(fd, block, p * PAGE)
                    os.fdatasync(fd)
                    os.pwrite(meta, block, 0)
                    times.append((time.perf_counter() - t0) * 1000)
                mean = statistics.fmean(times)
                print(f"pages={n} p50_ms={pct(times, 50):.3f} p99_ms={pct(times, 99):.3f} "
                      f"max_ms={max(times):.3f} mean_ms={mean:.3f} "
                      f"commits_per_s={1000 / mean:.0f}")
        finally:
            os.close(meta)
    finally:
        os.close(fd)
        os.unlink(path)


if __name__ == "__main__":
    main()
