"""Commensurate twisted bilayers and alternating-twist multilayers.

A commensurate cell is labelled by coprime integers (m, r) with

    cos θ = (3m² + 3mr + r²/2) / (3m² + 3mr + r²).

When gcd(r, 3) = 1, with (p, q) = (m, m + r), the lattice vector v = p a1 + q a2
and its mirror w = q a1 + p a2 have the same length and make the angle θ. The
bottom layer is rotated by −θ/2 and the top by +θ/2 about a common site (the AA
point), so T1 = R(−θ/2) v = R(+θ/2) w is a lattice vector of both layers, and
T2 = R(60°) T1. When gcd(r, 3) = 3, (p, q) = (r/3, m + r/3) and θ = 60° − θ'
where θ' is the mirror angle of (p, q); then T1 = R(−θ/2) R(60°) w = R(+θ/2) v. Each layer holds
p² + pq + q² primitive cells, i.e. the bilayer 4(p² + pq + q²) atoms.
Multilayers alternate −θ/2, +θ/2, −θ/2, … so every layer fits the same cell.
"""

from __future__ import annotations

from math import gcd

import numpy as np
from ase import Atoms

from moire_al.errors import StructureError
from moire_al.structures.lattice import (
    VACUUM, assemble, finalize, material_info, layer_sites, primitive_vectors, rotation,
)


def _check_mr(m: int, r: int) -> tuple[int, int]:
    if int(m) != m or int(r) != r:
        raise StructureError(f"(m, r) must be integers, got ({m}, {r})")
    m, r = int(m), int(r)
    if m < 1 or r < 1:
        raise StructureError(f"(m, r) must be positive, got ({m}, {r})")
    if gcd(m, r) != 1:
        raise StructureError(f"(m, r) must be coprime, got ({m}, {r})")
    return m, r


def _pq(m: int, r: int) -> tuple[int, int]:
    if r % 3 == 0:
        return r // 3, m + r // 3
    return m, m + r


def commensurate_angle(m: int, r: int) -> float:
    """Twist angle θ (degrees) of the commensurate cell (m, r)."""
    m, r = _check_mr(m, r)
    num = 3 * m * m + 3 * m * r + r * r / 2
    den = 3 * m * m + 3 * m * r + r * r
    return float(np.degrees(np.arccos(num / den)))


