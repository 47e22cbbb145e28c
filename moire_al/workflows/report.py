"""Figures of a learning loop, from its round documents (see docs/interfaces.md).

Used for the report the demo writes and by the web dashboard, so both show the
same plots.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def learning_curve_figure(rounds: list[dict]):
    """Force RMSE (held-out) vs training-set size, and max σ_F vs round with the threshold."""
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.6))
    n = [r["n_train"] for r in rounds]
    f = [(r.get("rmse") or {}).get("F", np.nan) for r in rounds]
    a1.plot(n, f, "o-")
    a1.set_xlabel("labelled structures in training set")
    a1.set_ylabel("force RMSE, test split (eV/Å)")
    a1.set_title("learning curve")
    r = [d["round"] for d in rounds]
    a2.semilogy(r, [max(d.get("max_sigma_f", 0), 1e-12) for d in rounds], "o-", label="max over pool")
    a2.semilogy(r, [max(d.get("median_sigma_f", 0), 1e-12) for d in rounds], "s--", label="median")
    if rounds:
        a2.axhline(rounds[-1].get("threshold", np.nan), color="k", lw=0.8, ls=":", label="threshold")
    a2.set_xlabel("round")
    a2.set_ylabel("committee uncertainty σ_F")
    a2.legend(fontsize=8)
    fig.tight_layout()
    return fig


def sigma_f_figure(rounds: list[dict]):
    """Distribution of the pool's σ_F in each round."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    data = [np.asarray(d.get("sigma_f") or [np.nan], dtype=float) for d in rounds]
    data = [np.clip(x, 1e-9, None) for x in data]
    if rounds:
        ax.boxplot(data, positions=[d["round"] for d in rounds], widths=0.6)
        ax.set_yscale("log")
        ax.axhline(rounds[-1].get("threshold", np.nan), color="k", lw=0.8, ls=":")
    ax.set_xlabel("round")
    ax.set_ylabel("σ_F of pool candidates")
    ax.set_title("pool uncertainty per round")
    fig.tight_layout()
    return fig


def parity_figure(round_doc: dict | None):
    """Predicted vs reference force components on the test split."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.2, 4.2))
    par = (round_doc or {}).get("parity") or {}
    ref, pred = np.asarray(par.get("F_ref", [])), np.asarray(par.get("F_pred", []))
    if len(ref):
        ax.plot(ref, pred, ".", ms=2, alpha=0.6)
        lim = float(np.max(np.abs(np.concatenate([ref, pred])))) * 1.05
        ax.plot([-lim, lim], [-lim, lim], "k-", lw=0.6)
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
    ax.set_xlabel("reference force (eV/Å)")
    ax.set_ylabel("model force (eV/Å)")
    ax.set_title(f"parity, round {(round_doc or {}).get('round', '-')}")
    fig.tight_layout()
    return fig


def write_plots(rounds: list[dict], outdir: str | Path) -> list[Path]:
    plt = _plt()
    outdir = Path(outdir)
    out = []
    for name, fig in (("learning_curve.png", learning_curve_figure(rounds)),
                      ("sigma_f.png", sigma_f_figure(rounds)),
                      ("parity.png", parity_figure(rounds[-1] if rounds else None))):
        fig.savefig(outdir / name, dpi=110)
        plt.close(fig)
        out.append(outdir / name)
    return out
