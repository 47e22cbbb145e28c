"""Point-defect formation energies in a (twisted) bilayer.

Reference-state convention (written down here and returned with the results):

    E_f = E_defect − E_host − Δn · μ,   μ = E_host / N_host

E_host is the relaxed pristine host (the same twisted cell), E_defect the relaxed
defective cell (positions relaxed, cell fixed at the host's), Δn the number of
atoms added (+1 interstitial, −1 vacancy, 0 Stone–Wales) and μ the energy per atom
of the relaxed host itself, i.e. the chemical potential of an atom in the perfect
twisted bilayer. For hBN both species take this average μ (a stoichiometric,
species-blind convention; formation energies of B and N vacancies then differ
from those of a B-rich/N-rich choice by ±(μ_B − μ_N)/2).
"""

from __future__ import annotations

import numpy as np

from moire_al.analysis.common import calc_label, jsonable, layers_of

CONVENTION = ("E_f = E_defect - E_host - dn * mu, mu = E_host/N_host (energy per atom of "
              "the relaxed pristine host); positions relaxed, cell fixed at the host's")
KINDS = ("vacancy", "stone_wales", "interstitial_intralayer", "interstitial_interlayer")


def _central_site(atoms, layer):
    layers = layers_of(atoms)
    idx = np.where(layers == layer)[0]
    centre = atoms.cell.array[:2, :2].sum(axis=0) / 2
    return int(idx[np.argmin(np.linalg.norm(atoms.positions[idx, :2] - centre, axis=1))])


def build_defect(host, kind: str, layer: int, site: int | None = None):
    """A defective copy of ``host`` from :mod:`moire_al.structures`."""
    from moire_al import structures

    if site is None:
        site = _central_site(host, layer)
    builder = getattr(structures, kind)
    return builder(host, layer, site)


def defect_formation_energies(host, calc, calc_name: str | None = None,
                              kinds=KINDS, layer: int | None = None,
                              site: int | None = None, fmax: float = 1e-3,
                              steps: int = 1000, relax_host: bool = True,
                              plot_path: str | None = None) -> dict:
    """Formation energies of point defects in ``host`` (see module docstring).

    Defects come from :mod:`moire_al.structures` (``vacancy``, ``stone_wales``,
    ``interstitial_intralayer``, ``interstitial_interlayer``), placed at ``site``
    of ``layer`` (default: top layer, atom nearest the cell centre). A calculator
    failure on one defect is recorded (``errors``) and the others still run.

    Result keys: ``analysis``, ``calc_name``, ``convention``, ``n_host``,
    ``e_host``, ``mu``, ``formation_energies`` (kind → eV or None),
    ``defects`` (kind → {n_atoms, dn, energy, converged, steps, final_fmax}),
    ``errors`` (kind → message), ``host_relax``, ``plots``.
    """
    from moire_al.analysis.relax import relax

    layers = layers_of(host)
    if layer is None:
        layer = int(layers.max())
    if site is None:
        site = _central_site(host, layer)
    rh = None
    if relax_host:
        host, rh = relax(host, calc, fmax=fmax, steps=steps)
    h = host.copy()
    h.calc = calc
    e_host = float(h.get_potential_energy())
    mu = e_host / len(host)
    formation, details, errors = {}, {}, {}
    for kind in kinds:
        try:
            lay, st = layer, site
            if kind == "interstitial_interlayer" and layer == int(layers.max()):
                lay, st = layer - 1, None  # between this layer and the one below
            defect = build_defect(host, kind, lay, st)
            relaxed, rr = relax(defect, calc, fmax=fmax, steps=steps)
            dn = len(relaxed) - len(host)
            e = rr["energy_final"]
            formation[kind] = e - e_host - dn * mu
            details[kind] = {"n_atoms": len(relaxed), "dn": dn, "energy": e,
                             "converged": rr["converged"], "steps": rr["steps"],
                             "final_fmax": rr["final_fmax"]}
        except Exception as exc:  # record and continue: one bad defect must not stop the rest
            formation[kind] = None
            errors[kind] = f"{type(exc).__name__}: {exc}"
    result = {
        "analysis": "defects",
        "calc_name": calc_label(calc, calc_name),
        "convention": CONVENTION,
        "n_host": len(host),
        "layer": int(layer),
        "site": int(site),
        "e_host": e_host,
        "mu": mu,
        "formation_energies": formation,
        "defects": details,
        "errors": errors,
        "host_relax": rh,
        "plots": {},
    }
    if plot_path:
        from moire_al.analysis import plots
        result["plots"]["formation"] = plots.plot_defects({result["calc_name"]: result},
                                                          plot_path)
    return jsonable(result)
