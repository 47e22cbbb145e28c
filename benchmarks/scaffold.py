"""The tests' small structure builders (tests/samples.py, tests/synthetic.py) for the
benchmark scripts, which run as ``python benchmarks/NAME.py`` from the checkout, and their
one way of running a measurement in a fresh process."""

from __future__ import annotations

import importlib
import multiprocessing as mp
import queue
import sys
from pathlib import Path

TESTS = str(Path(__file__).resolve().parents[1] / "tests")


def _load(name: str):
    if TESTS not in sys.path:
        sys.path.insert(0, TESTS)
    return importlib.import_module(name)


def synthetic():
    return _load("synthetic")


def samples():
    return _load("samples")


def in_child(target, *args):
    """What ``target(*args, q)`` puts on its queue, run in a fresh spawned process (JAX is
    multithreaded: no fork; a fresh process carries no state of earlier measurements)."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=target, args=(*args, q))
    p.start()
    while True:                 # a child that dies without an answer ends the wait (q.get would hang)
        try:
            got = q.get(timeout=1.0)
            break
        except queue.Empty:
            if not p.is_alive():
                raise RuntimeError(f"{target.__name__} died in its child process (exit code {p.exitcode})")
    p.join()
    return got
