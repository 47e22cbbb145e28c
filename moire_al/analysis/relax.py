"""Relaxation of (twisted) multilayers: positions, optionally the in-plane cell.

The number of optimiser steps is reported alongside convergence, since seed 003
uses it as a measure of how smooth a potential's energy landscape is.
"""

from __future__ import annotations

import resource
import time

import numpy as np

from moire_al.analysis.common import attach, calc_label
from moire_al.errors import SettingsError

OPTIMIZERS = ("LBFGS", "FIRE", "BFGS")


def _optimizer(name: str):
    name = name.upper()
    if name == "LBFGS":
        from ase.optimize import LBFGS
        return LBFGS
    if name == "FIRE":
        from ase.optimize import FIRE
        return FIRE
    if name == "BFGS":
        from ase.optimize import BFGS
        return BFGS
    raise SettingsError(f"unknown optimizer {name!r} (choose from {', '.join(OPTIMIZERS)})")


def max_force(atoms) -> float:
    f = atoms.get_forces()
    return float(np.sqrt((f ** 2).sum(axis=1)).max()) if len(f) else 0.0


def relax(atoms, calc, fmax: float = 1e-3, steps: int = 1000, optimizer: str = "LBFGS",
          relax_cell: bool = False, calc_name: str | None = None,
          trajectory: str | None = None, logfile: str | None = None):
    """Relax ``atoms`` with ``calc``; return ``(relaxed_atoms, result)``.

    Positions always; with ``relax_cell`` also the in-plane cell (a, b and the
    angle between them; the vacuum direction is kept), through a Fréchet cell
    filter. The input is not modified; the relaxed copy keeps ``info``/``arrays``.

    ``result`` keys: ``analysis``, ``calc_name``, ``n_atoms``, ``optimizer``,
    ``fmax``, ``max_steps``, ``steps``, ``converged``, ``final_fmax``,
    ``energy_initial``, ``energy_final`` (eV), ``energy_per_atom``,
    ``relax_cell``, ``cell`` (3x3, Å), ``max_displacement`` (Å), ``wall_time``
    (s), ``peak_rss_mb`` (process peak resident memory, MB).
    """
    t0 = time.perf_counter()
    work = attach(atoms, calc)
    e0 = float(work.get_potential_energy())
    pos0 = work.get_positions().copy()
    target = work
    if relax_cell:
        from ase.filters import FrechetCellFilter
        target = FrechetCellFilter(work, mask=[1, 1, 0, 0, 0, 1])
    opt = _optimizer(optimizer)(target, logfile=logfile, trajectory=trajectory)
    converged = bool(opt.run(fmax=fmax, steps=steps))
    nsteps = int(opt.get_number_of_steps())
    e1 = float(work.get_potential_energy())
    disp = work.get_positions() - pos0
    # in-plane minimum image is not needed: positions are not wrapped by ASE optimisers
    result = {
        "analysis": "relax",
        "calc_name": calc_label(calc, calc_name),
        "n_atoms": len(work),
        "optimizer": optimizer.upper(),
        "fmax": float(fmax),
        "max_steps": int(steps),
        "steps": nsteps,
        "converged": converged,
        "final_fmax": max_force(work),
        "energy_initial": e0,
        "energy_final": e1,
        "energy_per_atom": e1 / max(len(work), 1),
        "relax_cell": bool(relax_cell),
        "cell": work.cell.array.tolist(),
        "max_displacement": float(np.sqrt((disp ** 2).sum(axis=1)).max()) if len(work) else 0.0,
        "wall_time": time.perf_counter() - t0,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
    }
    for key in ("theta_deg", "moire_period", "m", "r", "material", "hash"):
        if key in atoms.info:
            result[key] = atoms.info[key]
    relaxed = work.copy()  # drops the calculator, keeps info and arrays
    relaxed.info["relaxed_with"] = result["calc_name"]
    relaxed.info["relax_converged"] = converged
    return relaxed, result
