"""Locally twisted supercells (seed 003 §II.3.1) and disregistry coverings (Appendix D).

A commensurate parent cell of twist θ_c (or an untwisted n x n supercell,
θ_c = 0) is built with its rotation centre (AA point) at the cell centre C.
Layer k of the parent is rotated by φ_k = σ_k θ_c/2 (σ = −1, +1, −1, …). Each
atom at in-plane offset x from C (minimum image, so |x| < L/2 for cell length
L) is moved to

    x' = R(ψ(|x|) Δ_k) x + s_k,      Δ_k = φ_k^loc − φ_k,

where φ_k^loc is the layer's local rotation (default σ_k θ_loc/2), s_k its
rigid shift, and ψ the cosine ramp: 1 for ρ ≤ r1, ½(1 + cos(π(ρ−r1)/(r2−r1)))
between, 0 for ρ ≥ r2. Inside r1 each layer is the ideal lattice rotated by
φ_k^loc about C and shifted by s_k; beyond r2 the parent is untouched, so the
cell stays periodic (r2 < L/2 keeps the disk away from its images).

The rotation field bends bonds by the shear γ = ρ ψ'(ρ) Δ ≤ (π/2) |Δ| r2/(r2−r1);
the default radii keep γ ≤ 0.25 (bond stretch ≥ 0.88, so C–C ≥ 1.25 Å), which
works for |Δ_k| ≤ 6.75° per layer (|θ_loc − θ_c| ≤ 13.5° for a bilayer).
"""

from __future__ import annotations

import numpy as np
from ase import Atoms

from moire_al.errors import StructureError
from moire_al.structures.lattice import (
    VACUUM, assemble, basis_frac, finalize, layer_sites, material_info,
    primitive_vectors, rotation, stacking_layout,
)
from moire_al.structures.twisted import (
    _twisted_layers, commensurate_angle, moire_period,
)

GAMMA_MAX = 0.25        # largest shear of the blending ramp used for default radii
R2_FRACTION = 0.95      # default r2 = R2_FRACTION * L/2
R1_MAX_FRACTION = 0.75  # default r1 <= R1_MAX_FRACTION * r2 (a smooth ramp even for Δ = 0)
R1_MIN_FRACTION = 0.25  # below this the core would be too small: refuse
MIN_INTRALAYER = 1.2    # Å, hard floor checked on every locally twisted cell


def blend(rho, r1: float, r2: float) -> np.ndarray:
    """Cosine blending ψ(ρ): 1 inside r1, 0 beyond r2, C¹ in between (ρ, r1, r2 in Å)."""
    rho = np.asarray(rho, float)
    t = np.clip((rho - r1) / (r2 - r1), 0.0, 1.0)
    return 0.5 * (1.0 + np.cos(np.pi * t))


def default_radii(delta_max_deg: float, cell_length: float) -> tuple[float, float]:
    """Default (r1, r2) in Å for a largest per-layer rotation change ``delta_max_deg``.

    r2 = 0.95 L/2; r1 = r2 (1 − π|Δ|/(2 γ_max)), capped at 0.75 r2. Raises
    StructureError when the core would shrink below 0.25 r2.
    """
    r2 = R2_FRACTION * cell_length / 2
    delta = abs(np.radians(delta_max_deg))
    frac = min(1.0 - np.pi * delta / (2 * GAMMA_MAX), R1_MAX_FRACTION)
    if frac < R1_MIN_FRACTION:
        limit = np.degrees(2 * GAMMA_MAX * (1 - R1_MIN_FRACTION) / np.pi)
        raise StructureError(
            f"local rotation change {abs(delta_max_deg):.2f}° per layer is too large for a smooth blend "
            f"(limit {limit:.2f}°, i.e. |theta_local - theta_c| <= {2 * limit:.1f}° for a bilayer); "
            "choose a parent cell with a closer commensurate angle")
    return frac * r2, r2


