"""PNG plots of the analyses (matplotlib, Agg backend). Each comparison plot takes
``{calc_name: result}`` so several calculators can be drawn together."""

from __future__ import annotations

import os

import numpy as np


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    _plt().close(fig)
    return path


def _cell_outline(ax, cell):
    c = np.array([[0, 0], cell[0, :2], cell[0, :2] + cell[1, :2], cell[1, :2], [0, 0]])
    ax.plot(c[:, 0], c[:, 1], "k-", lw=0.8)


def _field_map(ax, atoms, xy, values, n_grid, cmap, label, fig):
    from moire_al.analysis.moire import interpolate_map

    idx = np.arange(len(xy))
    proxy = atoms.copy()
    # interpolate_map wants positions of the atoms indexed; build a stand-in
    sub = proxy[:len(xy)]
    sub.positions[:, :2] = xy
    X, Y, V = interpolate_map(sub, idx, values, n_grid)
    pm = ax.pcolormesh(X, Y, V, shading="auto", cmap=cmap)
    fig.colorbar(pm, ax=ax, label=label)
    _cell_outline(ax, atoms.cell.array)
    ax.set_aspect("equal")
    ax.set_xlabel("x (Å)")
    ax.set_ylabel("y (Å)")


def plot_moire_maps(atoms, fields, outdir, prefix="moire", n_grid=64, nodes=None) -> dict:
    """Interlayer distance, stacking and (if present) displacement maps."""
    plt = _plt()
    out = {}
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    _field_map(ax, atoms, fields["xy"], fields["d"], n_grid, "viridis", "d (Å)", fig)
    if nodes is not None and len(nodes):
        ax.plot(nodes[:, 0], nodes[:, 1], "r+", ms=10, label="AA nodes")
        ax.legend(loc="upper right", fontsize=7)
    ax.set_title("interlayer distance")
    out["interlayer_distance"] = _save(fig, os.path.join(outdir, f"{prefix}_distance.png"))

    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    colours = {"AA": "tab:red", "AA'": "tab:purple", "AB": "tab:blue", "BA": "tab:cyan",
               "SP": "tab:orange"}
    for lab, col in colours.items():
        m = fields["stacking"] == lab
        if m.any():
            ax.scatter(fields["xy"][m, 0], fields["xy"][m, 1], s=6, c=col, label=lab)
    _cell_outline(ax, atoms.cell.array)
    ax.set_aspect("equal")
    ax.legend(fontsize=7, markerscale=2)
    ax.set_title("local stacking")
    out["stacking"] = _save(fig, os.path.join(outdir, f"{prefix}_stacking.png"))

    if "u_inplane" in fields:
        fig, ax = plt.subplots(figsize=(5.5, 4.5))
        _field_map(ax, atoms, fields["xy"], fields["u_z"], n_grid, "coolwarm", "u_z (Å)", fig)
        ax.set_title("out-of-plane displacement")
        out["u_z"] = _save(fig, os.path.join(outdir, f"{prefix}_uz.png"))
        fig, ax = plt.subplots(figsize=(5.5, 4.5))
        _field_map(ax, atoms, fields["xy"], fields["u_inplane"], n_grid, "magma",
                   "|u_xy| (Å)", fig)
        v = fields["u_inplane_vec"]
        ax.quiver(fields["xy"][:, 0], fields["xy"][:, 1], v[:, 0], v[:, 1], color="w",
                  alpha=0.6)
        ax.set_title("in-plane displacement")
        out["u_inplane"] = _save(fig, os.path.join(outdir, f"{prefix}_uxy.png"))
    return out


def plot_moire_sweep(results: dict, outdir, prefix="moire_sweep") -> dict:
    """Seed 000 Fig. 2c/2d and 3c/3d style curves; ``results``: {calc_name: sweep}."""
    plt = _plt()
    out = {}
    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    for k, (name, res) in enumerate(results.items()):
        p = res["points"]
        th = np.array([q["theta_deg"] for q in p])
        col = f"C{k}"
        ax[0].fill_between(th, [q["d_min"] for q in p], [q["d_max"] for q in p],
                           color=col, alpha=0.25)
        ax[0].plot(th, [q["d_mean"] for q in p], "o-", color=col, label=name)
        ax[1].plot(th, np.array([q["period_measured"] for q in p]) / 10, "o", color=col,
                   label=f"{name} (measured)")
    if results:
        p = next(iter(results.values()))["points"]
        th = np.array([q["theta_deg"] for q in p])
        fine = np.linspace(th.min(), th.max(), 200)
        a = p[0]["period_formula"] * 2 * np.sin(np.radians(p[0]["theta_deg"]) / 2)
        ax[1].plot(fine, a / (2 * np.sin(np.radians(fine) / 2)) / 10, "r-",
                   label="a / (2 sin θ/2)")
    ax[0].set_xlabel("θ (°)")
    ax[0].set_ylabel("interlayer distance (Å): ⟨d⟩, [d_min, d_max]")
    ax[1].set_xlabel("θ (°)")
    ax[1].set_ylabel("moiré period (nm)")
    ax[1].set_yscale("log")
    for x in ax:
        x.legend(fontsize=7)
    out["distance_and_period"] = _save(fig, os.path.join(outdir, f"{prefix}_fig2.png"))

    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    for k, (name, res) in enumerate(results.items()):
        p = [q for q in res["points"] if q["u_z_max"] is not None]
        th = [q["theta_deg"] for q in p]
        ax[0].plot(th, [q["u_z_max"] for q in p], "o-", color=f"C{k}", label=name)
        ax[1].plot(th, [q["u_inplane_max"] for q in p], "o-", color=f"C{k}", label=name)
    ax[0].set_ylabel("max out-of-plane displacement (Å)")
    ax[1].set_ylabel("max in-plane displacement (Å)")
    for x in ax:
        x.set_xlabel("θ (°)")
        x.legend(fontsize=7)
    out["displacements"] = _save(fig, os.path.join(outdir, f"{prefix}_fig3.png"))
    return out


