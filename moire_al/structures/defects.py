"""Point defects in one layer of a (multi)layer: vacancy, Stone–Wales, interstitials.

``site`` selects where, always within ``layer``:
  - None: the atom of that layer closest (in plane) to the cell centre;
  - int: a global atom index (must belong to ``layer``);
  - (x, y): the atom of that layer closest to this in-plane point (Å).
Each function returns a new ``Atoms`` (the input is not modified) with
``info['generator']`` set to the defect kind, the parent hash in ``params``
and a fresh content hash.
"""

from __future__ import annotations

import json

import numpy as np
from ase import Atoms

from moire_al.errors import StructureError
from moire_al.structures.lattice import finalize


def _layer_mask(atoms: Atoms, layer: int) -> np.ndarray:
    if "layer" not in atoms.arrays:
        raise StructureError("structure has no arrays['layer']; cannot place a defect in a layer")
    mask = atoms.arrays["layer"] == int(layer)
    if not mask.any():
        raise StructureError(f"layer {layer} does not exist (layers: {sorted(set(atoms.arrays['layer'].tolist()))})")
    return mask


def _inplane_mic(atoms: Atoms, vecs: np.ndarray) -> np.ndarray:
    """Minimum-image in-plane vectors (cells with c along z)."""
    T = atoms.cell.array[:2, :2]
    f = np.linalg.solve(T.T, np.atleast_2d(vecs).T).T
    f -= np.round(f)
    best = f @ T
    for i in (-1, 0, 1):
        for j in (-1, 0, 1):
            cand = (f + [i, j]) @ T
            sh = np.linalg.norm(cand, axis=1) < np.linalg.norm(best, axis=1) - 1e-12
            best[sh] = cand[sh]
    return best


def pick_site(atoms: Atoms, layer: int, site=None) -> int:
    """Global index of the chosen atom of ``layer`` (see module docstring)."""
    mask = _layer_mask(atoms, layer)
    idx = np.where(mask)[0]
    if site is not None and np.ndim(site) == 0:
        k = int(site)
        if not (0 <= k < len(atoms)) or not mask[k]:
            raise StructureError(f"atom {site} is not in layer {layer}")
        return k
    if site is None:
        point = 0.5 * (atoms.cell.array[0, :2] + atoms.cell.array[1, :2])
    else:
        point = np.asarray(site, float)[:2]
    d = np.linalg.norm(_inplane_mic(atoms, atoms.positions[idx, :2] - point), axis=1)
    return int(idx[np.argmin(d)])


def _neighbours_in_layer(atoms: Atoms, k: int, n: int = 3) -> np.ndarray:
    mask = _layer_mask(atoms, atoms.arrays["layer"][k])
    idx = np.where(mask & (np.arange(len(atoms)) != k))[0]
    d = np.linalg.norm(_inplane_mic(atoms, atoms.positions[idx, :2] - atoms.positions[k, :2]), axis=1)
    return idx[np.argsort(d)[:n]]


def _done(new: Atoms, parent: Atoms, kind: str, params: dict) -> Atoms:
    new.info = {k: v for k, v in parent.info.items() if k not in ("hash", "generator", "params")}
    params = dict(params, parent_hash=parent.info.get("hash"), parent_generator=parent.info.get("generator"),
                  parent_params=json.loads(parent.info["params"]) if "params" in parent.info else None)
    material = parent.info.get("material", "hbn" if "B" in parent.symbols else "graphene")
    return finalize(new, kind, params, material, seed=parent.info.get("seed"))


def _default_symbol(atoms: Atoms) -> str:
    return "B" if "B" in set(atoms.get_chemical_symbols()) else "C"


def vacancy(atoms: Atoms, layer: int = 0, site=None) -> Atoms:
    """Remove one atom of ``layer``."""
    k = pick_site(atoms, layer, site)
    new = atoms.copy()
    del new[k]
    return _done(new, atoms, "vacancy", {"layer": int(layer), "removed_index": k,
                                          "removed_position": atoms.positions[k]})


def stone_wales(atoms: Atoms, layer: int = 0, site=None) -> Atoms:
    """Rotate the bond between the chosen atom and its nearest in-layer neighbour by 90° about its centre."""
    k = pick_site(atoms, layer, site)
    j = int(_neighbours_in_layer(atoms, k, 1)[0])
    new = atoms.copy()
    b = _inplane_mic(atoms, atoms.positions[j, :2] - atoms.positions[k, :2])[0]
    mid = atoms.positions[k, :2] + b / 2
    rot = np.array([-b[1], b[0]])  # bond turned by 90°
    new.positions[k, :2] = mid - rot / 2
    new.positions[j, :2] = mid + rot / 2
    new.wrap()
    return _done(new, atoms, "stone_wales", {"layer": int(layer), "bond": [k, j]})


def interstitial_intralayer(atoms: Atoms, layer: int = 0, site=None, symbol: str | None = None,
                            height: float = 0.0) -> Atoms:
    """Add one atom in ``layer`` at the centre of a hexagon next to the chosen atom.

    ``height`` (Å) lifts it out of the plane; ``symbol`` defaults to C (graphene)
    or B (hBN). The new atom gets the same layer index.
    """
    k = pick_site(atoms, layer, site)
    nb = _neighbours_in_layer(atoms, k, 3)
    vec = _inplane_mic(atoms, atoms.positions[nb[:2], :2] - atoms.positions[k, :2])
    centre = atoms.positions[k, :2] + vec.sum(0)  # k + b1 + b2 is the hexagon centre between them
    return _add(atoms, layer, centre, atoms.positions[k, 2] + height, symbol, "interstitial_intralayer",
                {"layer": int(layer), "site_index": k, "height": height})


def interstitial_interlayer(atoms: Atoms, layer: int = 0, site=None, symbol: str | None = None) -> Atoms:
    """Add one atom midway between ``layer`` and ``layer + 1``, above the chosen atom of ``layer``.

    The new atom is labelled with ``layer`` (the lower of the two).
    """
    k = pick_site(atoms, layer, site)
    upper = atoms.arrays["layer"] == int(layer) + 1
    if not upper.any():
        raise StructureError(f"no layer above layer {layer} for an interlayer interstitial")
    z = 0.5 * (atoms.positions[k, 2] + atoms.positions[upper, 2].mean())
    return _add(atoms, layer, atoms.positions[k, :2], z, symbol, "interstitial_interlayer",
                {"layer": int(layer), "site_index": k})


def _add(atoms, layer, xy, z, symbol, kind, params):
    symbol = symbol or _default_symbol(atoms)
    new = atoms.copy()
    extra = Atoms(symbol, positions=[[xy[0], xy[1], z]])
    extra.arrays["layer"] = np.array([int(layer)])
    for key in new.arrays:
        if key not in ("numbers", "positions", "layer"):
            extra.arrays[key] = np.zeros((1,) + new.arrays[key].shape[1:], dtype=new.arrays[key].dtype)
    new += extra
    new.wrap()
    return _done(new, atoms, kind, dict(params, symbol=symbol))