def _parent(material, a, m, r, supercell, n_layers, stacking):
    """Parent layers with the rotation centre at the cell centre; returns xys, Zs, T, phis, theta_c."""
    if supercell is not None:
        n = int(supercell)
        if n < 1:
            raise StructureError("supercell must be >= 1")
        fshift, flips = stacking_layout(stacking, n_layers, material)
        M = np.diag([n, n])
        T = M @ primitive_vectors(a)
        C = 0.5 * (T[0] + T[1])
        xys, Zs = [], []
        for k in range(n_layers):
            xy, Z, _ = layer_sites(material, a, M, flip=flips[k], origin=C,
                                   shift=fshift[k] @ primitive_vectors(a))
            xys.append(xy)
            Zs.append(Z)
        return xys, Zs, T, np.zeros(n_layers), 0.0
    if m is None:
        raise StructureError("give the parent cell as (m, r) or as an untwisted supercell size")
    stk = str(stacking).upper()
    if stk not in ("AA", "AA'"):
        raise StructureError("a twisted parent cell needs stacking 'AA' or \"AA'\"")
    xys, Zs, T, phis = _twisted_layers(material, a, m, r, n_layers, stacking, None, origin_frac=(0.5, 0.5))
    return xys, Zs, T, phis, commensurate_angle(m, r)


def _min_image_offsets(xy: np.ndarray, C: np.ndarray, T: np.ndarray) -> np.ndarray:
    """Shortest periodic in-plane vector from C to each position."""
    f = np.linalg.solve(T.T, (xy - C).T).T
    f -= np.round(f)
    best = f @ T
    for i in (-1, 0, 1):
        for j in (-1, 0, 1):
            cand = (f + [i, j]) @ T
            shorter = np.einsum("ij,ij->i", cand, cand) < np.einsum("ij,ij->i", best, best) - 1e-12
            best[shorter] = cand[shorter]
    return best


def min_intralayer_distance(atoms: Atoms, cutoff: float = 2.0) -> float:
    """Smallest distance (Å) between two atoms of the same layer (periodic images included)."""
    from ase.neighborlist import neighbor_list

    i, j, d = neighbor_list("ijd", atoms, cutoff)
    layer = atoms.arrays["layer"]
    same = layer[i] == layer[j]
    return float(d[same].min()) if np.any(same) else float("inf")


