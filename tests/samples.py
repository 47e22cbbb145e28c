"""Small structures for the labelling tests and benchmarks.

Self-contained (no dependency on ``moire_al.structures``) so the labelling
package can be tested on its own. Cells follow the project's conventions:
periodic in x, y and z with vacuum along z, ``arrays["layer"]``,
``info["material"]``.
"""

from __future__ import annotations

import numpy as np
from ase import Atoms

LATTICE = {"graphene": 2.46, "hbn": 2.504}
SPECIES = {"graphene": ("C", "C"), "hbn": ("B", "N")}


def _basis(a: float):
    a1 = np.array([a, 0.0])
    a2 = np.array([0.5 * a, 0.5 * np.sqrt(3) * a])
    return a1, a2


def _rot(theta_rad: float) -> np.ndarray:
    c, s = np.cos(theta_rad), np.sin(theta_rad)
    return np.array([[c, -s], [s, c]])


def _fill(cell2: np.ndarray, a: float, species, rot: np.ndarray, shift: np.ndarray,
          swap: bool = False):
    """Atoms of a (rotated, shifted) honeycomb layer inside the 2-D supercell."""
    a1, a2 = _basis(a)
    sites = [np.zeros(2), (a1 + a2) / 3.0]
    if swap:
        species = species[::-1]
    span = int(np.ceil(np.abs(cell2).sum() / a)) + 2
    inv = np.linalg.inv(cell2)
    out_pos = []
    for i in range(-span, span + 1):
        for j in range(-span, span + 1):
            for site, sym in zip(sites, species):
                p = rot @ (i * a1 + j * a2 + site) + shift
                f = p @ inv
                f = f - np.floor(f + 1e-9)
                if np.all(f < 1 - 1e-6):
                    key = tuple(np.round(f, 6))
                    out_pos.append((key, f @ cell2, sym))
    seen, pos, syms = set(), [], []
    for key, p, s in out_pos:
        if key not in seen:
            seen.add(key)
            pos.append(p)
            syms.append(s)
    return np.array(pos), syms


def stacked(material: str = "graphene", stacking: str = "AB", d: float = 3.4, n: int = 1,
            n_layers: int | None = None, vacuum: float = 20.0) -> Atoms:
    """Untwisted stack: ``stacking`` is a string of A/B/C per layer ("A", "AB", "ABA", "AA'")."""
    a = LATTICE[material]
    a1, a2 = _basis(a)
    shifts = {"A": np.zeros(2), "B": (a1 + a2) / 3.0, "C": 2 * (a1 + a2) / 3.0}
    layers = []
    s = stacking
    while s:
        if s.startswith("A'"):
            layers.append(("A", True))
            s = s[2:]
        else:
            layers.append((s[0], False))
            s = s[1:]
    if n_layers is not None:
        layers = layers[:n_layers]
    cell2 = np.array([a1, a2]) * n
    pos_all, sym_all, lay_all = [], [], []
    for k, (lab, swap) in enumerate(layers):
        p, sy = _fill(cell2, a, SPECIES[material], np.eye(2), shifts[lab], swap)
        pos_all.append(np.column_stack([p, np.full(len(p), k * d)]))
        sym_all += sy
        lay_all += [k] * len(p)
    return _finish(np.vstack(pos_all), sym_all, lay_all, cell2, len(layers), d, vacuum,
                   material, f"stacked_{stacking}")


def twisted_21_79(material: str = "graphene", d: float = 3.4, n_layers: int = 2,
                  vacuum: float = 20.0) -> Atoms:
    """The 21.79° twisted stack (m=1, r=1): 14 atoms per layer, AA-aligned at the origin.

    Layers alternate 0, θ, 0, ... (28 atoms for a bilayer).
    """
    a = LATTICE[material]
    a1, a2 = _basis(a)
    t1 = 2 * a1 + a2
    t2 = -a1 + 3 * a2
    v = a1 + 2 * a2
    theta = np.arctan2(t1[1], t1[0]) - np.arctan2(v[1], v[0])
    cell2 = np.array([t1, t2])
    pos_all, sym_all, lay_all = [], [], []
    for k in range(n_layers):
        rot = _rot(theta) if k % 2 else np.eye(2)
        p, sy = _fill(cell2, a, SPECIES[material], rot, np.zeros(2), swap=bool(k % 2) and
                      material == "hbn")
        pos_all.append(np.column_stack([p, np.full(len(p), k * d)]))
        sym_all += sy
        lay_all += [k] * len(p)
    at = _finish(np.vstack(pos_all), sym_all, lay_all, cell2, n_layers, d, vacuum, material,
                 "twisted_bilayer")
    at.info["theta_deg"] = float(np.degrees(abs(theta)))
    return at


def _finish(pos, syms, layers, cell2, n_layers, d, vacuum, material, generator) -> Atoms:
    height = (n_layers - 1) * d + vacuum
    cell = np.zeros((3, 3))
    cell[:2, :2] = cell2
    cell[2, 2] = height
    pos = pos.copy()
    pos[:, 2] += 0.5 * vacuum
    at = Atoms(symbols=syms, positions=pos, cell=cell, pbc=True)
    at.arrays["layer"] = np.asarray(layers, dtype=int)
    at.info["material"] = material
    at.info["n_layers"] = n_layers
    at.info["generator"] = generator
    return at