def commensurate_cell(m: int, r: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Integer supercell matrices of layer 1 (at −θ/2) and layer 2 (at +θ/2), bilayer atom count.

    Rows of each matrix are the supercell vectors T1, T2 in units of that
    layer's own (rotated) primitive vectors a1, a2.
    """
    m, r = _check_mr(m, r)
    p, q = _pq(m, r)
    if r % 3 == 0:
        # θ = 60° − θ'(p, q): T1 is R(60°) of the mirror vector in layer 1.
        M1 = np.array([[-p, p + q], [-(p + q), q]], dtype=int)
        M2 = np.array([[p, q], [-q, p + q]], dtype=int)
    else:
        M1 = np.array([[p, q], [-q, p + q]], dtype=int)
        M2 = np.array([[q, p], [-p, p + q]], dtype=int)
    return M1, M2, 4 * (p * p + p * q + q * q)


def moire_period(theta_deg: float, a: float = 2.46) -> float:
    """Moiré period a / (2 sin(θ/2)) in Å (``a`` in Å, θ in degrees)."""
    s = np.sin(np.radians(theta_deg) / 2)
    if s == 0:
        return float("inf")
    return float(a / (2 * abs(s)))


def list_commensurate(max_atoms: int, r_values=None) -> list[tuple[float, int, int, int]]:
    """All commensurate bilayer cells with at most ``max_atoms`` atoms.

    Returns (theta_deg, m, r, n_atoms) sorted by decreasing angle. ``r_values``
    restricts the families (default: every r that can fit). When two (m, r)
    give the same angle, the smaller cell is kept.
    """
    max_atoms = int(max_atoms)
    if r_values is None:
        r_values = range(1, int(np.sqrt(3 * max_atoms / 4)) + 2)
    found: dict[float, tuple[float, int, int, int]] = {}
    for r in r_values:
        m = 1
        while True:
            if gcd(m, r) == 1:
                n = commensurate_cell(m, r)[2]
                if n > max_atoms:
                    break
                th = commensurate_angle(m, r)
                key = round(th, 8)
                if key not in found or found[key][3] > n:
                    found[key] = (th, m, r, n)
            elif 4 * (m * m + m * r + r * r / 3) > max_atoms:
                break
            m += 1
    return sorted(found.values(), key=lambda t: -t[0])


def nearest_commensurate(angle: float, r: int = 1) -> tuple[int, int]:
    """(m, r) of the family ``r`` whose angle is nearest to ``angle`` (degrees)."""
    if not (0 < angle < 60):
        raise StructureError(f"twist angle must be in (0°, 60°), got {angle}")
    best, m = None, 1
    while True:
        if gcd(m, r) == 1:
            th = commensurate_angle(m, r)
            if best is None or abs(th - angle) < abs(best[0] - angle):
                best = (th, m)
            if th < angle:
                break
        m += 1
        if m > 100000:
            raise StructureError(f"no commensurate cell found near {angle}°")
    return best[1], r


def _twisted_layers(material, a, m, r, n_layers, stacking, shifts, origin_frac=(0.0, 0.0)):
    """In-plane sites of an alternating-twist stack; rotation centre at ``origin_frac`` of the cell."""
    M1, M2, _ = commensurate_cell(m, r)
    theta = np.radians(commensurate_angle(m, r))
    stk = str(stacking).upper()
    if stk not in ("AA", "AA'"):
        raise StructureError(f"twisted stacking must be 'AA' or \"AA'\" (rotation about a common site), "
                             f"got {stacking!r}")
    shifts = np.zeros((n_layers, 2)) if shifts is None else np.asarray(shifts, float).reshape(-1, 2)
    if len(shifts) != n_layers:
        raise StructureError(f"shifts must have one row per layer ({n_layers})")
    # Cell from layer 1's matrix (rotation −θ/2); origin at fractional origin_frac.
    T = M1 @ (primitive_vectors(a) @ rotation(-theta / 2).T)
    origin = np.asarray(origin_frac, float) @ T
    xys, Zs, phis = [], [], []
    for k in range(n_layers):
        sign = -1 if k % 2 == 0 else 1
        M = M1 if sign < 0 else M2
        phi = sign * theta / 2
        flip = material == "hbn" and stk == "AA'" and k % 2 == 1
        xy, Z, Tk = layer_sites(material, a, M, phi=phi, flip=flip, origin=origin, shift=shifts[k])
        if not np.allclose(Tk, T, atol=1e-7 * max(1.0, np.abs(T).max())):
            raise AssertionError("layer lattice not commensurate with the cell")
        xys.append(xy)
        Zs.append(Z)
        phis.append(phi)
    return xys, Zs, T, np.array(phis)


def twisted_multilayer(
    material: str = "graphene",
    n_layers: int = 3,
    m: int | None = None,
    r: int = 1,
    distances=3.4,
    stacking: str = "AA",
    a: float | None = None,
    angle: float | None = None,
    shifts=None,
    vacuum: float = VACUUM,
    _generator: str = "twisted_multilayer",
) -> Atoms:
    """Alternating-twist multilayer: layer k is rotated by (−1)^(k+1) θ/2.

    Adjacent layers are twisted by +θ, −θ, +θ, …; layers 0, 2, 4… are aligned.
    ``stacking`` "AA" puts a site of every layer on the rotation centre with the
    same species; "AA'" (hBN) flips the odd layers (B above N). ``shifts``
    (n_layers, 2) Å are rigid in-plane translations per layer. ``angle``
    (degrees) picks the nearest (m, r) of family ``r`` when ``m`` is None.
    """
    material, a, _, _ = material_info(material, a)
    if m is None:
        if angle is None:
            raise StructureError("give either (m, r) or angle")
        m, r = nearest_commensurate(float(angle), int(r))
    m, r = _check_mr(m, r)
    n_layers = int(n_layers)
    if n_layers < 2:
        raise StructureError("a twisted stack needs at least 2 layers")
    xys, Zs, T, _ = _twisted_layers(material, a, m, r, n_layers, stacking, shifts)
    atoms = assemble(xys, Zs, T, distances, vacuum)
    th = commensurate_angle(m, r)
    params = {"material": material, "n_layers": n_layers, "m": m, "r": r, "distances": np.atleast_1d(distances),
              "stacking": stacking, "a": a, "angle": angle, "shifts": shifts, "vacuum": vacuum}
    return finalize(atoms, _generator, params, material, theta_deg=th, m=m, r=r,
                    moire_period=moire_period(th, a), stacking=str(stacking), a=a)


def twisted_bilayer(
    material: str = "graphene",
    m: int | None = None,
    r: int = 1,
    angle: float | None = None,
    d: float = 3.4,
    stacking: str = "AA",
    a: float | None = None,
    shift=None,
    vacuum: float = VACUUM,
) -> Atoms:
    """Commensurate twisted bilayer (layer 0 at −θ/2, layer 1 at +θ/2 about an AA site at the cell corner).

    ``d``: interlayer distance (Å). ``angle`` (degrees) → nearest (m, r) within
    family ``r`` when ``m`` is None; ``info['theta_deg']`` is the exact angle.
    ``stacking``: "AA" or "AA'" (hBN: B over B vs B over N at the AA point).
    ``shift``: optional in-plane translation (Å) of the top layer.
    """
    shifts = None if shift is None else np.array([[0.0, 0.0], np.asarray(shift, float)])
    return twisted_multilayer(material, 2, m, r, d, stacking, a, angle, shifts, vacuum,
                              _generator="twisted_bilayer")