def locally_twisted(
    material: str = "graphene",
    theta_local: float | None = None,
    m: int | None = None,
    r: int = 1,
    shifts=None,
    r1: float | None = None,
    r2: float | None = None,
    n_layers: int = 2,
    distances=3.4,
    theta_locals=None,
    supercell: int | None = None,
    stacking: str | None = None,
    a: float | None = None,
    vacuum: float = VACUUM,
) -> Atoms:
    """Locally twisted multilayer in a commensurate (m, r) or untwisted n x n parent cell.

    theta_local : local twist (degrees) between adjacent layers inside r1; layers
        get the alternating local rotations ∓θ_loc/2 (like the parent's ∓θ_c/2).
    theta_locals : alternatively the local rotation of every layer (degrees, length
        n_layers); the local twist between layers k, k+1 is their difference.
    m, r : commensurate parent (twist θ_c); or ``supercell=n`` for an untwisted n x n
        parent (θ_c = 0).
    shifts : rigid in-plane translation per layer, (n_layers, 2) Å; a single (2,)
        vector is the disregistry of layer 1 relative to layer 0 (bilayers).
    r1, r2 : blending radii (Å) around the cell centre; defaults from
        :func:`default_radii` (clear error where no safe pair exists).
    stacking : parent stacking at the centre, "AA" (graphene default) or "AA'"
        (hBN default: B over N); untwisted parents accept any multilayer stacking.
    distances : interlayer distance(s), Å.
    """
    material, a, _, _ = material_info(material, a)
    n_layers = int(n_layers)
    if n_layers < 2:
        raise StructureError("a locally twisted cell needs at least 2 layers")
    if stacking is None:
        stacking = "AA'" if material == "hbn" else "AA"
    xys, Zs, T, phis, theta_c = _parent(material, a, m, r, supercell, n_layers, stacking)
    sigma = np.array([-1.0 if k % 2 == 0 else 1.0 for k in range(n_layers)])
    if theta_locals is not None:
        targets = np.radians(np.asarray(theta_locals, float).ravel())
        if targets.size != n_layers:
            raise StructureError(f"theta_locals needs {n_layers} values, got {targets.size}")
    elif theta_local is not None:
        targets = sigma * np.radians(float(theta_local)) / 2
    else:
        raise StructureError("give theta_local or theta_locals")
    if not np.all(np.isfinite(targets)):
        raise StructureError("local angles must be finite")
    deltas = targets - phis
    if shifts is None:
        s = np.zeros((n_layers, 2))
    else:
        s = np.asarray(shifts, float)
        if s.shape == (2,):
            s = np.vstack([np.zeros(2), s] + [np.zeros(2)] * (n_layers - 2))
        s = s.reshape(-1, 2)
        if len(s) != n_layers:
            raise StructureError(f"shifts must be (2,) or ({n_layers}, 2)")
    L = float(np.linalg.norm(T[0]))
    if r1 is None or r2 is None:
        d1, d2 = default_radii(np.degrees(np.abs(deltas).max()), L)
        r2 = d2 if r2 is None else float(r2)
        r1 = min(d1, 0.9 * r2) if r1 is None else float(r1)
    r1, r2 = float(r1), float(r2)
    if not (0 <= r1 < r2 < L / 2):
        raise StructureError(f"need 0 <= r1 < r2 < L/2 = {L / 2:.3f} Å, got r1={r1:.3f}, r2={r2:.3f}")
    C = 0.5 * (T[0] + T[1])
    new_xys = []
    for k in range(n_layers):
        x = _min_image_offsets(xys[k], C, T)
        rho = np.linalg.norm(x, axis=1)
        ang = blend(rho, r1, r2) * deltas[k]
        c, sn = np.cos(ang), np.sin(ang)
        xr = np.column_stack([c * x[:, 0] - sn * x[:, 1], sn * x[:, 0] + c * x[:, 1]])
        new_xys.append(C + xr + s[k])
    from moire_al.structures.lattice import wrap_xy

    new_xys = [wrap_xy(xy, T) for xy in new_xys]
    atoms = assemble(new_xys, Zs, T, distances, vacuum)
    dmin = min_intralayer_distance(atoms)
    if dmin < MIN_INTRALAYER:
        raise StructureError(
            f"locally twisted cell has an intralayer distance of {dmin:.3f} Å (< {MIN_INTRALAYER} Å); "
            "use a larger r2 - r1 or a parent angle closer to the local one")
    loc_twists = np.degrees(np.diff(targets))
    params = {"material": material, "theta_local": theta_local, "theta_locals": np.degrees(targets),
              "m": m, "r": r if m is not None else None, "supercell": supercell, "shifts": s,
              "r1": r1, "r2": r2, "n_layers": n_layers, "distances": np.atleast_1d(distances),
              "stacking": stacking, "a": a, "vacuum": vacuum}
    return finalize(
        atoms, "locally_twisted", params, material,
        theta_deg=float(theta_c), m=int(m) if m is not None else 0, r=int(r) if m is not None else 0,
        supercell=int(supercell) if supercell is not None else 0,
        moire_period=moire_period(theta_c, a),
        theta_local_deg=float(abs(loc_twists[0])), r1=r1, r2=r2, stacking=str(stacking), a=a,
        centre=np.array([C[0], C[1]]),
    )


def moire_vectors(theta_deg: float, a: float) -> np.ndarray:
    """Rows of the moiré lattice (Å) of a bilayer with layers at ∓θ/2.

    The local configuration at y depends on (R(θ/2) − R(−θ/2)) y = 2 sin(θ/2) J y
    modulo the lattice (J: 90° rotation), so the moiré vectors are
    J⁻¹ a_i / (2 sin(θ/2)), of length a/(2 sin(θ/2)).
    """
    th = np.radians(theta_deg)
    if abs(np.sin(th / 2)) < 1e-9:
        raise StructureError("the moiré cell of a zero twist is infinite")
    return primitive_vectors(a) @ rotation(-np.pi / 2).T / (2 * np.sin(th / 2))


