"""The tests' small structure builders (tests/samples.py, tests/synthetic.py) for the
benchmark scripts, which run as ``python benchmarks/NAME.py`` from the checkout."""

from __future__ import annotations

import importlib
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
