"""Correlation analyses of MD trajectories: MSD and D, VACF and vibrational DOS,
Green–Kubo thermal conductivity, Arrhenius fits. Plain numpy on arrays from
:class:`moire_al.analysis.md.MDRun`; every average runs over all time origins
(FFT correlations, O(T log T)).

Units: time fs (ps where named), lengths Å, D Å²/ps (1 Å²/ps = 1e-4 cm²/s),
frequencies THz, κ W/(m·K).
"""

from __future__ import annotations

import math

import numpy as np

from moire_al.errors import MoireALError

KB = 8.617333262e-5                      # eV/K
EV_PER_A_FS_K_TO_W_PER_M_K = 1.602176634e-19 / 1e-15 * 1e10   # eV/(Å·fs·K) -> W/(m·K)


def _corr(a: np.ndarray, max_lag: int) -> np.ndarray:
    """Σ_t a(t)·a(t+k) / (T − k) for k < max_lag, over axis 0, summed over the rest
    of the trailing axes except the second (atoms): returns (max_lag, N) for (T, N, ...)."""
    T = a.shape[0]
    nfft = 1 << int(math.ceil(math.log2(2 * T)))
    F = np.fft.rfft(a, n=nfft, axis=0)
    c = np.fft.irfft(F * np.conj(F), n=nfft, axis=0)[:max_lag]
    c = c.reshape(max_lag, a.shape[1], -1).sum(axis=2) if a.ndim > 2 else c
    return c / (T - np.arange(max_lag))[:, None]


def autocorrelation(a, max_lag: int | None = None) -> np.ndarray:
    """⟨a(t0)·a(t0+k)⟩ over all origins t0 for a (T, ...) array (components summed)."""
    a = np.asarray(a, float)
    a2 = a.reshape(len(a), 1, -1)
    max_lag = min(max_lag or len(a), len(a))
    return _corr(a2, max_lag)[:, 0]


def msd_components(positions, max_lag: int) -> np.ndarray:
    """MSD per atom and Cartesian component over all origins: (max_lag, N, 3).

    MSD(k) = S1(k) − 2 S2(k) with S2 the autocorrelation of x (FFT) and
    S1(k) = Σ_t [x(t)² + x(t+k)²] / (T − k) (the fast-correlation algorithm of
    nMoldyn, Kneller et al. 1995)."""
    x = np.asarray(positions, float)
    T = len(x)
    out = np.empty((max_lag, x.shape[1], 3))
    for c in range(3):
        xc = x[:, :, c]
        s2 = _corr(xc, max_lag)
        d = xc ** 2
        csum = np.concatenate([np.zeros((1, xc.shape[1])), np.cumsum(d, axis=0)])
        total = csum[-1]
        k = np.arange(max_lag)
        # Σ_{t=0}^{T-k-1} x(t)^2 + Σ_{t=k}^{T-1} x(t)^2
        s1 = (csum[T - k] + (total - csum[k])) / (T - k)[:, None]
        out[:, :, c] = s1 - 2 * s2
    return out


def _remove_com(positions, masses):
    m = np.asarray(masses, float)
    com = np.einsum("tna,n->ta", positions, m) / m.sum()
    return positions - com[:, None, :]


def _fit_slope(t, y):
    A = np.vstack([t, np.ones_like(t)]).T
    return float(np.linalg.lstsq(A, y, rcond=None)[0][0])


