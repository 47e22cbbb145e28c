"""Pictures: top view coloured by layer and a map of local stacking."""

from __future__ import annotations

import numpy as np


def local_stacking(atoms, upper: int = 1, lower: int = 0, smooth: float = 2.5):
    """Per-atom stacking descriptor of layer ``upper`` over ``lower``.

    For each atom of ``upper``, the in-plane distance (Å) to the nearest atom of
    ``lower`` (periodic images included), averaged over the ``upper`` atoms
    within ``smooth`` Å. ≈0 in AA (AA') regions, ≈d_AB/2 in AB/BA regions, larger
    at saddle points. Returns (xy of the upper atoms, descriptor).
    """
    from scipy.spatial import cKDTree

    lay = atoms.arrays["layer"]
    top = atoms.positions[lay == upper, :2]
    bot = atoms.positions[lay == lower, :2]
    T = atoms.cell.array[:2, :2]
    imgs = np.array([[i, j] for i in (-1, 0, 1) for j in (-1, 0, 1)]) @ T
    d, _ = cKDTree((bot[None] + imgs[:, None]).reshape(-1, 2)).query(top)
    if smooth > 0:
        tops = (top[None] + imgs[:, None]).reshape(-1, 2)
        dd = np.tile(d, len(imgs))
        tree = cKDTree(tops)
        d = np.array([dd[nb].mean() for nb in tree.query_ball_point(top, smooth)])
    return top, d


def draw(atoms, path, title: str | None = None) -> None:
    """Write a PNG: left, top view coloured by layer; right, the local stacking map of layers 0/1."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_layers = int(atoms.arrays["layer"].max()) + 1 if len(atoms) else 0
    ncol = 2 if n_layers >= 2 else 1
    fig, axes = plt.subplots(1, ncol, figsize=(6 * ncol, 5.5), squeeze=False)
    ax = axes[0, 0]
    size = max(0.5, 3000.0 / max(len(atoms), 1))
    cmap = plt.get_cmap("tab10")
    T = atoms.cell.array[:2, :2]
    corners = np.array([[0, 0], T[0], T[0] + T[1], T[1], [0, 0]])
    for k in range(n_layers):
        sel = atoms.arrays["layer"] == k
        ax.scatter(atoms.positions[sel, 0], atoms.positions[sel, 1], s=size, color=cmap(k % 10),
                   label=f"layer {k}", linewidths=0, alpha=0.8)
    ax.plot(corners[:, 0], corners[:, 1], "k-", lw=0.8)
    if "centre" in atoms.info and "r1" in atoms.info:
        C = np.asarray(atoms.info["centre"], float)
        for rad, ls in ((atoms.info["r1"], "-"), (atoms.info["r2"], "--")):
            ax.add_patch(plt.Circle(C, rad, fill=False, ls=ls, color="k", lw=1))
    ax.set_aspect("equal")
    ax.set_xlabel("x (Å)")
    ax.set_ylabel("y (Å)")
    ax.legend(loc="upper left", fontsize=8, markerscale=max(1.0, 8 / np.sqrt(size)))
    ax.set_title(title or atoms.info.get("generator", "structure"))
    if ncol == 2:
        ax2 = axes[0, 1]
        xy, d = local_stacking(atoms)
        sc = ax2.scatter(xy[:, 0], xy[:, 1], c=d, s=max(size * 2, 2), cmap="viridis", linewidths=0)
        ax2.plot(corners[:, 0], corners[:, 1], "k-", lw=0.8)
        ax2.set_aspect("equal")
        ax2.set_title("local stacking, layer 1 over 0 (0 = AA)")
        ax2.set_xlabel("x (Å)")
        fig.colorbar(sc, ax=ax2, label="mean in-plane distance to nearest lower atom (Å)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
