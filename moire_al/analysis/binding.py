"""Binding curves (energy vs interlayer distance) of high-symmetry bilayer
stackings, equilibrium distances and stacking energy differences; and a monolayer
lattice-constant EOS.

Binding energy per atom: E_b(d) = [E_bilayer(d) − 2 E_monolayer] / N_bilayer, with
the monolayer computed in the same in-plane cell, so E_b → 0 as d → ∞.
"""

from __future__ import annotations

import math

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


# ------------------------------------------------------------------ fitted minima of labelled curves
def morse(d, e_inf, depth, alpha, d0):
    """Morse curve E(d) = E_∞ + D [(1 − e^{−α (d − d0)})² − 1]: minimum E_∞ − D at d0."""
    x = 1.0 - np.exp(-alpha * (np.asarray(d, float) - d0))
    return e_inf + depth * (x * x - 1.0)


def fit_minimum(d, e, window: float = 0.3, eggbox_period: float | None = None,
                center: float | None = None) -> dict:
    """Equilibrium distance of a sampled curve E(d) from a Morse fit to the samples within
    ``window`` Å of the lowest one (or of ``center``; at least 5 samples, else ValueError).

    ``eggbox_period``: DFT on a real-space grid (CP2K) adds an "egg-box" error periodic in
    the moving layer's position with the grid spacing h; with h given, the fit is
    Morse(d) + A cos(2πd/h) + B sin(2πd/h) (the layer's offset from the grid is the same
    in every cell when the other layer sits at the same z: a phase, absorbed in A, B) and
    ``eggbox_amplitude`` = √(A² + B²) is reported.

    Returns ``d_eq`` and ``e_min`` (Morse), ``d_eq_stderr`` (1σ from the fit covariance,
    residual-scaled), ``rms_residual`` (E units), ``d_eq_quartic`` (a quartic polynomial
    on the same samples after removing the egg-box term: the fit-form uncertainty is
    |d_eq − d_eq_quartic|), ``d_eq_spline`` (:func:`_minimum` on the raw samples),
    ``n_points`` and ``window``."""
    from scipy.optimize import curve_fit

    d = np.asarray(d, float)
    e = np.asarray(e, float)
    order = np.argsort(d)
    d, e = d[order], e[order]
    k = int(np.argmin(e))
    c0 = d[k] if center is None else float(center)
    sel = np.abs(d - c0) <= window + 1e-9
    ds, es = d[sel], e[sel]
    n_par = 4 if eggbox_period is None else 6
    if len(ds) < n_par + 1 or not d[0] < c0 < d[-1]:
        raise ValueError(f"need >= {n_par + 1} samples around an interior minimum (have "
                         f"{len(ds)} within {window} Å of {c0:.3f}; samples "
                         f"{d.min():.3f}..{d.max():.3f} Å)")
    curv = np.polyfit(ds, es, 2)[0]
    depth0 = max(abs(e[-1] - e[k]), 1e-6)
    alpha0 = math.sqrt(max(curv, 1e-9) / depth0)   # E'' = 2 D α² at d0
    p0 = [e[k] + depth0, depth0, alpha0, c0]
    if eggbox_period is None:
        model = morse
    else:
        w = 2.0 * math.pi / float(eggbox_period)

        def model(x, e_inf, depth, alpha, d0, ca, sb):
            return morse(x, e_inf, depth, alpha, d0) + ca * np.cos(w * x) + sb * np.sin(w * x)
        p0 += [0.0, 0.0]
    popt, pcov = curve_fit(model, ds, es, p0=p0, maxfev=20000)
    resid = es - model(ds, *popt)
    smooth = es - (0.0 if eggbox_period is None else
                   popt[4] * np.cos(w * ds) + popt[5] * np.sin(w * ds))
    quart = np.polyfit(ds, smooth, min(4, len(ds) - 2))
    fine = np.linspace(ds[0], ds[-1], 4001)
    d_q = float(fine[int(np.argmin(np.polyval(quart, fine)))])
    out = {"d_eq": float(popt[3]), "e_min": float(popt[0] - popt[1]),
           "d_eq_stderr": float(math.sqrt(max(pcov[3, 3], 0.0))),
           "rms_residual": float(np.sqrt(np.mean(resid ** 2))),
           "d_eq_quartic": d_q, "d_eq_spline": _minimum(d, e)[0],
           "morse": {"e_inf": float(popt[0]), "depth": float(popt[1]),
                     "alpha": float(popt[2]), "d0": float(popt[3])},
           "n_points": int(len(ds)), "window": float(window),
           "eggbox_period": None if eggbox_period is None else float(eggbox_period)}
    if eggbox_period is not None:
        out["eggbox_amplitude"] = float(math.hypot(popt[4], popt[5]))
    return out


