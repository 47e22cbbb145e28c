"""Helpers shared by the DFT labellers: k-point meshes, output parsing, binaries, and
the run-through-custodian shape every DFT label has (:func:`label_through_custodian`)."""

from __future__ import annotations

import json
import math
import os
import shutil
import time

import numpy as np

from moire_al.errors import LabelError, StructureError

# k-point spacing (Å⁻¹, 2π included, as VASP's KSPACING): n_i = ceil(|b_i| / kspacing),
# then made odd so the mesh is Γ-centred and keeps the hexagonal symmetry.
DEFAULT_KSPACING = 0.3
# A mesh coarser than this (Å⁻¹) is refused: the cell is too small for its k-mesh.
MAX_KSPACING = 1.0


def kpoint_mesh(atoms, kspacing: float = DEFAULT_KSPACING, kpts=None,
                name: str = "", max_kspacing: float = MAX_KSPACING) -> list[int]:
    """Odd, Γ-containing Monkhorst-Pack mesh from a density; 1 along z (vacuum)."""
    recip = 2 * np.pi * np.linalg.norm(atoms.cell.reciprocal(), axis=1)
    if kpts is not None:
        mesh = [int(k) for k in kpts]
        if len(mesh) != 3 or min(mesh) < 1:
            raise StructureError(f"kpts must be three positive ints, got {kpts}")
    else:
        mesh = [max(1, math.ceil(recip[i] / kspacing - 1e-6)) for i in range(2)] + [1]
        mesh = [m + 1 if m % 2 == 0 else m for m in mesh]
    for i in range(2):
        if recip[i] / mesh[i] > max_kspacing:
            raise StructureError(
                f"structure {name}: cell too small for the k-mesh {mesh} "
                f"(spacing {recip[i] / mesh[i]:.2f} Å⁻¹ > {max_kspacing} along axis {i}); "
                "use a denser mesh (smaller kspacing) or a larger cell"
            )
    return mesh


def require_binary(names, what: str, install: str) -> str:
    """Path of the first executable found, or a LabelError saying what to install."""
    for n in names:
        path = shutil.which(n)
        if path:
            return path
    raise LabelError(
        f"{what} not found (looked for {', '.join(names)}); install it: {install}"
    )


def finite_floats(tokens, what: str) -> list[float]:
    out = []
    for t in tokens:
        try:
            x = float(t.replace("D", "E"))
        except ValueError as exc:
            raise LabelError(f"cannot parse {what}: {t!r}") from exc
        if not math.isfinite(x):
            raise LabelError(f"{what} is not finite: {t!r}")
        out.append(x)
    return out


def map_by_position(atoms, positions) -> np.ndarray:
    """perm such that ``positions[perm[i]]`` is atom i (minimum image, 0.05 Å tolerance)."""
    cell = atoms.cell.array
    inv = np.linalg.inv(cell)
    perm = np.empty(len(atoms), dtype=int)
    taken = set()
    for i, p in enumerate(atoms.positions):
        d = (np.asarray(positions) - p) @ inv
        d -= np.round(d)
        dist = np.linalg.norm(d @ cell, axis=1)
        j = int(np.argmin(dist))
        if dist[j] > 0.05 or j in taken:
            raise LabelError("cannot map the code's atom order back to the structure")
        taken.add(j)
        perm[i] = j
    return perm


def workdir_files(workdir) -> list[str]:
    return sorted(os.listdir(workdir)) if os.path.isdir(workdir) else []


# ------------------------------------------------------------------ custodian runs
def _handler_name(handler) -> str | None:
    """A handler's class name, from the live object or its custodian.json form."""
    if handler is None:
        return None
    if isinstance(handler, dict):  # read back from custodian.json (MSONable)
        return handler.get("@class")
    return type(handler).__name__


def custodian_corrections(run_log) -> list:
    """The corrections in custodian's run log: errors, actions and handler name each."""
    out = []
    for job in run_log or []:
        for corr in job.get("corrections", []):
            out.append({"errors": corr.get("errors"), "actions": corr.get("actions"),
                        "handler": _handler_name(corr.get("handler"))})
    return out


def corrections_from_log(workdir) -> list:
    """The corrections custodian wrote to ``<workdir>/custodian.json`` ([] if none)."""
    path = os.path.join(workdir, "custodian.json")
    if os.path.exists(path):
        try:
            with open(path) as fh:
                return custodian_corrections(json.load(fh))
        except (OSError, ValueError):
            return []
    return []


def label_through_custodian(atoms, labeller, workdir, compute, explain=None):
    """One DFT label: ``compute(workdir) -> (energy, forces, stress, code_version)`` writes
    the inputs, runs the code through custodian (leaving custodian's run log in
    ``labeller._last_log``) and parses the results. Bad input
    (:class:`~moire_al.errors.StructureError`) propagates; any other fault becomes a
    :class:`~moire_al.labelling.base.LabelFailure` with the corrections tried
    (``explain(exc)`` may first turn the fault into a clearer one)."""
    from moire_al.labelling.base import failure_from_exception, record_from_results

    # absolute: the run changes into it, and custodian then opens paths under it
    workdir = os.path.abspath(os.fspath(workdir))
    os.makedirs(workdir, exist_ok=True)
    labeller._last_log = []
    t0 = time.perf_counter()
    try:
        energy, forces, stress, version = compute(workdir)
    except StructureError:
        raise
    except Exception as exc:  # a DFT fault: recorded, never raised
        corrections = custodian_corrections(labeller._last_log) or corrections_from_log(workdir)
        return failure_from_exception(atoms, labeller, explain(exc) if explain else exc,
                                      corrections=corrections, wall_time=time.perf_counter() - t0,
                                      workdir=workdir)
    return record_from_results(
        atoms, labeller, energy, forces, stress, code=labeller.code, code_version=version,
        d3_included=bool(labeller.settings["d3"]), wall_time=time.perf_counter() - t0,
        converged=True, corrections=custodian_corrections(labeller._last_log), workdir=workdir,
    )