def diffusion(times_fs, positions, masses, layers=None, window=(0.3, 0.9), n_blocks: int = 3) -> dict:
    """Mean squared displacements and diffusion coefficients from unwrapped positions.

    The centre of mass is removed frame by frame. MSD per layer and in-plane (xy)
    / out-of-plane (z) / total, over all time origins. D from a straight-line fit of
    MSD(t) over ``window`` (fractions of one block's length; the run is cut into
    ``n_blocks`` blocks): D = slope / (2 d), d = 2 in-plane, 1 out-of-plane, 3 total.
    The error is the standard error of the blocks' D. The default window starts late
    (0.3 of a block): in a small crystal cell the MSD approaches its plateau with
    coherent oscillations of the few lowest modes, which a short early window reads
    as a slope (measured on diamond, REBO, 300 K: (0.1, 0.5) gave D 4–50 σ from 0,
    (0.3, 0.9) within 1.2 σ). A free-standing layer's out-of-plane MSD keeps growing
    for the period of its slowest flexural mode (∝ cell size²). Result keys: ``lag_ps``,
    ``msd`` ({"all", "layer_0", ...} → {"inplane", "outofplane", "total"} curves, Å²),
    ``D`` (same keys → {"inplane", "outofplane", "total"} → {"value", "error"},
    Å²/ps), ``fit_window_ps``, ``n_blocks``, ``msd_final`` (total MSD at the last
    lag of the full trajectory, per group).
    """
    t = np.asarray(times_fs, float)
    x = _remove_com(np.asarray(positions, float), masses)
    T = len(t)
    if T < 8 * n_blocks:
        raise MoireALError(f"MSD needs at least {8 * n_blocks} samples, got {T}")
    dt = (t[-1] - t[0]) / (T - 1) / 1000.0          # ps
    block = T // n_blocks
    lo, hi = max(1, int(window[0] * block)), max(int(window[0] * block) + 2, int(window[1] * block))
    groups = {"all": np.arange(x.shape[1])}
    if layers is not None:
        lay = np.asarray(layers)
        for k in np.unique(lay):
            groups[f"layer_{int(k)}"] = np.flatnonzero(lay == k)
    dims = {"inplane": ([0, 1], 2), "outofplane": ([2], 1), "total": ([0, 1, 2], 3)}
    max_lag = T // 2
    full = msd_components(x, max_lag)
    blocks = [msd_components(x[b * block:(b + 1) * block], hi) for b in range(n_blocks)]
    lag = np.arange(max_lag) * dt
    res = {"lag_ps": lag, "msd": {}, "D": {}, "fit_window_ps": [lo * dt, (hi - 1) * dt],
           "n_blocks": n_blocks, "msd_final": {}}
    for g, idx in groups.items():
        res["msd"][g], res["D"][g] = {}, {}
        for name, (cs, d) in dims.items():
            curve = full[:, idx][:, :, cs].sum(axis=2).mean(axis=1)
            res["msd"][g][name] = curve
            D = _fit_slope(lag[lo:hi], curve[lo:hi]) / (2 * d)
            Db = [_fit_slope(lag[lo:hi], b[lo:hi, idx][:, :, cs].sum(axis=2).mean(axis=1)) / (2 * d)
                  for b in blocks]
            res["D"][g][name] = {"value": D, "error": float(np.std(Db, ddof=1) / math.sqrt(n_blocks)),
                                 "blocks": Db}
        res["msd_final"][g] = float(res["msd"][g]["total"][-1])
    return res