def labelled_binding_curves(structures, window: float = 0.3) -> dict:
    """Binding curves and fitted minima from *labelled* 4-atom bilayers (``REF_energy``;
    ``info["stacking"]``, interlayer distance from the positions) and, if present, a
    2-atom monolayer in the same cell (``info["stacking"] == "monolayer"``) for
    E_b = [E(d) − 2 E_mono] / 4. When every cell carries the same ``info["grid_dz"]``
    (the DFT code's real-space grid spacing along z, Å), the minima are fitted with
    the egg-box term of that period (:func:`fit_minimum`), centred on a first fit. Result keys: ``curves`` (stacking → {``d``, ``e_bind``
    eV/atom, or ``e`` eV/atom without a monolayer}), ``equilibrium`` (stacking →
    :func:`fit_minimum`), ``stacking_energy_meV`` (E_min − E_min of the lowest),
    ``labeller``, ``a``."""
    from moire_al.analysis.common import layers_of
    from moire_al.conventions import REF_ENERGY, REF_LABELLER

    grids = {at.info.get("grid_dz") for at in structures}
    grid = float(grids.pop()) if len(grids) == 1 and None not in grids else None
    mono = [at for at in structures if at.info.get("stacking") == "monolayer"]
    e_mono = float(mono[0].info[REF_ENERGY]) / len(mono[0]) if mono else None
    pts: dict = {}
    for at in structures:
        stk = at.info.get("stacking")
        if stk in (None, "monolayer") or REF_ENERGY not in at.info:
            continue
        lay = layers_of(at)
        z = at.positions[:, 2]
        d = float(z[lay == lay.max()].mean() - z[lay == lay.min()].mean())
        e = float(at.info[REF_ENERGY]) / len(at)
        pts.setdefault(stk, []).append((round(d, 6), e - e_mono if e_mono is not None else e))
    if not pts:
        raise SettingsError("no labelled bilayers with info['stacking'] in the structures")
    curves, eq = {}, {}
    for stk, rows in pts.items():
        rows = sorted(dict(rows).items())
        d, e = np.array(rows).T
        curves[stk] = {"d": d.tolist(), ("e_bind" if e_mono is not None else "e"): e.tolist()}
        first = fit_minimum(d, e, window=window, eggbox_period=grid)
        centre = first["d_eq"] if d[0] < first["d_eq"] < d[-1] else None
        eq[stk] = fit_minimum(d, e, window=window, eggbox_period=grid, center=centre)
    low = min(eq, key=lambda s: eq[s]["e_min"])
    return jsonable({
        "analysis": "binding_labelled",
        "labeller": sorted({str(at.info.get(REF_LABELLER)) for at in structures}),
        "a": float(structures[0].info.get("a") or np.linalg.norm(structures[0].cell[0])),
        "curves": curves, "equilibrium": eq, "ground_state": low,
        "stacking_energy_meV": {s: 1000 * (eq[s]["e_min"] - eq[low]["e_min"]) for s in eq},
        "monolayer_energy_eV_per_atom": e_mono, "grid_dz": grid,
    })