def plot_binding(results: dict, path) -> str:
    """Binding curves, one panel per calculator (or overlay); ``results``: {name: binding}."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    styles = ["-", "--", ":", "-."]
    for k, (name, res) in enumerate(results.items()):
        for j, (stk, curve) in enumerate(res["curves"].items()):
            ax.plot(curve["d"], np.array(curve["e_bind"]) * 1000, styles[k % 4],
                    color=f"C{j}", label=f"{stk} ({name})")
    ax.set_xlabel("interlayer distance (Å)")
    ax.set_ylabel("binding energy (meV/atom)")
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_stress_strain(results: dict, path) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for k, (name, res) in enumerate(results.items()):
        ax.plot(np.array(res["strain"]) * 100, res["stress_GPa"], "o-", color=f"C{k}",
                ms=3, label=f"{name}: E = {res['youngs_modulus_GPa'] / 1000:.2f} TPa")
    ax.set_xlabel("strain (%)")
    ax.set_ylabel("stress (GPa)")
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_phonons(results: dict, path) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for k, (name, res) in enumerate(results.items()):
        x = np.array(res["distances"])
        f = np.array(res["frequencies_THz"])
        for b in range(f.shape[1]):
            ax.plot(x, f[:, b], color=f"C{k}", lw=0.8, label=name if b == 0 else None)
    if results:
        res = next(iter(results.values()))
        for xt in res["label_positions"]:
            ax.axvline(xt, color="k", lw=0.5)
        ax.set_xticks(res["label_positions"])
        ax.set_xticklabels(res["labels"])
        ax.set_xlim(res["distances"][0], res["distances"][-1])
    ax.axhline(0, color="k", lw=0.5)
    ax.set_ylabel("frequency (THz)")
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_neb(results: dict, path) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for k, (name, res) in enumerate(results.items()):
        ax.plot(res["path_coordinate"], res["energies_rel"], "o-", color=f"C{k}",
                label=f"{name}: barrier {res['barrier']:.2f} eV")
    ax.set_xlabel("reaction coordinate (Å)")
    ax.set_ylabel("energy (eV)")
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_defects(results: dict, path) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    names = list(results)
    kinds = sorted({k for r in results.values() for k in r["formation_energies"]})
    w = 0.8 / max(len(names), 1)
    for k, name in enumerate(names):
        fe = results[name]["formation_energies"]
        ax.bar(np.arange(len(kinds)) + k * w, [fe.get(x) or 0 for x in kinds], w,
               label=name)
    ax.set_xticks(np.arange(len(kinds)) + w * (len(names) - 1) / 2)
    ax.set_xticklabels(kinds, rotation=15)
    ax.set_ylabel("formation energy (eV)")
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_polarization_maps(atoms, dsigma, potential, outdir, prefix="polarization",
                           title=None) -> dict:
    """Seed 000 Fig. 4b (induced charge per site, one panel per layer, 10¹² e/cm²) and
    Fig. 4a (potential above the top layer, mV)."""
    from moire_al.analysis.common import layers_of

    plt = _plt()
    out = {}
    layers = layers_of(atoms)
    ids = np.unique(layers)
    lim = float(np.abs(dsigma).max()) or 1.0
    fig, axes = plt.subplots(1, len(ids), figsize=(5.2 * len(ids), 4.5), squeeze=False)
    for ax, k in zip(axes[0], ids):
        m = layers == k
        sc = ax.scatter(atoms.positions[m, 0], atoms.positions[m, 1], c=dsigma[m], s=4,
                        cmap="coolwarm", vmin=-lim, vmax=lim)
        _cell_outline(ax, atoms.cell.array)
        ax.set_aspect("equal")
        ax.set_xlabel("x (Å)")
        ax.set_ylabel("y (Å)")
        ax.set_title(f"layer {int(k)}" + (f" ({title})" if title else ""), fontsize=9)
    fig.colorbar(sc, ax=axes[0].tolist(), label="Δσ (10¹² e cm⁻²)")
    fig.set_layout_engine("constrained")
    path = os.path.join(outdir, f"{prefix}_charge.png")
    os.makedirs(outdir, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    out["charge"] = path

    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    V = potential["V"] * 1e3
    pm = ax.pcolormesh(potential["X"], potential["Y"], V, shading="auto", cmap="RdBu_r")
    fig.colorbar(pm, ax=ax, label=f"V at {potential['height']:.2f} Å above the top layer (mV)")
    _cell_outline(ax, atoms.cell.array)
    ax.set_aspect("equal")
    ax.set_xlabel("x (Å)")
    ax.set_ylabel("y (Å)")
    ax.set_title("surface potential" + (f" ({title})" if title else ""), fontsize=9)
    out["potential"] = _save(fig, os.path.join(outdir, f"{prefix}_potential.png"))
    return out


def plot_polarization_sweep(results: dict, outdir, prefix="polarization_sweep") -> dict:
    """Seed 000 Fig. 4c: P_max against θ, relaxed (solid) and rigid (dashed);
    ``results``: {calc_name: sweep}."""
    plt = _plt()
    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    for k, (name, res) in enumerate(results.items()):
        p = res["points"]
        th = [q["theta_deg"] for q in p]
        ax[0].plot(th, [q["relaxed"]["P_max_pC_per_m"] for q in p], "o-", color=f"C{k}",
                   label=f"relaxed ({name})")
        ax[1].plot(th, [q["relaxed"]["charge_max_abs"] for q in p], "o-", color=f"C{k}",
                   label=f"relaxed ({name})")
        if p and "rigid" in p[0]:
            ax[0].plot(th, [q["rigid"]["P_max_pC_per_m"] for q in p], "s--", color=f"C{k}",
                       mfc="none", label="rigid")
            ax[1].plot(th, [q["rigid"]["charge_max_abs"] for q in p], "s--", color=f"C{k}",
                       mfc="none", label="rigid")
    ax[0].set_ylabel("P_max = ε0 (V_max − V_min) (pC/m)")
    ax[1].set_ylabel("max |Δσ| (10¹² e cm⁻²)")
    for x in ax:
        x.set_xlabel("θ (°)")
        x.set_xscale("log")
        x.legend(fontsize=7)
    return {"P_max": _save(fig, os.path.join(outdir, f"{prefix}.png"))}


# ------------------------------------------------------------------ molecular dynamics
def plot_md_traces(run, path) -> str:
    """Temperature, energies and pressure against time (seed 003 Figs 8, 9); a blown-up
    run is marked where it stopped."""
    plt = _plt()
    t = np.asarray(run.time_fs) / 1000
    p = run.pressure_GPa
    n = 3 if p is not None else 2
    fig, ax = plt.subplots(n, 1, figsize=(6.5, 2.2 * n + 0.6), sharex=True)
    ax[0].plot(t, run.temperature_K, lw=0.8)
    ax[0].axhline(run.settings.temperature_K, color="k", ls=":", lw=0.8)
    ax[0].set_ylabel("T (K)")
    ax[1].plot(t, np.asarray(run.epot) / run.n_atoms, lw=0.8, label="E_pot")
    ax[1].plot(t, np.asarray(run.etot) / run.n_atoms, lw=0.8, label="E_tot")
    ax[1].set_ylabel("energy (eV/atom)")
    ax[1].legend(fontsize=7)
    if p is not None:
        ax[2].plot(t, p, lw=0.8)
        ax[2].set_ylabel("pressure (GPa)")
    if not run.verdict.stable and run.verdict.step is not None:
        for a in ax:
            a.axvline(run.verdict.step * run.settings.timestep_fs / 1000, color="r", lw=0.8)
        ax[0].set_title(f"stopped at step {run.verdict.step}: {run.verdict.reason}", fontsize=9)
    else:
        ax[0].set_title(f"{run.settings.ensemble} {run.settings.temperature_K:g} K, {run.calc_name}",
                        fontsize=9)
    ax[-1].set_xlabel("time (ps)")
    return _save(fig, path)


def plot_msd(diffusion, path) -> str:
    """MSD per group (all atoms, each layer), in-plane and out-of-plane; the fit window shaded."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    lag = np.asarray(diffusion["lag_ps"])
    for k, (g, curves) in enumerate(diffusion["msd"].items()):
        D = diffusion["D"][g]
        ax.plot(lag, curves["inplane"], "-", color=f"C{k}",
                label=f"{g} in-plane (D = {D['inplane']['value']:.2e} ± {D['inplane']['error']:.1e})")
        ax.plot(lag, curves["outofplane"], "--", color=f"C{k}",
                label=f"{g} out-of-plane (D = {D['outofplane']['value']:.2e})")
    lo, hi = diffusion["fit_window_ps"]
    ax.axvspan(lo, hi, color="0.9", zorder=0, label="fit window")
    ax.set_xlabel("lag (ps)")
    ax.set_ylabel("MSD (Å²)")
    ax.set_title("D in Å²/ps", fontsize=9)
    ax.legend(fontsize=6)
    return _save(fig, path)


