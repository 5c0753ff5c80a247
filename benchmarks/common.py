"""Helpers for side-by-side timing on a noisy machine: interleaved repetitions, medians."""
from __future__ import annotations

import statistics
import time
from typing import Callable


#: the last call's CPU-time medians (process time of all threads), beside the wall-clock ones
LAST_CPU_MEDIANS: dict[str, float] = {}


def interleaved_medians(fns: dict[str, Callable[[], object]], *, repeats: int = 7, warmup: int = 1) -> dict[str, float]:
    """Run each function ``warmup`` times, then ``repeats`` rounds of all of them in turn
    (so that machine noise hits every contender alike); median wall seconds per function.

    The median CPU seconds (all threads of this process) are left in ``LAST_CPU_MEDIANS``: on a
    shared machine they measure the work done and are far less noisy than wall time (run with
    ``OMP_WAIT_POLICY=PASSIVE`` so that idle worker threads do not spin)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            c = time.process_time()
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
            cpu[k].append(time.process_time() - c)
    LAST_CPU_MEDIANS.clear()
    LAST_CPU_MEDIANS.update({k: statistics.median(v) for k, v in cpu.items()})
    return {k: statistics.median(v) for k, v in times.items()}


def in_fresh_processes(script: str, argv: list[str], n: int) -> list[dict]:
    """Run ``script`` (which prints one JSON object) ``n`` times, one fresh interpreter after
    another, and return the parsed outputs: a process's allocation history (glibc's heap, page
    faults of large temporaries) moves its timings as a whole, more than repetitions inside it."""
    import json
    import subprocess
    import sys

    runs = []
    for _ in range(n):
        out = subprocess.run([sys.executable, script, *argv], check=True, capture_output=True, text=True).stdout
        runs.append(json.loads(out[out.index("{"):]))
    return runs


def median_of(runs: list[dict], keys: list[str]) -> dict[str, float]:
    """Per-key median over ``runs`` (nested keys as ``a.b``)."""
    def get(run: dict, key: str) -> float:
        for part in key.split("."):
            run = run[part]
        return run
    return {k: statistics.median(get(r, k) for r in runs) for k in keys}
