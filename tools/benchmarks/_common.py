"""Shared helpers of the benchmark scripts: timing, machine description, the JSON line."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch


def base_parser(description: str) -> argparse.ArgumentParser:
    """The options every benchmark takes: ``--quick``, ``--repeats``, ``--threads``."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true",
                   help="tiny sizes for a smoke test (the numbers mean nothing)")
    p.add_argument("--repeats", type=int, default=None, help="timed repetitions per side")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (default 1: on a shared 2-core machine a second "
                        "thread stalls at every barrier while other jobs hold a core)")
    return p


@contextlib.contextmanager
def configured(args):
    """Set torch's thread count (restored afterwards) and keep tiny models built for
    benchmarks out of the user's cache unless ``COPRS_HOME`` is set."""
    old = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("COPRS_HOME", "/tmp/coprs_home_bench")
    try:
        yield
    finally:
        torch.set_num_threads(old)


def machine() -> dict:
    return dict(cpu_count=os.cpu_count(), torch_threads=torch.get_num_threads(),
                torch=torch.__version__, python=platform.python_version(),
                processor=platform.processor() or platform.machine())


def timed(fn: Callable):
    """(seconds, result) of one call."""
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def interleaved(sides: dict[str, Callable], repeats: int) -> dict[str, list[float]]:
    """Time each side ``repeats`` times, alternating sides so that load from other processes
    falls on both alike."""
    times: dict[str, list[float]] = {k: [] for k in sides}
    for _ in range(repeats):
        for name, fn in sides.items():
            times[name].append(timed(fn)[0])
    return times


def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def emit(result: dict) -> dict:
    """Print the result as one JSON object on the last line of stdout."""
    print(json.dumps(result, sort_keys=True), flush=True)
    return result
