"""Timing helpers: warm-up, repeats, medians; side-by-side ratios are what count."""

from __future__ import annotations

import statistics
import threading
import time


def median_ms(fn, warmup=3, repeats=10, min_seconds=0.0):
    """Median wall time of `fn()` in milliseconds after `warmup` calls."""
    for _ in range(warmup):
        fn()
    times = []
    start = time.perf_counter()
    while len(times) < repeats or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def interleaved_median_ms(fns, warmup=3, repeats=10, min_seconds=0.0, max_repeats=2000):
    """Median ms of each callable, timed round-robin so machine noise hits all alike: at
    least `repeats` rounds, and more until `min_seconds` have passed (fast callables get
    enough samples for a stable median), at most `max_repeats`."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    start, rounds = time.perf_counter(), 0
    while rounds < repeats or (time.perf_counter() - start < min_seconds
                               and rounds < max_repeats):
        rounds += 1
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t0) * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


def markdown_table(header, rows):
    """Rows of cells -> a Markdown table string."""
    cells = [list(map(str, header))] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(cells[0]), sep] + [line(r) for r in cells[1:]])


def peak_rss_rise_mb(fn, interval=0.002):
    """(fn(), rise of this process's resident set size in MB while fn ran, sampled every
    `interval` s): the peak memory a step needs beyond what was already held."""
    import psutil

    proc = psutil.Process()
    base, done, peak = proc.memory_info().rss, threading.Event(), [0]

    def poll():
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(interval)

    watcher = threading.Thread(target=poll, daemon=True)
    watcher.start()
    try:
        result = fn()
    finally:
        done.set()
        watcher.join()
    return result, (max(peak[0], proc.memory_info().rss) - base) / 2**20
