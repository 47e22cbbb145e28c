"""Honeycomb lattices (graphene, hBN) and stacked untwisted multilayers.

Conventions (all lengths in Å, angles in degrees at the public API):

- Primitive vectors of the unrotated layer: a1 = a (1, 0), a2 = a (1/2, √3/2)
  (60° between them). Basis: site A at 0, site B at δ = (a1 + a2)/3, so the
  nearest-neighbour distance is d_AB = a/√3 (1.42 Å for graphene).
- hBN: B on site A, N on site B. A *flipped* layer has the species swapped
  (equivalent to a 180° rotation of the layer), which is how AA' is built.
- Layers are stacked along z. The cell's c axis is the sum of the interlayer
  distances plus ``vacuum`` (default 20 Å); the bottom layer sits at z = vacuum/2.
  pbc is True along all three axes.
- Stacking shifts of a layer relative to the bottom layer (fractions of a1, a2):
  AA 0, AB (Bernal) δ, BA 2δ, SP (saddle point, midway AB→BA) (a1+a2)/2,
  Mid (midway AA→AB) δ/2. For hBN "AB" is the parallel stacking with B over N
  and N over a hexagon centre; "BA" puts N over B; "AA'" is B over N, N over B.
"""

from __future__ import annotations

import json
from typing import Sequence

import numpy as np
from ase import Atoms

from moire_al.conventions import structure_hash
from moire_al.errors import StructureError
from moire_al.conventions import plain

VACUUM = 20.0  # Å of vacuum along c, on top of the stack thickness

MATERIALS = {
    # name: (lattice constant Å, symbol on site A, symbol on site B)
    "graphene": (2.46, "C", "C"),
    "hbn": (2.504, "B", "N"),
}

SQRT3 = np.sqrt(3.0)

# Fractional (of a1, a2) in-plane shift of a layer for each letter/stacking name.
_FRAC_SHIFT = {
    "A": (0.0, 0.0),
    "B": (1 / 3, 1 / 3),
    "C": (2 / 3, 2 / 3),
    "SP": (0.5, 0.5),
    "MID": (1 / 6, 1 / 6),
}


def material_info(material: str, a: float | None = None) -> tuple[str, float, str, str]:
    """Normalised material name, lattice constant (Å) and the two basis symbols."""
    key = str(material).lower().replace("-", "").replace("_", "")
    if key in ("h bn", "hbn", "bn"):
        key = "hbn"
    if key not in MATERIALS:
        raise StructureError(f"unknown material {material!r}; use 'graphene' or 'hbn'")
    a0, sa, sb = MATERIALS[key]
    a = a0 if a is None else float(a)
    if not np.isfinite(a) or a <= 0:
        raise StructureError(f"lattice constant must be positive, got {a}")
    return key, a, sa, sb


def primitive_vectors(a: float) -> np.ndarray:
    """Rows a1, a2 of the unrotated honeycomb lattice (Å, 2x2)."""
    return a * np.array([[1.0, 0.0], [0.5, SQRT3 / 2]])


def basis_frac() -> np.ndarray:
    """Fractional coordinates of sites A and B."""
    return np.array([[0.0, 0.0], [1 / 3, 1 / 3]])


def bond_length(a: float) -> float:
    """Nearest-neighbour (A–B) distance a/√3, Å."""
    return a / SQRT3


def rotation(phi: float) -> np.ndarray:
    """2x2 counter-clockwise rotation by ``phi`` radians."""
    c, s = np.cos(phi), np.sin(phi)
    return np.array([[c, -s], [s, c]])


