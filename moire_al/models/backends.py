"""Backends: ace-jax (default) and an optional ACEpotentials.jl backend via juliacall.

The Julia backend is only *detected* here: ``julia --version`` and a juliacall
probe run in subprocesses with a timeout and ``PYTHON_JULIAPKG_OFFLINE=yes`` (so
nothing is downloaded). A ``julia`` executable that fails (e.g. the PyPI shim that
exits 1) counts as absent. When absent the default ace-jax backend is used.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass

DEFAULT_BACKEND = "ace-jax"


@dataclass
class BackendStatus:
    name: str
    available: bool
    reason: str


def _run(cmd, timeout):
    env = dict(os.environ, PYTHON_JULIAPKG_OFFLINE="yes")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def julia_backend_status(timeout: float = 60.0) -> BackendStatus:
    """Whether ACEpotentials.jl can be used here, with the reason if not."""
    exe = shutil.which("julia")
    if exe is None:
        return BackendStatus("acepotentials.jl", False, "no `julia` executable on PATH")
    try:
        r = _run([exe, "--version"], timeout)
    except (subprocess.TimeoutExpired, OSError) as exc:
        return BackendStatus("acepotentials.jl", False, f"`julia --version` failed: {exc}")
    if r.returncode != 0 or "julia version" not in (r.stdout + r.stderr).lower():
        return BackendStatus("acepotentials.jl", False,
                             f"`{exe} --version` exited {r.returncode} without a Julia version "
                             "(a shim, not a Julia install)")
    probe = "import juliacall; juliacall.Main.seval('using ACEpotentials'); print('ok')"
    try:
        r = _run([sys.executable, "-c", probe], timeout)
    except (subprocess.TimeoutExpired, OSError) as exc:
        return BackendStatus("acepotentials.jl", False, f"juliacall probe failed: {exc}")
    if r.returncode != 0 or "ok" not in r.stdout:
        tail = (r.stderr.strip().splitlines() or ["no output"])[-1]
        return BackendStatus("acepotentials.jl", False, f"juliacall cannot load ACEpotentials: {tail}")
    return BackendStatus("acepotentials.jl", True, "julia and ACEpotentials.jl found")


def select_backend(requested: str | None = None) -> str:
    """The backend to use: the requested one when available, else ace-jax with a message."""
    import logging

    if requested in (None, "", DEFAULT_BACKEND):
        return DEFAULT_BACKEND
    if requested in ("julia", "acepotentials.jl"):
        st = julia_backend_status()
        if st.available:
            return "acepotentials.jl"
        logging.getLogger(__name__).warning("ACEpotentials.jl backend unavailable (%s); using %s",
                                            st.reason, DEFAULT_BACKEND)
        return DEFAULT_BACKEND
    from moire_al.errors import ModelError

    raise ModelError(f"unknown backend {requested!r} (ace-jax, acepotentials.jl)")
