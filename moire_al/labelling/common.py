"""Helpers shared by the DFT labellers: k-point meshes, output parsing, binaries."""

from __future__ import annotations

import math
import os
import shutil

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