def vacf(times_fs, velocities, masses, max_lag: int | None = None) -> dict:
    """Normalised velocity autocorrelation over atoms and all time origins.

    Mass-weighted, C(t) = Σ_i m_i ⟨v_i(0)·v_i(t)⟩ / Σ_i m_i ⟨v_i²⟩ (for one species the
    seed's unweighted definition); also the in-plane and out-of-plane parts, each
    normalised by its own value at 0. ``mv2_eV`` = ⟨m v²⟩ per atom (eV; equipartition:
    3 k_B T), ``mv2_components_eV`` per Cartesian direction (k_B T each).
    """
    from ase import units

    t = np.asarray(times_fs, float)
    v = np.asarray(velocities, float)                 # Å/fs
    m = np.asarray(masses, float)
    T = len(t)
    max_lag = min(max_lag or T // 2, T)
    sw = np.sqrt(m)[None, :, None] * v
    per = np.stack([_corr(sw[:, :, c], max_lag).sum(axis=1) for c in range(3)], axis=1)  # (lag, 3)
    # m v² with v in Å/fs: amu Å²/fs² -> eV
    to_ev = 1.0 / units.fs ** 2
    comp0 = per[0] / len(m) * to_ev
    total = per.sum(axis=1)
    inpl = per[:, :2].sum(axis=1)
    out = per[:, 2]
    dt = (t[-1] - t[0]) / (T - 1) if T > 1 else 0.0
    return {"time_fs": np.arange(max_lag) * dt, "vacf": total / total[0],
            "vacf_inplane": inpl / inpl[0], "vacf_outofplane": out / out[0] if out[0] > 0 else out,
            "unnormalised_total": total, "mv2_eV": float(comp0.sum()),
            "mv2_components_eV": comp0.tolist()}


def vdos(vacf_result: dict, key: str = "unnormalised_total", window: str = "hann") -> dict:
    """Vibrational DOS from the (mass-weighted) VACF: g(ν) ∝ ∫ C(t) w(t) cos(2πνt) dt,
    a one-sided Hann window w against truncation ringing; normalised ∫ g dν = 1.
    Frequencies in THz from 0 to the Nyquist frequency of the sampling."""
    t = np.asarray(vacf_result["time_fs"], float)
    c = np.asarray(vacf_result[key], float)
    n = len(c)
    if n < 4:
        raise MoireALError("vDOS needs at least 4 VACF lags")
    dt = t[1] - t[0]
    w = np.cos(0.5 * np.pi * np.arange(n) / n) ** 2 if window == "hann" else np.ones(n)
    cw = c * w
    sym = np.concatenate([cw, cw[-2:0:-1]])            # even extension: a cosine transform
    g = np.fft.rfft(sym).real * dt
    nu = np.fft.rfftfreq(len(sym), d=dt * 1e-3)        # 1/ps = THz
    g = np.clip(g, 0, None)
    g /= np.trapezoid(g, nu)
    return {"frequency_THz": nu, "dos": g, "mean_frequency_THz": float(np.trapezoid(nu * g, nu)),
            "resolution_THz": float(1.0 / (n * dt * 1e-3))}


def dos_overlap(nu_a, g_a, nu_b, g_b) -> float:
    """∫ min(g_a, g_b) dν of two normalised spectra on a common grid (1 = identical)."""
    grid = np.linspace(0, max(nu_a[-1], nu_b[-1]), 2000)
    a = np.interp(grid, nu_a, g_a, right=0)
    b = np.interp(grid, nu_b, g_b, right=0)
    a /= np.trapezoid(a, grid)
    b /= np.trapezoid(b, grid)
    return float(np.trapezoid(np.minimum(a, b), grid))


# ------------------------------------------------------------------ Green-Kubo
def green_kubo(times_fs, currents, volume: float, temperature: float, max_lag_fs: float | None = None,
               plateau=(0.5, 1.0)) -> dict:
    """Running Green–Kubo integrals of one run's heat current (eV·Å/fs, (H, 3)).

    κ_aa(τ) = 1/(V k_B T²) ∫_0^τ ⟨J_a(0) J_a(t)⟩ dt (trapezoid, all origins);
    ``kappa`` per component is the mean of κ(τ) over ``plateau`` (fractions of the
    largest lag, default its second half). Components: xx, yy, zz; ``inplane`` is
    (xx + yy)/2 and ``cross_plane`` zz. W/(m·K)."""
    t = np.asarray(times_fs, float)
    J = np.asarray(currents, float)
    H = len(t)
    if H < 16:
        raise MoireALError(f"Green-Kubo needs at least 16 heat-current samples, got {H}")
    dt = (t[-1] - t[0]) / (H - 1)
    n_lag = H // 2 if max_lag_fs is None else min(H, int(max_lag_fs / dt) + 1)
    hcacf = _corr(J.reshape(H, 3)[:, :, None], n_lag)      # (lag, 3): ⟨J_a J_a⟩
    pref = EV_PER_A_FS_K_TO_W_PER_M_K / (volume * KB * temperature ** 2)
    run = np.zeros_like(hcacf)
    run[1:] = np.cumsum(0.5 * (hcacf[1:] + hcacf[:-1]) * dt, axis=0) * pref
    a, b = int(plateau[0] * (n_lag - 1)), max(int(plateau[0] * (n_lag - 1)) + 1, int(plateau[1] * (n_lag - 1)))
    k = run[a:b + 1].mean(axis=0)
    return {"lag_fs": np.arange(n_lag) * dt, "hcacf": hcacf, "running": run,
            "kappa": {"xx": float(k[0]), "yy": float(k[1]), "zz": float(k[2]),
                      "inplane": float(0.5 * (k[0] + k[1])), "cross_plane": float(k[2])},
            "plateau_fs": [float(a * dt), float(b * dt)]}


def combine_kappa(runs: list[dict]) -> dict:
    """Mean and standard error of κ over independent runs (same lags)."""
    keys = ("xx", "yy", "zz", "inplane", "cross_plane")
    vals = {k: np.array([r["kappa"][k] for r in runs]) for k in keys}
    n = len(runs)
    out = {k: {"value": float(v.mean()), "error": float(v.std(ddof=1) / math.sqrt(n)) if n > 1 else None,
               "runs": v.tolist()} for k, v in vals.items()}
    lag = min(len(r["lag_fs"]) for r in runs)
    stack = np.stack([np.asarray(r["running"])[:lag] for r in runs])
    return {"kappa": out, "n_runs": n, "lag_fs": np.asarray(runs[0]["lag_fs"])[:lag],
            "running_mean": stack.mean(axis=0),
            "running_err": stack.std(axis=0, ddof=1) / math.sqrt(n) if n > 1 else np.zeros_like(stack[0])}


# ------------------------------------------------------------------ Arrhenius
def arrhenius(temperatures, D, D_err=None, significance: float = 2.0) -> dict:
    """Fit ln D = ln D0 − E_a / (k_B T) over the temperatures where D exceeds
    ``significance`` × its error (all positive D when no errors). E_a in eV, D0 in
    Å²/ps; null (with the reason) when fewer than two points qualify."""
    T = np.asarray(temperatures, float)
    D = np.asarray(D, float)
    err = np.zeros_like(D) if D_err is None else np.asarray(D_err, float)
    use = (D > 0) & (D > significance * err)
    out = {"used_temperatures": T[use].tolist(), "E_a_eV": None, "D0_A2_ps": None, "reason": None}
    if use.sum() < 2:
        out["reason"] = (f"only {int(use.sum())} temperature(s) with D above {significance:g} x its error "
                         "(a crystal does not diffuse)")
        return out
    slope, icpt = np.polyfit(1.0 / T[use], np.log(D[use]), 1)
    out.update(E_a_eV=float(-slope * KB), D0_A2_ps=float(np.exp(icpt)))
    return out
