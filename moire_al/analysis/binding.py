"""Binding curves (energy vs interlayer distance) of high-symmetry bilayer
stackings, equilibrium distances and stacking energy differences; and a monolayer
lattice-constant EOS.

Binding energy per atom: E_b(d) = [E_bilayer(d) − 2 E_monolayer] / N_bilayer, with
the monolayer computed in the same in-plane cell, so E_b → 0 as d → ∞.
"""

from __future__ import annotations

import numpy as np

from moire_al.analysis.common import (calc_label, jsonable, lattice_constant, material_of,
                                      primitive_bilayer)
from moire_al.errors import SettingsError

# stacking name -> (shift along the bond direction in bond lengths, swap top species)
STACKINGS = {
    "graphene": {"AA": (0.0, False), "AB": (1.0, False), "SP": (1.5, False),
                 "Mid": (0.5, False)},
    "hbn": {"AA'": (0.0, True), "AB": (1.0, False), "AA": (0.0, False)},
}
DEFAULT_DISTANCES = tuple(float(x) for x in np.unique(np.round(np.concatenate(
    [np.arange(2.9, 4.2, 0.05), np.arange(4.2, 8.01, 0.4)]), 3)))


def stacking_bilayer(material: str, stacking: str, d: float, a: float | None = None):
    """Primitive (4-atom) bilayer of a named stacking at interlayer distance ``d``."""
    material = material_of(None, material)
    try:
        shift, swap = STACKINGS[material][stacking]
    except KeyError:
        raise SettingsError(f"unknown stacking {stacking!r} for {material} "
                         f"(known: {', '.join(STACKINGS[material])})") from None
    atoms = primitive_bilayer(material, shift, d, a=a, swap_top=swap)
    atoms.info["stacking"] = stacking
    return atoms


def _monolayer(material, a):
    atoms = primitive_bilayer(material, 0.0, 3.4, a=a)
    del atoms[[2, 3]]
    return atoms


def _minimum(d, e):
    """Minimum of a sampled curve: cubic spline on a fine grid around the lowest
    sample. Returns (d_eq, e_min)."""
    from scipy.interpolate import CubicSpline

    d = np.asarray(d, float)
    e = np.asarray(e, float)
    order = np.argsort(d)
    d, e = d[order], e[order]
    k = int(np.argmin(e))
    if k == 0 or k == len(d) - 1:
        return float(d[k]), float(e[k])
    spl = CubicSpline(d, e)
    fine = np.linspace(d[k - 1], d[k + 1], 401)
    ef = spl(fine)
    j = int(np.argmin(ef))
    return float(fine[j]), float(ef[j])


def binding_curves(material: str, calc, calc_name: str | None = None, stackings=None,
                   distances=DEFAULT_DISTANCES, a: float | None = None,
                   plot_path: str | None = None) -> dict:
    """Rigid binding curves of the named stackings (graphene: AA, AB, SP, Mid; hBN:
    AA', AB, AA) at fixed lattice constant.

    Result keys: ``analysis``, ``calc_name``, ``material``, ``a``, ``curves``
    (stacking → {``d``, ``e_bind`` eV/atom}), ``equilibrium`` (stacking →
    {``d_eq`` Å, ``e_bind_min`` eV/atom}), ``ground_state`` (stacking),
    ``stacking_energy_meV`` (stacking → E_b,min − E_b,min(ground), meV/atom, each
    at its own equilibrium distance), ``stacking_energy_fixed_d_meV`` (same at the
    ground state's d_eq), ``plots``.
    """
    material = material_of(None, material)
    a = lattice_constant(material, a)
    stackings = list(stackings or STACKINGS[material])
    mono = _monolayer(material, a)
    mono.calc = calc
    e_mono = float(mono.get_potential_energy())
    curves, eq = {}, {}
    for stk in stackings:
        es = []
        for d in distances:
            atoms = stacking_bilayer(material, stk, float(d), a)
            atoms.calc = calc
            es.append((float(atoms.get_potential_energy()) - 2 * e_mono) / len(atoms))
        curves[stk] = {"d": [float(x) for x in distances], "e_bind": es}
        d_eq, e_min = _minimum(distances, es)
        eq[stk] = {"d_eq": d_eq, "e_bind_min": e_min}
    ground = min(eq, key=lambda s: eq[s]["e_bind_min"])
    d0 = eq[ground]["d_eq"]
    fixed = {}
    e_ref = None
    for stk in stackings:
        atoms = stacking_bilayer(material, stk, d0, a)
        atoms.calc = calc
        e = (float(atoms.get_potential_energy()) - 2 * e_mono) / len(atoms)
        fixed[stk] = e
    e_ref = fixed[ground]
    result = {
        "analysis": "binding",
        "calc_name": calc_label(calc, calc_name),
        "material": material,
        "a": a,
        "curves": curves,
        "equilibrium": eq,
        "ground_state": ground,
        "stacking_energy_meV": {s: 1000 * (eq[s]["e_bind_min"] - eq[ground]["e_bind_min"])
                                for s in stackings},
        "stacking_energy_fixed_d_meV": {s: 1000 * (fixed[s] - e_ref) for s in stackings},
        "plots": {},
    }
    if plot_path:
        from moire_al.analysis import plots
        result["plots"]["binding"] = plots.plot_binding({result["calc_name"]: result},
                                                        plot_path)
    return jsonable(result)


def lattice_eos(material: str, calc, calc_name: str | None = None, a: float | None = None,
                strains=tuple(np.linspace(-0.03, 0.03, 13))) -> dict:
    """Monolayer energy vs lattice constant (isotropic in-plane strain, positions
    scaled; the 2-atom cell has no internal freedom in-plane).

    Result keys: ``analysis``, ``calc_name``, ``material``, ``a`` (list),
    ``energy_per_atom`` (list), ``a0`` (Å, parabola fit), ``e0`` (eV/atom),
    ``area_modulus_N_per_m`` (2D bulk modulus A d²E/dA², N/m).
    """
    material = material_of(None, material)
    a_ref = lattice_constant(material, a)
    avals, es = [], []
    for s in strains:
        m = _monolayer(material, a_ref * (1 + s))
        m.calc = calc
        avals.append(a_ref * (1 + s))
        es.append(float(m.get_potential_energy()) / len(m))
    c = np.polyfit(avals, es, 4)
    fine = np.linspace(min(avals), max(avals), 2001)
    ef = np.polyval(c, fine)
    j = int(np.argmin(ef))
    a0 = float(fine[j])
    # E per cell as a function of area A = (√3/2) a²: B_2D = A d²E/dA²
    n_cell = 2
    area = np.sqrt(3) / 2 * np.asarray(avals) ** 2
    ca = np.polyfit(area, np.asarray(es) * n_cell, 4)
    a0_area = np.sqrt(3) / 2 * a0 ** 2
    b2d = a0_area * np.polyval(np.polyder(ca, 2), a0_area)  # eV/Å²
    return jsonable({
        "analysis": "lattice_eos",
        "calc_name": calc_label(calc, calc_name),
        "material": material,
        "a": avals,
        "energy_per_atom": es,
        "a0": a0,
        "e0": float(ef[j]),
        "area_modulus_N_per_m": float(b2d * 16.0217663),
    })
