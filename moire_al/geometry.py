"""Geometry every package shares: which layer an atom is in, overlapping atoms.

One implementation each (labelling, analysis, structures and the CLI all use these):

- :func:`find_layers`: ``arrays["layer"]`` when present, else clustering of z, with z
  unwrapped across the periodic boundary first, so a layer that straddles the cell's
  top/bottom face is one layer;
- :func:`layer_count`: ``info["n_layers"]`` or the number of :func:`find_layers` layers;
- :func:`check_overlaps`: a :class:`~moire_al.errors.StructureError` naming the closest
  pair when two atoms (periodic images included) are closer than a threshold. The
  thresholds differ by purpose: 0.5 Å when a file is read (``structures.io``: atoms that
  close are one atom twice), 0.7 Å before a labeller runs (no code should label that).

Stress tensors: ASE's ``ase.stress.full_3x3_to_voigt_6_stress`` and its inverse.
"""

from __future__ import annotations

import numpy as np

from moire_al.errors import StructureError

#: Atoms in one layer are within this z distance (Å) of a neighbour in the layer.
LAYER_Z_GAP = 1.5


def vacuum_shift(frac_z: np.ndarray, cz: float) -> tuple[float, float]:
    """(shift in fractional z that puts the widest gap at the cell boundary, gap Å)."""
    fz = np.sort(np.mod(frac_z, 1.0))
    if len(fz) == 0:
        return 0.0, cz
    gaps = np.diff(np.concatenate([fz, [fz[0] + 1.0]]))
    k = int(np.argmax(gaps))
    start = fz[(k + 1) % len(fz)]  # first atom after the widest gap
    return -start + 0.5 * gaps[k], gaps[k] * cz


def unwrapped_z(atoms) -> np.ndarray:
    """Heights (Å along the plane normal) with the widest vacuum gap at the cell boundary."""
    cell = atoms.cell.array
    if atoms.pbc[2] and abs(np.linalg.det(cell)) > 1e-9:
        frac = np.linalg.solve(cell.T, atoms.positions.T).T
        shift, _ = vacuum_shift(frac[:, 2], np.linalg.norm(cell[2]))
        fz = np.mod(frac[:, 2] + shift, 1.0)
        return fz * abs(np.linalg.det(cell)) / np.linalg.norm(np.cross(cell[0], cell[1]))
    return atoms.positions[:, 2].copy()


def find_layers(atoms, z_gap: float = LAYER_Z_GAP) -> np.ndarray:
    """Layer index per atom (0 = bottom): ``arrays["layer"]`` or z clustering."""
    if "layer" in atoms.arrays:
        layer = np.asarray(atoms.arrays["layer"]).astype(int).ravel()
        if layer.shape != (len(atoms),) or (layer < 0).any():
            raise StructureError("arrays['layer'] must be one non-negative int per atom")
        return layer
    z = unwrapped_z(atoms)
    order = np.argsort(z, kind="stable")
    layer = np.empty(len(atoms), dtype=int)
    current = 0
    for k, i in enumerate(order):
        if k and z[i] - z[order[k - 1]] > z_gap:
            current += 1
        layer[i] = current
    return layer


def layer_count(atoms) -> int:
    """Number of layers: ``info["n_layers"]`` (structures built by moire-al), else :func:`find_layers`."""
    if "n_layers" in atoms.info:
        return int(atoms.info["n_layers"])
    return int(find_layers(atoms).max()) + 1 if len(atoms) else 0


def check_overlaps(atoms, min_dist: float) -> None:
    """Raise :class:`StructureError` if two atoms are closer than ``min_dist`` Å."""
    from ase.neighborlist import neighbor_list

    if len(atoms) < 2:
        return
    i, j, d = neighbor_list("ijd", atoms, min_dist, self_interaction=False)
    if len(d):
        k = int(np.argmin(d))
        raise StructureError(f"atoms {min(i[k], j[k])} and {max(i[k], j[k])} overlap "
                             f"({d[k]:.3f} Å apart, < {min_dist} Å)")