def plot_vacf(results: dict, path) -> str:
    """Normalised VACF on a semi-log scale (|C(t)|), one curve per label (e.g. temperature)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for k, (name, res) in enumerate(results.items()):
        c = np.abs(np.asarray(res["vacf"], float))
        ax.semilogy(np.asarray(res["time_fs"]) / 1000, np.where(c > 0, c, np.nan), color=f"C{k}", lw=0.8,
                    label=name)
    ax.set_xlabel("time (ps)")
    ax.set_ylabel("|VACF| (normalised)")
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_vdos(vdos, phonon_dos, path) -> str:
    """Vibrational DOS of the MD run over the harmonic (phonopy) DOS of the same calculator."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.plot(vdos["frequency_THz"], vdos["dos"], lw=1.0, label="MD (VACF Fourier transform)")
    if phonon_dos:
        ax.fill_between(phonon_dos["frequency_THz"], phonon_dos["dos"], color="0.7", alpha=0.6,
                        label=f"phonopy, σ = {phonon_dos['sigma_THz']:g} THz"
                              + (f" (overlap {phonon_dos['overlap_with_vdos']:.2f})"
                                 if phonon_dos.get("overlap_with_vdos") is not None else ""))
        ax.set_xlim(0, 1.15 * max(phonon_dos["max_frequency_THz"], 1.0))
    else:
        nu, g = np.asarray(vdos["frequency_THz"]), np.asarray(vdos["dos"])
        top = nu[g > 1e-3 * g.max()]
        ax.set_xlim(0, 1.1 * top.max() if len(top) else nu.max())
    ax.set_xlabel("frequency (THz)")
    ax.set_ylabel("DOS (1/THz, normalised)")
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_kappa(kappa, path) -> str:
    """Running Green–Kubo integrals, in-plane and cross-plane, mean ± standard error over runs."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    lag = np.asarray(kappa["lag_fs"]) / 1000
    m, e = np.asarray(kappa["running_mean"]), np.asarray(kappa["running_err"])
    for col, (name, y, dy) in enumerate((("in-plane (xx+yy)/2", 0.5 * (m[:, 0] + m[:, 1]), 0.5 * (e[:, 0] + e[:, 1])),
                                         ("cross-plane zz", m[:, 2], e[:, 2]))):
        ax.plot(lag, y, color=f"C{col}", label=name)
        ax.fill_between(lag, y - dy, y + dy, color=f"C{col}", alpha=0.25)
    lo, hi = np.asarray(kappa["plateau_fs"]) / 1000
    ax.axvspan(lo, hi, color="0.92", zorder=0, label="averaged")
    ax.set_xlabel("correlation time (ps)")
    ax.set_ylabel("κ running integral (W/(m·K))")
    ax.set_title(f"{kappa['temperature_K']:g} K, {kappa.get('n_runs', 0)} runs", fontsize=9)
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_arrhenius(points, fit, path) -> str:
    """ln D against 1000/T (in-plane D of all atoms), with the Arrhenius fit when there is one."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    pts = [p for p in points if p.get("D_inplane") is not None]
    T = np.array([p["temperature_K"] for p in pts])
    D = np.array([p["D_inplane"] for p in pts])
    err = np.array([p["D_inplane_error"] or 0 for p in pts])
    pos = D > 0
    ax.errorbar(1000 / T[pos], D[pos], yerr=np.minimum(err[pos], 0.999 * D[pos]), fmt="o", label="D (in-plane)")
    if (~pos).any():
        ax.plot(1000 / T[~pos], np.abs(err[~pos]) + 1e-12, "v", color="0.5", label="D ≤ 0: error shown")
    if fit.get("E_a_eV") is not None:
        x = np.linspace((1000 / T).min(), (1000 / T).max(), 50)
        ax.plot(x, fit["D0_A2_ps"] * np.exp(-fit["E_a_eV"] / (8.617333262e-5 * 1000 / x)), "r-",
                label=f"E_a = {fit['E_a_eV']:.2f} eV")
    ax.set_yscale("log")
    ax.set_xlabel("1000 / T (1/K)")
    ax.set_ylabel("D (Å²/ps)")
    ax.legend(fontsize=7)
    return _save(fig, path)
