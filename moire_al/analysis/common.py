"""Small helpers shared by the analyses: materials, layers, JSON-friendly output."""

from __future__ import annotations

import json
import math
import os
from typing import Any

import numpy as np
from moire_al.conventions import plain

# In-plane lattice constants (Å) used when a structure does not say otherwise.
LATTICE_CONSTANT = {"graphene": 2.46, "hbn": 2.504}
# Interlayer spacing used to turn a sheet's 2D stress into a 3D one (Å per layer).
LAYER_THICKNESS = 3.35
EV_PER_A3_TO_GPA = 160.21766208


def material_of(atoms, material: str | None = None) -> str:
    """``"graphene"`` or ``"hbn"``: from the argument, ``info`` or the elements."""
    if material:
        return str(material).lower()
    if atoms is not None and atoms.info.get("material"):
        return str(atoms.info["material"]).lower()
    if atoms is not None and set(atoms.get_chemical_symbols()) <= {"C"}:
        return "graphene"
    return "hbn"


def lattice_constant(material: str, a: float | None = None) -> float:
    return float(a) if a else LATTICE_CONSTANT[material_of(None, material)]


def layers_of(atoms) -> np.ndarray:
    """Layer index per atom (:func:`moire_al.geometry.find_layers`)."""
    from moire_al.geometry import find_layers

    return find_layers(atoms)


def calc_label(calc, calc_name: str | None = None) -> str:
    """A name for the calculator to store with the results."""
    if calc_name:
        return str(calc_name)
    return str(getattr(calc, "label_name", None) or getattr(calc, "name", None)
               or type(calc).__name__)


def attach(atoms, calc):
    """A copy of ``atoms`` (info and arrays kept) with ``calc`` attached."""
    new = atoms.copy()
    new.calc = calc
    return new


def jsonable(obj: Any) -> Any:
    """Results as plain JSON: numpy to Python, NaN/inf to None."""
    return plain(obj, finite_only=True)


def write_json(result: dict, path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as fh:
        json.dump(jsonable(result), fh, indent=1)
    return path


def inplane_tiles(n: int = 1):
    """Integer in-plane image offsets (i, j) with |i|, |j| <= n."""
    return [(i, j) for i in range(-n, n + 1) for j in range(-n, n + 1)]


def tiled_xy(positions: np.ndarray, cell: np.ndarray, n: int = 1):
    """In-plane positions repeated over (2n+1)^2 periodic images, and the source index."""
    xy = []
    idx = []
    for i, j in inplane_tiles(n):
        xy.append(positions[:, :2] + i * cell[0, :2] + j * cell[1, :2])
        idx.append(np.arange(len(positions)))
    return np.concatenate(xy), np.concatenate(idx)


# The analyses' cells in the orientation their paths and axes assume: the 2-atom cell
# a1 = (a, 0), a2 = (-a/2, a√3/2) (120°) with bonds along y (armchair), i.e. the honeycomb
# of moire_al.structures.lattice rotated by 60° (which maps the lattice onto itself).
_ROT = np.pi / 3
_M_PRIMITIVE = np.array([[1, -1], [0, 1]])  # (a, 0), (-a/2, a√3/2) in the rotated primitive vectors


def _honeycomb(material, a, M, shift=(0.0, 0.0), flip=False):
    from moire_al.structures.lattice import layer_sites

    return layer_sites(material, a, M, phi=_ROT, flip=flip, shift=shift)


def primitive_bilayer(material: str, shift_bonds: float = 0.0, d: float = 3.4,
                      a: float | None = None, swap_top: bool = False,
                      vacuum: float = 20.0):
    """Two-layer primitive cell (4 atoms): top layer shifted by ``shift_bonds`` bond
    lengths along the bond (armchair) direction relative to AA (eclipsed) stacking.

    ``shift_bonds``: 0 = AA, 1 = AB (Bernal), 1.5 = SP (saddle point, between AB and
    BA), 0.5 = "Mid" (between AA and AB). For hBN, ``swap_top`` exchanges B and N in
    the top layer, so shift 0 with ``swap_top`` is AA' (B over N).
    """
    from moire_al.structures.lattice import assemble

    material = material_of(None, material)
    a = lattice_constant(material, a)
    b = a / math.sqrt(3.0)
    xy0, z0, T = _honeycomb(material, a, _M_PRIMITIVE)
    xy1, z1, _ = _honeycomb(material, a, _M_PRIMITIVE, shift=(0.0, shift_bonds * b),
                            flip=swap_top and material == "hbn")
    atoms = assemble([xy0, xy1], [z0, z1], T, [d], vacuum)
    atoms.info["material"] = material
    atoms.info["n_layers"] = 2
    return atoms


def rectangular_monolayer(material: str, nx: int = 4, ny: int = 3, a: float | None = None,
                          vacuum: float = 20.0):
    """Orthogonal monolayer cell: x along zigzag (length nx·a), y along armchair
    (length ny·√3·a); 4·nx·ny atoms."""
    from moire_al.structures.lattice import assemble

    material = material_of(None, material)
    a = lattice_constant(material, a)
    xy, z, T = _honeycomb(material, a, np.array([[nx, -nx], [ny, ny]]))
    atoms = assemble([xy], [z], T, [], vacuum)
    atoms.info["material"] = material
    atoms.info["n_layers"] = 1
    return atoms