def disregistry_covering(
    theta_local_deg: float,
    r1: float,
    a: float | None = None,
    material: str = "graphene",
    return_positions: bool = False,
    layer_shifts: bool = False,
):
    """Shifts whose r1-disks cover the moiré cell of ``theta_local_deg`` (Appendix D).

    Grid points y_ij = y0 + (i/n) A1 + (j/n) A2 (i, j < n) of the moiré cell
    (A1, A2 from :func:`moire_vectors`); y0 lies on the long diagonal at distance
    r1 from the corner, and n is the smallest integer with covering radius
    (L_m/n)/√3 ≤ r1, so every point of the (periodic) moiré cell is within r1 of
    a grid point. For grid point y, a bilayer locally twisted by θ_loc with
    per-layer shifts s_k = −y (reduced into layer k's unit cell) reproduces, in
    its central r1 disk, the rigid moiré around y.

    Returns the disregistries s_1 − s_0, (K, 2) Å; with ``layer_shifts`` the
    per-layer shifts (K, 2, 2) to pass as ``shifts`` to :func:`locally_twisted`;
    with ``return_positions`` also the grid points y (K, 2) Å.
    """
    material, a, _, _ = material_info(material, a)
    r1 = float(r1)
    if not r1 > 0:
        raise StructureError("r1 must be positive")
    Am = moire_vectors(float(theta_local_deg), a)
    Lm = float(np.linalg.norm(Am[0]))
    n = max(1, int(np.ceil(Lm / (np.sqrt(3.0) * r1) - 1e-9)))
    diag = Am[0] + Am[1]
    y0 = r1 * diag / np.linalg.norm(diag)
    f0 = np.linalg.solve(Am.T, y0)
    i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    f = f0 + np.column_stack([i.ravel(), j.ravel()]) / n
    f -= np.floor(f)
    y = f @ Am
    th = np.radians(theta_local_deg)
    per_layer = np.empty((len(y), 2, 2))
    for k, phi in enumerate((-th / 2, th / 2)):
        A = primitive_vectors(a) @ rotation(phi).T
        g = np.linalg.solve(A.T, (-y).T).T
        g -= np.floor(g)
        per_layer[:, k, :] = g @ A
    out = per_layer if layer_shifts else per_layer[:, 1, :] - per_layer[:, 0, :]
    return (out, y) if return_positions else out


def shift_grid(n: int, a: float) -> np.ndarray:
    """n x n grid of disregistries (Å) over the unit cell (fractions i/n, j/n), e.g. for θ_loc = 0."""
    i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    return np.column_stack([i.ravel(), j.ravel()]) / n @ primitive_vectors(a)


def local_lattice_residual(atoms: Atoms, layer: int, angle_deg: float, shift, radius: float,
                           lattice_offset=None) -> float:
    """Largest deviation (Å) of a layer's core atoms from an ideal rotated lattice.

    Core atoms: offset x from the cell centre (``info['centre']``, minimum image)
    with |x − shift| ≤ ``radius``. Ideal lattice: the unrotated honeycomb rotated by
    ``angle_deg`` about the centre and translated by ``lattice_offset`` (default
    ``shift``). A diagnostic used in tests.
    """
    a = float(atoms.info["a"])
    T = atoms.cell.array[:2, :2]
    C = np.asarray(atoms.info["centre"], float)
    shift = np.asarray(shift, float)
    offset = shift if lattice_offset is None else np.asarray(lattice_offset, float)
    sel = atoms.arrays["layer"] == layer
    x = _min_image_offsets(atoms.positions[sel, :2], C, T)
    x = x[np.linalg.norm(x - shift, axis=1) <= radius] - offset
    A = primitive_vectors(a) @ rotation(np.radians(angle_deg)).T
    g = np.linalg.solve(A.T, x.T).T
    res = np.full(len(g), np.inf)
    for b in basis_frac():
        dg = g - b
        dg -= np.round(dg)
        res = np.minimum(res, np.linalg.norm(dg @ A, axis=1))
    return float(res.max()) if len(res) else 0.0