def layer_sites(
    material: str,
    a: float,
    M: np.ndarray,
    phi: float = 0.0,
    flip: bool = False,
    origin=(0.0, 0.0),
    shift=(0.0, 0.0),
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All sites of one layer inside a periodic supercell (vectorised).

    ``M`` (2x2 int) gives the supercell vectors in units of this layer's own
    primitive vectors, which are the unrotated ones rotated by ``phi`` (rad)
    about ``origin`` (Å). Returns (xy positions wrapped into the cell, atomic
    numbers, Cartesian 2x2 supercell rows). The enumeration is exact integer
    arithmetic, so there are never duplicate or missing sites.
    """
    from ase.data import atomic_numbers

    _, _, sa, sb = material_info(material, a)
    M = np.asarray(M, dtype=np.int64)
    det = int(round(M[0, 0] * M[1, 1] - M[0, 1] * M[1, 0]))
    if det == 0:
        raise StructureError("singular supercell matrix")
    adj = np.array([[M[1, 1], -M[0, 1]], [-M[1, 0], M[0, 0]]], dtype=np.int64)
    sgn = 1 if det > 0 else -1
    corners = np.array([[0, 0], M[0], M[1], M[0] + M[1]])
    lo, hi = corners.min(0), corners.max(0)
    i, j = np.meshgrid(np.arange(lo[0], hi[0] + 1), np.arange(lo[1], hi[1] + 1), indexing="ij")
    n = np.stack([i.ravel(), j.ravel()], axis=1)
    num = (n @ adj) * sgn  # = fractional coordinate in the supercell * |det|
    keep = np.all((num >= 0) & (num < abs(det)), axis=1)
    n = n[keep]
    assert len(n) == abs(det)
    A = primitive_vectors(a) @ rotation(phi).T  # rotated primitive vectors (rows)
    T = M @ A
    frac = (n[:, None, :] + basis_frac()[None, :, :]).reshape(-1, 2)
    xy = frac @ A + np.asarray(origin, float) + np.asarray(shift, float)
    Z = np.tile([atomic_numbers[sb], atomic_numbers[sa]] if flip else
                [atomic_numbers[sa], atomic_numbers[sb]], len(n))
    return wrap_xy(xy, T), Z, T


def wrap_xy(xy: np.ndarray, T: np.ndarray) -> np.ndarray:
    """Wrap in-plane positions into the cell spanned by the rows of ``T``."""
    f = np.linalg.solve(T.T, np.asarray(xy, float).T).T
    f -= np.floor(f)
    f[f >= 1.0 - 1e-12] = 0.0
    return f @ T


def _as_distances(distances, n_layers: int) -> np.ndarray:
    d = np.atleast_1d(np.asarray(distances, dtype=float))
    if d.size == 1:
        d = np.full(max(n_layers - 1, 0), float(d[0]))
    if d.size != max(n_layers - 1, 0):
        raise StructureError(f"need {n_layers - 1} interlayer distances for {n_layers} layers, got {d.size}")
    if np.any(~np.isfinite(d)) or np.any(d <= 0.5):
        raise StructureError(f"interlayer distances must be > 0.5 Å, got {d.tolist()}")
    return d


def assemble(
    xy_layers: Sequence[np.ndarray],
    Z_layers: Sequence[np.ndarray],
    T: np.ndarray,
    distances,
    vacuum: float = VACUUM,
) -> Atoms:
    """Stack in-plane layers into a periodic, vacuum-padded ``Atoms`` with arrays['layer']."""
    n_layers = len(xy_layers)
    d = _as_distances(distances, n_layers)
    z_layers = vacuum / 2 + np.concatenate([[0.0], np.cumsum(d)])
    c = float(d.sum() + vacuum)
    pos = np.concatenate([
        np.column_stack([xy, np.full(len(xy), z)]) for xy, z in zip(xy_layers, z_layers)
    ])
    cell = np.zeros((3, 3))
    cell[:2, :2] = T
    cell[2, 2] = c
    atoms = Atoms(numbers=np.concatenate(Z_layers), positions=pos, cell=cell, pbc=True)
    atoms.arrays["layer"] = np.concatenate(
        [np.full(len(xy), k, dtype=int) for k, xy in enumerate(xy_layers)])
    return atoms


def params_json(params: dict) -> str:
    """Stable JSON text of generator parameters (numpy values converted)."""
    return json.dumps(plain(params), sort_keys=True, separators=(",", ":"))


def finalize(atoms: Atoms, generator: str, params: dict, material: str, seed=None, **extra) -> Atoms:
    """Attach the provenance ``info`` keys of docs/interfaces.md and the content hash."""
    atoms.info["generator"] = generator
    atoms.info["params"] = params_json(params)
    atoms.info["seed"] = -1 if seed is None else int(seed)
    atoms.info["material"] = material
    atoms.info["n_layers"] = int(len(np.unique(atoms.arrays["layer"]))) if len(atoms) else 0
    atoms.info.update(extra)
    atoms.info["hash"] = structure_hash(atoms)
    return atoms


def stacking_layout(stacking: str, n_layers: int, material: str) -> tuple[np.ndarray, list[bool]]:
    """Fractional in-plane shifts (n_layers, 2) and flips for a stacking name.

    Names: "AA", "AB", "BA", "SP", "Mid" (alternating: layer 0 at the origin,
    odd layers shifted), "AA'" (alternating species flip, hBN), "ABC"
    (rhombohedral), or an explicit string of n_layers letters from A/B/C (e.g.
    "ABA", "ABCA"). Letters may be followed by ' to flip that layer (e.g. "AA'A").
    """
    s = str(stacking).strip()
    key = s.upper()
    if key in ("AA", "AB", "BA", "SP", "MID", "AA'", "AB'", "BA'"):
        odd = {"AA": "A", "AB": "B", "BA": "C", "SP": "SP", "MID": "MID",
               "AA'": "A", "AB'": "B", "BA'": "C"}[key]
        flip_odd = key.endswith("'")
        shifts = np.array([_FRAC_SHIFT["A"] if k % 2 == 0 else _FRAC_SHIFT[odd] for k in range(n_layers)])
        flips = [flip_odd and k % 2 == 1 for k in range(n_layers)]
    elif key == "ABC" and n_layers != 3:
        shifts = np.array([_FRAC_SHIFT["ABC"[k % 3]] for k in range(n_layers)])
        flips = [False] * n_layers
    else:
        letters, flips = [], []
        for ch in key:
            if ch in "ABC":
                letters.append(ch)
                flips.append(False)
            elif ch == "'" and letters:
                flips[-1] = True
            else:
                raise StructureError(f"unknown stacking {stacking!r}")
        if len(letters) != n_layers:
            raise StructureError(f"stacking {stacking!r} has {len(letters)} layers, expected {n_layers}")
        shifts = np.array([_FRAC_SHIFT[ch] for ch in letters])
    if material != "hbn":
        flips = [False] * n_layers  # graphene: a flipped layer is the same layer
    return shifts, flips


def monolayer(material: str = "graphene", a: float | None = None, n=1, vacuum: float = VACUUM) -> Atoms:
    """Flat monolayer in an n x n (or n1 x n2) supercell of the 2-atom cell.

    ``a``: lattice constant in Å (default 2.46 graphene, 2.504 hBN).
    """
    material, a, _, _ = material_info(material, a)
    n1, n2 = (int(n), int(n)) if np.isscalar(n) else (int(n[0]), int(n[1]))
    if n1 < 1 or n2 < 1:
        raise StructureError(f"supercell size must be >= 1, got {n}")
    xy, Z, T = layer_sites(material, a, np.diag([n1, n2]))
    atoms = assemble([xy], [Z], T, [], vacuum)
    return finalize(atoms, "monolayer", {"material": material, "a": a, "n": [n1, n2], "vacuum": vacuum},
                    material, a=a)


def multilayer(
    material: str = "graphene",
    stacking: str = "AB",
    distances=3.35,
    n=1,
    a: float | None = None,
    shifts=None,
    n_layers: int | None = None,
    vacuum: float = VACUUM,
) -> Atoms:
    """Untwisted multilayer in an n x n supercell.

    ``distances``: one interlayer distance (Å) for all pairs, or a list of
    n_layers-1. ``n_layers`` defaults to len(distances)+1 when a list is given,
    else to the number of letters in an explicit stacking like "ABA", else 2.
    ``shifts``: optional extra in-plane shift per layer, (n_layers, 2) in Å,
    added to the stacking's shift (any disregistry vector).
    """
    material, a, _, _ = material_info(material, a)
    if n_layers is None:
        d = np.atleast_1d(distances)
        letters = [c for c in str(stacking).upper() if c in "ABC"]
        if d.size > 1:
            n_layers = d.size + 1
        elif shifts is not None:
            n_layers = len(np.atleast_2d(shifts))
        elif str(stacking).upper() not in ("AA", "AB", "BA", "SP", "MID", "AA'", "AB'", "BA'") and letters:
            n_layers = len(letters)
        else:
            n_layers = 2
    n_layers = int(n_layers)
    if n_layers < 1:
        raise StructureError("n_layers must be >= 1")
    fshift, flips = stacking_layout(stacking, n_layers, material)
    A = primitive_vectors(a)
    extra = np.zeros((n_layers, 2)) if shifts is None else np.asarray(shifts, float).reshape(-1, 2)
    if len(extra) != n_layers:
        raise StructureError(f"shifts must have one row per layer ({n_layers}), got {len(extra)}")
    n1, n2 = (int(n), int(n)) if np.isscalar(n) else (int(n[0]), int(n[1]))
    xys, Zs = [], []
    for k in range(n_layers):
        xy, Z, T = layer_sites(material, a, np.diag([n1, n2]), flip=flips[k],
                               shift=fshift[k] @ A + extra[k])
        xys.append(xy)
        Zs.append(Z)
    atoms = assemble(xys, Zs, T, distances, vacuum)
    params = {"material": material, "stacking": stacking, "distances": np.atleast_1d(distances),
              "n": [n1, n2], "a": a, "shifts": extra, "n_layers": n_layers, "vacuum": vacuum}
    return finalize(atoms, "multilayer", params, material, stacking=str(stacking), a=a)
