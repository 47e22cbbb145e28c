"""Uniaxial stress–strain along the armchair direction and Young's modulus.

Protocol (seed 003 §III.2.5): start from a structure relaxed in positions and
in-plane cell; stretch the cell along armchair in increments; at each strain relax
the positions with the cell fixed (so the transverse length is held, no Poisson
contraction); record the longitudinal stress. The sheet's stress is converted to a
3D one with a thickness of ``thickness`` Å per layer (3.35 Å by default):
σ_3D = σ_cell · c / (n_layers · thickness), c the cell height. The slope of the
linear part (strain ≤ ``linear_max``) is the Young's modulus as the protocol
defines it; with the transverse cell fixed it is the constrained (plane-strain)
modulus C_aa, larger than the free-contraction modulus by 1/(1 − ν²) (~3 % for
graphene).
"""

from __future__ import annotations

import math

import numpy as np

from moire_al.analysis.common import (EV_PER_A3_TO_GPA, LAYER_THICKNESS, calc_label, jsonable,
                                      layers_of, material_of, rectangular_monolayer)
from moire_al.errors import StructureError


def orthogonal_cell(atoms):
    """Orthogonal supercell of a hexagonal cell: vectors (a1, a1 + 2 a2) (or a1 − ...
    whichever is perpendicular to a1). Returns atoms with x along a1 (zigzag for the
    standard graphene cell) and y perpendicular (armchair). Already orthogonal cells
    are returned unchanged (rotated so a1 ∥ x)."""
    from ase.build import make_supercell

    cell = atoms.cell.array
    c12 = np.dot(cell[0], cell[1]) / (np.linalg.norm(cell[0]) * np.linalg.norm(cell[1]))
    if abs(c12) < 1e-8:
        return atoms.copy()
    sign = 1 if c12 < 0 else -1  # 120° cell: a1 + 2 a2;  60° cell: 2 a2 − a1
    P = np.array([[1, 0, 0], [sign * 1, 2, 0], [0, 0, 1]]) if sign > 0 else \
        np.array([[1, 0, 0], [-1, 2, 0], [0, 0, 1]])
    sup = make_supercell(atoms, P)
    if abs(np.dot(sup.cell[0], sup.cell[1])) > 1e-6:
        raise StructureError("cannot build an orthogonal cell from this cell")
    # rotate so that a1 is along x and a2 along +y
    ang = math.atan2(sup.cell[0][1], sup.cell[0][0])
    sup.rotate(-math.degrees(ang), "z", rotate_cell=True)
    if sup.cell[1][1] < 0:
        sup.rotate(180, "x", rotate_cell=True)
    return sup


def stress_strain(atoms, calc, calc_name: str | None = None, direction: str = "armchair",
                  max_strain: float = 0.20, strains=None, linear_max: float = 0.02,
                  fmax: float = 1e-3, steps: int = 1000, relax_initial: bool = True,
                  thickness: float = LAYER_THICKNESS, plot_path: str | None = None) -> dict:
    """Stress–strain curve under uniaxial strain of ``atoms`` (any layered
    structure; None → a 48-atom graphene monolayer is not assumed: pass one, e.g.
    :func:`moire_al.analysis.common.rectangular_monolayer`).

    ``direction``: ``"armchair"`` (y of the orthogonal cell: perpendicular to the
    first cell vector, which is zigzag for the standard cell) or ``"zigzag"`` (x).

    Result keys: ``analysis``, ``calc_name``, ``material``, ``n_atoms``,
    ``n_layers``, ``direction``, ``thickness``, ``strain`` (list), ``stress_GPa``
    (list), ``energy_per_atom`` (list), ``converged`` (list of bool), ``steps``
    (list), ``youngs_modulus_GPa``, ``linear_max``, ``ultimate_stress_GPa``,
    ``ultimate_strain``, ``plots``.
    """
    from moire_al.analysis.relax import relax

    axis = {"armchair": 1, "zigzag": 0}[direction]
    work = orthogonal_cell(atoms)
    if relax_initial:
        work, _ = relax(work, calc, fmax=fmax, steps=steps, relax_cell=True)
    if strains is None:
        strains = np.unique(np.round(np.concatenate([
            np.linspace(0, linear_max, 5), np.arange(0.03, max_strain + 1e-9, 0.01)]), 6))
    strains = [float(s) for s in strains]
    n_layers = len(np.unique(layers_of(work)))
    cell0 = work.cell.array.copy()
    c_height = abs(np.linalg.det(cell0)) / np.linalg.norm(np.cross(cell0[0], cell0[1]))
    out_s, out_e, conv, nsteps = [], [], [], []
    current = work
    for eps in strains:
        cell = cell0.copy()
        cell[axis] = cell0[axis] * (1 + eps)
        current = current.copy()
        current.set_cell(cell, scale_atoms=True)
        current, rr = relax(current, calc, fmax=fmax, steps=steps)
        current.calc = calc
        stress = current.get_stress(voigt=True)  # ASE sign: tension positive
        sig = stress[axis] * c_height / (n_layers * thickness) * EV_PER_A3_TO_GPA
        out_s.append(float(sig))
        out_e.append(float(current.get_potential_energy()) / len(current))
        conv.append(rr["converged"])
        nsteps.append(rr["steps"])
    s_arr = np.array(strains)
    sig_arr = np.array(out_s)
    lin = s_arr <= linear_max + 1e-12
    if lin.sum() >= 2:
        slope = float(np.polyfit(s_arr[lin], sig_arr[lin], 1)[0])
    else:
        slope = float("nan")
    k = int(np.argmax(sig_arr))
    result = {
        "analysis": "stress_strain",
        "calc_name": calc_label(calc, calc_name),
        "material": material_of(atoms),
        "n_atoms": len(work),
        "n_layers": int(n_layers),
        "direction": direction,
        "thickness": float(thickness),
        "strain": strains,
        "stress_GPa": out_s,
        "energy_per_atom": out_e,
        "converged": conv,
        "steps": nsteps,
        "youngs_modulus_GPa": slope,
        "linear_max": float(linear_max),
        "ultimate_stress_GPa": float(sig_arr[k]),
        "ultimate_strain": float(s_arr[k]),
        "plots": {},
    }
    if plot_path:
        from moire_al.analysis import plots
        result["plots"]["stress_strain"] = plots.plot_stress_strain(
            {result["calc_name"]: result}, plot_path)
    return jsonable(result)


def monolayer_for_strain(material: str = "graphene", nx: int = 3, ny: int = 2):
    """Small orthogonal monolayer (x zigzag, y armchair) for :func:`stress_strain`."""
    return rectangular_monolayer(material, nx, ny)
