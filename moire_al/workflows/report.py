"""Figures of a learning loop, from its round documents (see docs/interfaces.md).

One implementation for the web dashboard (``/learning``) and the report the demo
and ``moire-al report`` write. The functions take round documents (any subset of
fields; missing or non-finite values are skipped) and return a matplotlib
``Figure`` (no pyplot: safe in gunicorn threads), or None when there is nothing
to draw yet.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from moire_al.store.documents import RoundDoc


def _figure(width: float = 9.0, height: float = 4.0):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def save_png(fig, target) -> None:
    """Write ``fig`` as PNG to a path or a binary file object."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig).print_png(target)


def _num(value: Any, default: float | None = None) -> float | None:
    """``value`` as a finite float, else ``default``."""
    if isinstance(value, bool) or value is None:
        return default
    try:
        x = float(value)
    except (TypeError, ValueError):
        return default
    return x if math.isfinite(x) else default


def _rmse(doc: RoundDoc, key: str) -> float | None:
    rmse = doc.rmse
    return _num(rmse.get(key)) if isinstance(rmse, dict) else None


def _floats(values: Any) -> list[float]:
    if not isinstance(values, (list, tuple)):
        return []
    out = (_num(v) for v in values)
    return [v for v in out if v is not None]


def _fmt_round(value: Any) -> str:
    x = _num(value)
    return "-" if x is None else str(int(x))


def learning_curve_figure(docs: list[RoundDoc]):
    """Force RMSE on the test split vs training-set size; pool σ_F (max_i ‖σ F_i‖, eV/Å) vs round."""
    if not docs:
        return None
    fig = _figure(10.0, 4.0)
    ax1, ax2 = fig.subplots(1, 2)

    labels = (("F", "all", "o-"), ("F_inplane", "in-plane", "s--"), ("F_outofplane", "out-of-plane", "^--"))
    drawn = False
    for key, label, style in labels:
        pts = [(_num(d.n_train), _rmse(d, key)) for d in docs]
        pts = [(n, r) for n, r in pts if n is not None and r is not None]
        if pts:
            ax1.plot(*zip(*pts), style, label=label, ms=5)
            drawn = True
    if drawn:
        ax1.legend(fontsize=8)
        xs = [n for d in docs if (n := _num(d.n_train)) and n > 0]
        if xs and max(xs) / min(xs) > 20:
            ax1.set_xscale("log")
    else:
        ax1.text(0.5, 0.5, "no test RMSE yet", ha="center", va="center", transform=ax1.transAxes)
    ax1.set_xlabel("training structures")
    ax1.set_ylabel("force RMSE (eV/Å)")
    ax1.set_title("learning curve (held-out test split)")
    ax1.grid(alpha=0.3)

    rounds = [_num(d.round) for d in docs]
    for key, label, style in (("max_sigma_f", "max σ_F", "o-"), ("median_sigma_f", "median σ_F", "s:")):
        pts = [(r, _num(getattr(d, key))) for r, d in zip(rounds, docs)]
        pts = [(r, v) for r, v in pts if r is not None and v is not None]
        if pts:
            ax2.plot(*zip(*pts), style, label=label, ms=5)
    _threshold_line(ax2, docs)
    ax2.set_xlabel("round")
    ax2.set_ylabel("σ_F = max_i ‖σ F_i‖ (eV/Å)")
    ax2.set_title("committee uncertainty of the pool")
    _integer_xaxis(ax2)
    ax2.grid(alpha=0.3)
    if ax2.get_legend_handles_labels()[0]:
        ax2.legend(fontsize=8)
    return fig


def _threshold_line(ax, docs: list[RoundDoc]) -> None:
    pts = [(_num(d.round), _num(d.threshold)) for d in docs]
    pts = [(r, t) for r, t in pts if r is not None and t is not None]
    if not pts:
        return
    values = {t for _, t in pts}
    if len(values) == 1:
        ax.axhline(values.pop(), color="C3", ls="--", lw=1.2, label="threshold")
    else:
        ax.step(*zip(*pts), where="mid", color="C3", ls="--", lw=1.2, label="threshold")


