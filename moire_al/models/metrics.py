"""Error tables and plots of a model against labelled structures.

Predictions are compared in the label's own convention: when the model adds D3
but a label does not contain it (``REF_d3`` False), the D3 term is left out of the
prediction for that comparison (and vice versa it is kept when the label holds D3).
"""

from __future__ import annotations

import numpy as np

from moire_al.conventions import REF_D3, REF_ENERGY, REF_FORCES
from moire_al.geometry import layer_count

from .validation import structure_name


def n_layers_of(atoms) -> str:
    return str(layer_count(atoms))


def predict_like_labels(model, atoms_list, committee: bool = True) -> list[dict]:
    out = []
    for k, at in enumerate(atoms_list):
        with_d3 = bool(at.info.get(REF_D3, False))
        out.append(model.predict_one(at, structure_name(at, k), committee=committee, stress=False, d3=with_d3))
    return out


def _rmse(x) -> float:
    x = np.asarray(x, float)
    return float(np.sqrt(np.mean(x * x))) if x.size else float("nan")


def error_arrays(model, atoms_list, predictions=None) -> dict:
    """Per-structure energy errors (eV/atom) and per-component force errors, grouped by layer
    count ("n": structures). A structure whose energy is out of the fit (``fit_weight_E`` 0,
    e.g. grid-smoothed CP2K energies, shifted per cell) has no energy error: its forces count."""
    from .ace import _energy_weight

    preds = predictions if predictions is not None else predict_like_labels(model, atoms_list)
    groups: dict = {}
    for k, (at, p) in enumerate(zip(atoms_list, preds)):
        g = groups.setdefault(n_layers_of(at), {"n": 0, "dE": [], "dF_inplane": [], "dF_out": [],
                                                 "E_ref": [], "E_pred": [], "F_ref": [], "F_pred": []})
        g["n"] += 1
        n = len(at)
        fref, fpred = np.asarray(at.arrays[REF_FORCES], float), p["forces"]
        if _energy_weight(at, structure_name(at, k)) > 0:
            eref, epred = float(at.info[REF_ENERGY]) / n, p["energy"] / n
            g["dE"].append(epred - eref)
            g["E_ref"].append(eref)
            g["E_pred"].append(epred)
        d = fpred - fref
        g["dF_inplane"].append(d[:, :2].reshape(-1))
        g["dF_out"].append(d[:, 2])
        g["F_ref"].append(fref.reshape(-1))
        g["F_pred"].append(fpred.reshape(-1))
    for g in groups.values():
        for key in ("dF_inplane", "dF_out", "F_ref", "F_pred"):
            g[key] = np.concatenate(g[key]) if g[key] else np.zeros(0)
    return groups


def rmse_table(model, atoms_list, predictions=None) -> dict:
    """{n_layers | "all": {"n_structures", "E_meV_per_atom", "F_eV_per_A", "F_inplane_eV_per_A",
    "F_outofplane_eV_per_A"}}; energies per atom with E0 included, forces per component."""
    atoms_list = list(atoms_list)
    groups = error_arrays(model, atoms_list, predictions)
    table = {}
    allg = {"dE": [], "dF_inplane": [], "dF_out": []}
    for key in sorted(groups, key=lambda s: (not s.isdigit(), int(s) if s.isdigit() else 0, s)):
        g = groups[key]
        table[key] = _row(g["n"], g["dE"], g["dF_inplane"], g["dF_out"])
        for k in allg:
            allg[k].append(np.atleast_1d(np.asarray(g[k], float)))
    cat = {k: np.concatenate(v) if v else np.zeros(0) for k, v in allg.items()}
    table["all"] = _row(sum(g["n"] for g in groups.values()), cat["dE"], cat["dF_inplane"], cat["dF_out"])
    return table


def _row(n, dE, dFin, dFout) -> dict:
    """n structures; E_meV_per_atom over those with a fitted energy (None if none)."""
    return {"n_structures": int(n), "E_meV_per_atom": 1000 * _rmse(dE) if len(dE) else None,
            "F_eV_per_A": _rmse(np.concatenate([np.asarray(dFin), np.asarray(dFout)])),
            "F_inplane_eV_per_A": _rmse(dFin), "F_outofplane_eV_per_A": _rmse(dFout)}


def format_table(tables: dict) -> str:
    """tables: {"train": rmse_table, "test": rmse_table, ...} -> text table."""
    lines = [f"{'set':<6} {'layers':>6} {'n':>5} {'E meV/at':>9} {'F eV/Å':>8} {'F_xy':>8} {'F_z':>8}"]
    for name, t in tables.items():
        for key, r in t.items():
            e = "-" if r["E_meV_per_atom"] is None else f"{r['E_meV_per_atom']:.3f}"
            lines.append(f"{name:<6} {key:>6} {r['n_structures']:>5} {e:>9} "
                         f"{r['F_eV_per_A']:>8.4f} {r['F_inplane_eV_per_A']:>8.4f} {r['F_outofplane_eV_per_A']:>8.4f}")
    return "\n".join(lines)


def write_plots(model, sets: dict, outdir) -> list:
    """Parity plots and error histograms (PNG) for each {name: atoms_list}; returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from pathlib import Path

    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, atoms_list in sets.items():
        groups = error_arrays(model, atoms_list)
        fig, ax = plt.subplots(1, 2, figsize=(9, 4))
        for key, g in groups.items():
            ax[0].plot(g["E_ref"], g["E_pred"], ".", label=f"{key} layers")
            ax[1].plot(g["F_ref"], g["F_pred"], ".", ms=2, label=f"{key} layers")
        for a, lab in zip(ax, ("E (eV/atom)", "F (eV/Å)")):
            lo, hi = a.get_xlim()
            a.plot([lo, hi], [lo, hi], "k-", lw=0.5)
            a.set_xlabel(f"reference {lab}")
            a.set_ylabel(f"model {lab}")
            a.legend(fontsize=7)
        fig.suptitle(f"parity: {name}")
        fig.tight_layout()
        p = outdir / f"parity_{name}.png"
        fig.savefig(p, dpi=120)
        plt.close(fig)
        paths.append(p)
        fig, ax = plt.subplots(1, 3, figsize=(12, 3.5))
        for key, g in groups.items():
            ax[0].hist(1000 * np.asarray(g["dE"]), bins=30, alpha=0.6, label=f"{key} layers")
            ax[1].hist(g["dF_inplane"], bins=50, alpha=0.6, label=f"{key} layers")
            ax[2].hist(g["dF_out"], bins=50, alpha=0.6, label=f"{key} layers")
        for a, lab in zip(ax, ("ΔE (meV/atom)", "ΔF in-plane (eV/Å)", "ΔF out-of-plane (eV/Å)")):
            a.set_xlabel(lab)
            a.legend(fontsize=7)
        fig.suptitle(f"errors: {name}")
        fig.tight_layout()
        p = outdir / f"errors_{name}.png"
        fig.savefig(p, dpi=120)
        plt.close(fig)
        paths.append(p)
    return paths