def _integer_xaxis(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def sigma_f_figure(docs: list[RoundDoc]):
    """Distribution of the scored candidates' σ_F in each round."""
    data = [(_num(d.round), _floats(d.sigma_f)) for d in docs]
    data = [(r, v) for r, v in data if r is not None and v]
    if not data:
        return None
    fig = _figure(max(6.0, min(14.0, 3.0 + 0.5 * len(data))), 4.0)
    ax = fig.add_subplot()
    positions = [r for r, _ in data]
    ax.boxplot([v for _, v in data], positions=positions, widths=0.6, showfliers=True,
               flierprops={"markersize": 2, "alpha": 0.4})
    step = max(1, len(positions) // 20)
    ax.set_xticks(positions[::step], [_fmt_round(r) for r in positions[::step]])
    _threshold_line(ax, docs)
    allv = [x for _, v in data for x in v]
    pos = [x for x in allv if x > 0]
    if pos and len(pos) == len(allv) and max(pos) / min(pos) > 100:
        ax.set_yscale("log")
    ax.set_xlim(min(positions) - 0.7, max(positions) + 0.7)
    ax.set_xlabel("round")
    ax.set_ylabel("σ_F of scored candidates (eV/Å)")
    ax.set_title("pool uncertainty per round")
    ax.grid(alpha=0.3, axis="y")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    return fig


def parity_figure(docs: list[RoundDoc], round_: int | None = None):
    """Force parity (test split) of the latest round with parity data, or of ``round_``."""
    want = round_
    chosen, ref, pred = None, [], []
    for d in reversed(docs):
        if want is not None and _num(d.round) != want:
            continue
        par = d.parity if isinstance(d.parity, dict) else {}
        pairs = [(_num(a), _num(b)) for a, b in zip(par.get("F_ref") or [], par.get("F_pred") or [])]
        pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
        if pairs:
            chosen = d
            ref, pred = (list(x) for x in zip(*pairs))
            break
    if chosen is None:
        return None
    fig = _figure(5.0, 5.0)
    ax = fig.add_subplot()
    ax.scatter(ref, pred, s=4, alpha=0.5, lw=0)
    lo, hi = min(min(ref), min(pred)), max(max(ref), max(pred))
    pad = 0.05 * (hi - lo or 1.0)
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="0.3", lw=1)
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_ylim(lo - pad, hi + pad)
    ax.set_aspect("equal")
    rmse = math.sqrt(sum((a - b) ** 2 for a, b in zip(ref, pred)) / len(ref))
    ax.text(0.04, 0.96, f"RMSE {rmse:.3f} eV/Å\n{len(ref)} components", transform=ax.transAxes,
            va="top", fontsize=9, bbox={"fc": "white", "ec": "0.8"})
    ax.set_xlabel("reference force (eV/Å)")
    ax.set_ylabel("ACE force (eV/Å)")
    ax.set_title(f"force parity, round {_fmt_round(chosen.round)}")
    ax.grid(alpha=0.3)
    return fig


FIGURES = {"learning_curve": learning_curve_figure, "sigma_f": sigma_f_figure, "parity": parity_figure}


def table_f_rmse(table: Any) -> float | None:
    """The force RMSE over all structures of a ``metrics.rmse_table`` dict (None without one)."""
    return _num(table.get("all", {}).get("F_eV_per_A")) if isinstance(table, dict) else None


def neb_profile_figure(doc) -> Any:
    """The NEB energy profiles of a fine-tuning job (:class:`FinetuneDoc`): the base
    model's path, the fine-tuned model's, and the labels along the base path; None
    without a stored NEB."""
    curves = [(name, res) for name, res in (("base model", doc.neb_before), ("fine-tuned", doc.neb_after))
              if isinstance(res, dict) and res.get("energies_rel")]
    if not curves:
        return None
    fig = _figure(6.5, 4.0)
    ax = fig.add_subplot()
    for k, (name, res) in enumerate(curves):
        e = _floats(res["energies_rel"])
        x = _floats(res.get("path_coordinate")) or list(range(len(e)))
        barrier = _num(res.get("barrier"))
        label = f"{name}: barrier {barrier:.3f} eV" if barrier is not None else name
        ax.plot(x[:len(e)], e, "o-", color=f"C{k}", label=label)
    if doc.barrier_labels is not None:
        ax.axhline(float(doc.barrier_labels), color="k", ls=":", lw=1,
                   label=f"{doc.labeller or 'labels'} on the base path: {float(doc.barrier_labels):.3f} eV")
    ax.set_xlabel("reaction coordinate (Å)")
    ax.set_ylabel("E − E(initial) (eV)")
    ax.legend(fontsize=8)
    return fig


def write_plots(rounds: list[RoundDoc], outdir: str | Path) -> list[Path]:
    """The three figures as PNG files in ``outdir`` (those with data)."""
    outdir = Path(outdir)
    out = []
    for name, make in FIGURES.items():
        fig = make(rounds)
        if fig is not None:
            save_png(fig, outdir / f"{name}.png")
            out.append(outdir / f"{name}.png")
    return out
