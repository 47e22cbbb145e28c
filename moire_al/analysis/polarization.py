"""Twist-induced charge, surface potential and out-of-plane polarization of hBN
bilayers from tight binding (seed 000, Fig. 4 and App. C).

1. Induced charge: electrons per site up to charge neutrality (p_z, both spins) of the
   stack minus those of the *same* structure with every interlayer hopping removed
   (isolated layers in their actual, e.g. relaxed, geometry):
   Δn_i = n_i(stack) − n_i(isolated layers). Each layer is neutral in the reference, so
   Σ_i Δn_i = 0 and the layer sums are the interlayer charge transfer. Per area:
   Δσ_i = Δn_i / (area per site of its layer), reported in 10¹² e/cm² (electrons;
   positive = electrons gained).
2. Electrostatics: point charges Q_i = −e Δn_i, periodic in-plane. Potential at height h
   above the mean plane of the top layer from the 2D periodic Poisson solution

       φ(r, z) = Σ_{G≠0} e^{iG·r} Σ_i Q_i e^{−iG·r_i} e^{−|G||z − z_i|} / (2 ε0 A |G|)
                 + P_z / (2 ε0),

   the G = 0 term in the gauge where the vacuum levels far above and below average to
   zero (P_z = Σ_i Q_i (z_i − z̄) / A, the mean dipole per area, C/m; > 0 points up).
   The sum keeps |G| < G_c = 2π/(√3 a): the potential coarse-grained over the atomic
   lattice (the moiré-scale potential a probe sees), so an untwisted stacking gives a
   flat map, exactly P_z/(2ε0).
3. P_max = ε0 (V_max − V_min) of that map (pC/m); for large AB/BA domains it tends to
   the AB dipole |P_z(AB)|.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from moire_al.analysis.common import calc_label, jsonable, layers_of
from moire_al.analysis.tightbinding import (
    SlaterKoster, build_system, diagonal_moments, exact_occupations, neutrality_level,
    occupation_from_moments, probe_colours, spectral_bounds,
)
from moire_al.errors import MoireALError

E_CHARGE = 1.602176634e-19   # C
EPS0 = 8.8541878128e-12      # F/m
ANGSTROM = 1e-10             # m
PER_A2_TO_1E12_PER_CM2 = 1e16 / 1e12   # e/Å² -> 1e12 e/cm²
METHODS = ("kpm", "exact")

# Seed 000 Fig. 4c: r = 1 commensurate cells from 21.8° down to ~1°.
SWEEP_MS = (1, 2, 3, 4, 5, 6, 8, 10, 14, 20, 30)


@dataclass
class SiteCharges:
    """Induced charge per site of the input structure (document between the tight-binding
    step and the electrostatics). ``dn``: induced electrons (both spins); ``n`` and
    ``n_ref``: p_z electrons of the stack and of the isolated layers; ``mu``/``mu_ref``:
    charge-neutrality levels (eV); ``gap``/``gap_ref``: (lower, upper) gap edges (eV;
    KPM-broadened for ``kpm``); ``n_tb_sites``: sites after the in-plane repetition
    ``reps``; ``n_colours``: probing vectors (KPM); ``reference``: ``"isolated layers"``
    or ``"structure"`` (a given reference structure)."""

    dn: np.ndarray
    n: np.ndarray
    n_ref: np.ndarray
    mu: float
    mu_ref: float
    gap: tuple
    gap_ref: tuple
    method: str
    n_moments: int | None
    probe_radius: float | None
    n_colours: int | None
    reps: tuple
    n_tb_sites: int
    bounds: tuple
    model: dict
    reference: str = "isolated layers"
    timings: dict = field(default_factory=dict)

    @property
    def sum_dn(self) -> float:
        return float(self.dn.sum())

    def summary(self) -> dict:
        d = asdict(self)
        for k in ("dn", "n", "n_ref"):
            d.pop(k)
        d["sum_dn"] = self.sum_dn
        return jsonable(d)


def induced_charges(atoms, model: SlaterKoster | None = None, method: str = "kpm",
                    n_moments: int = 128, probe_radius: float | None = 20.0,
                    min_width: float = 40.0, reference=None) -> SiteCharges:
    """Δn per site of ``atoms`` (see the module docstring).

    ``reference``: None = the isolated layers of ``atoms`` itself (default); or another
    structure with the same atoms in the same order (e.g. the rigid twist of a relaxed
    cell), whose full stack is then the reference: Δn = n(atoms) − n(reference).

    ``method``: ``"kpm"`` (Chebyshev moments, Jackson kernel, LDOS integrated in closed
    form up to the neutrality level; ``probe_radius`` Å for probing, None = exact
    per-site moments) or ``"exact"`` (dense diagonalisation; small cells).
    ``min_width``: the cell is repeated in-plane until it is that wide (Å), the Γ point
    of the repetition standing for a k-mesh (40 Å: layer charges converged to 1e-6)."""
    if method not in METHODS:
        raise MoireALError(f"method {method!r}: choose from {', '.join(METHODS)}")
    if method == "kpm" and int(n_moments) < 16:
        raise MoireALError(f"n_moments must be >= 16, got {n_moments}")
    if probe_radius is not None and probe_radius <= 0:
        raise MoireALError(f"probe_radius must be positive (Å) or None, got {probe_radius}")
    t0 = time.perf_counter()
    system = build_system(atoms, model, min_width=min_width)
    timings = dict(system.timings)
    if reference is not None:
        if (len(reference) != len(atoms) or reference.get_chemical_symbols()
                != atoms.get_chemical_symbols()):
            raise MoireALError("the reference structure must have the same atoms in the same order")
        ref_system = build_system(reference, system.model, min_width=min_width)
        if ref_system.reps != system.reps:
            raise MoireALError("the reference structure's cell differs from the structure's")
        system.H_layers = ref_system.H
    n_occ = int(np.count_nonzero(~system.boron))  # p_z electrons per spin: one per N
    n_col = None
    t1 = time.perf_counter()
    if method == "exact":
        if system.n_sites > 6000:
            raise MoireALError(f"exact diagonalisation of {system.n_sites} sites is too large; "
                               "use method='kpm'")
        occ, mu, gap = exact_occupations(system.H, n_occ)
        occ0, mu0, gap0 = exact_occupations(system.H_layers, n_occ)
        bounds = (float("nan"), float("nan"))
        M = None
    else:
        lo, hi = spectral_bounds(system.H)
        lo0, hi0 = spectral_bounds(system.H_layers)
        bounds = (min(lo, lo0), max(hi, hi0))
        colours = probe_colours(system.atoms.positions[:, :2], system.atoms.cell.array[:2, :2],
                                probe_radius)
        n_col = int(colours.max()) + 1
        timings["colouring_s"] = time.perf_counter() - t1
        t2 = time.perf_counter()
        M = int(n_moments)
        mom = diagonal_moments(system.H, M, bounds, colours)
        mom0 = diagonal_moments(system.H_layers, M, bounds, colours)
        timings["moments_s"] = time.perf_counter() - t2
        mu, gap = neutrality_level(mom, bounds, n_occ)
        mu0, gap0 = neutrality_level(mom0, bounds, n_occ)
        occ = occupation_from_moments(mom, mu, bounds)
        occ0 = occupation_from_moments(mom0, mu0, bounds)
    timings["electronic_s"] = time.perf_counter() - t1
    # both spins; the average over the in-plane repetitions back onto the input sites
    nrep = system.reps[0] * system.reps[1]
    n = 2.0 * np.bincount(system.source, weights=occ, minlength=len(atoms)) / nrep
    n0 = 2.0 * np.bincount(system.source, weights=occ0, minlength=len(atoms)) / nrep
    timings["total_s"] = time.perf_counter() - t0
    return SiteCharges(dn=n - n0, n=n, n_ref=n0, mu=float(mu), mu_ref=float(mu0),
                       gap=tuple(map(float, gap)), gap_ref=tuple(map(float, gap0)),
                       method=method, n_moments=M,
                       probe_radius=probe_radius if method == "kpm" else None,
                       n_colours=n_col, reps=tuple(system.reps), n_tb_sites=system.n_sites,
                       bounds=tuple(map(float, bounds)), model=system.model.as_dict(),
                       reference="isolated layers" if reference is None else "structure",
                       timings=timings)


# ------------------------------------------------------------------ electrostatics
def layer_site_area(atoms) -> np.ndarray:
    """In-plane area per site of its own layer (Å²), per atom."""
    layers = layers_of(atoms)
    area = abs(np.linalg.det(atoms.cell.array[:2, :2]))
    counts = {k: int(np.count_nonzero(layers == k)) for k in np.unique(layers)}
    return np.array([area / counts[k] for k in layers])


def coarse_cutoff(a: float) -> float:
    """G_c = 2π/(√3 a) (1/Å): half the shortest reciprocal vector of the atomic lattice."""
    return 2.0 * math.pi / (math.sqrt(3.0) * a)


def surface_potential(atoms, dn: np.ndarray, height: float = 3.35, g_cut: float | None = None,
                      a: float | None = None, n_grid: int | None = None) -> dict:
    """Electrostatic potential (V) of the induced charges at ``height`` Å above the mean
    plane of the top layer, on a regular grid of the cell (module docstring).

    Returns ``{"V": (n, n) volts on fractional grid points (i + ½)/n, "X", "Y"
    (Cartesian Å), "P_z": C/m, "z_eval": Å, "g_cut": 1/Å, "n_G": Fourier
    components used}``."""
    if not np.isfinite(height):
        raise MoireALError(f"height must be finite, got {height}")
    dn = np.asarray(dn, float)
    if dn.shape != (len(atoms),):
        raise MoireALError(f"need one induced charge per atom ({len(atoms)}), got {dn.shape}")
    layers = layers_of(atoms)
    a = a or SlaterKoster().lattice_parameter(atoms)
    g_cut = coarse_cutoff(a) if g_cut is None else float(g_cut)
    pos = atoms.positions
    top = layers == layers.max()
    z_eval = float(pos[top, 2].mean() + height)
    cell2 = atoms.cell.array[:2, :2]
    area = abs(np.linalg.det(cell2))                   # Å²
    Q = -E_CHARGE * dn                                 # C
    zbar = float(pos[:, 2].mean())
    P_z = float((Q * (pos[:, 2] - zbar)).sum() / (area * ANGSTROM))  # C/m
    recip = 2.0 * math.pi * np.linalg.inv(cell2).T     # rows b1, b2 (1/Å)
    nmax = int(math.ceil(g_cut / min(np.linalg.norm(recip, axis=1)) * 2 / math.sqrt(3))) + 1
    n1, n2 = np.meshgrid(np.arange(-nmax, nmax + 1), np.arange(-nmax, nmax + 1), indexing="ij")
    n1, n2 = n1.ravel(), n2.ravel()
    G = n1[:, None] * recip[0] + n2[:, None] * recip[1]
    gnorm = np.linalg.norm(G, axis=1)
    keep = (gnorm > 1e-12) & (gnorm < g_cut)
    n1, n2, G, gnorm = n1[keep], n2[keep], G[keep], gnorm[keep]
    frac = np.linalg.solve(cell2.T, pos[:, :2].T).T
    dz = np.abs(z_eval - pos[:, 2])
    phiG = np.zeros(len(G), complex)
    for s in range(0, len(G), 512):
        sl = slice(s, s + 512)
        phase = np.exp(-2j * math.pi * (frac @ np.stack([n1[sl], n2[sl]])))  # (N, chunk)
        w = np.exp(-np.outer(dz, gnorm[sl]))                               # (N, chunk)
        phiG[sl] = (Q[:, None] * phase * w).sum(axis=0)
    # SI: σ_G / (2 ε0 |G|) with σ_G = Σ_i Q_i e^{−iG·r_i} e^{−|G||z − z_i|} / A
    phiG /= 2.0 * EPS0 * (area * ANGSTROM ** 2) * (gnorm / ANGSTROM)
    if n_grid is None:
        n_grid = int(max(96, 4 * nmax))
    f = (np.arange(n_grid) + 0.5) / n_grid
    V = np.zeros((n_grid, n_grid))
    if len(G):  # V(f) = Σ_G φ_G e^{2πi (n1 f1 + n2 f2)}
        E1 = np.exp(2j * math.pi * np.outer(f, n1))   # (n_grid, nG)
        E2 = np.exp(2j * math.pi * np.outer(f, n2))
        V = np.real((E1 * phiG) @ E2.T)
    V += P_z / (2.0 * EPS0)
    F1, F2 = np.meshgrid(f, f, indexing="ij")
    X = F1 * cell2[0, 0] + F2 * cell2[1, 0]
    Y = F1 * cell2[0, 1] + F2 * cell2[1, 1]
    return {"V": V, "X": X, "Y": Y, "P_z": P_z, "z_eval": z_eval, "g_cut": g_cut,
            "n_G": int(len(G)), "height": float(height)}


# ------------------------------------------------------------------ the analysis
def _range(x) -> list:
    return [float(np.min(x)), float(np.max(x))] if len(x) else [None, None]


def charge_summary(atoms, dn: np.ndarray) -> dict:
    """Δσ statistics (10¹² e/cm²): overall range, per layer (range per species, net
    transfer = layer's Δn / cell area), and the B/N ratios: ``bn_ratio`` = mean |Δσ|
    on B over that on N; ``bn_ratio_modulation`` = the same for the moiré modulation
    (Δσ minus its mean over the layer's sites of that species, rms)."""
    layers = layers_of(atoms)
    boron = np.array(atoms.get_chemical_symbols()) == "B"
    dsig = dn / layer_site_area(atoms) * PER_A2_TO_1E12_PER_CM2
    area = abs(np.linalg.det(atoms.cell.array[:2, :2]))
    per_layer, mod = {}, np.zeros_like(dsig)
    for k in np.unique(layers):
        m = layers == k
        entry = {"net_transfer_1e12_e_per_cm2": float(dn[m].sum() / area * PER_A2_TO_1E12_PER_CM2)}
        for name, sel in (("B", m & boron), ("N", m & ~boron)):
            entry[f"{name}_range"] = _range(dsig[sel])
            entry[f"{name}_mean"] = float(dsig[sel].mean()) if sel.any() else None
            if sel.any():
                mod[sel] = dsig[sel] - dsig[sel].mean()
        per_layer[str(int(k))] = entry

    def ratio(x, y):
        return float(x / y) if y > 0 else None

    return {
        "units": "1e12 e/cm2 (electrons; > 0 = gained)",
        "range": _range(dsig),
        "max_abs": float(np.abs(dsig).max()),
        "modulation_range": _range(mod),
        "per_layer": per_layer,
        "bn_ratio": ratio(np.abs(dsig[boron]).mean(), np.abs(dsig[~boron]).mean()),
        "bn_ratio_modulation": ratio(np.sqrt((mod[boron] ** 2).mean()),
                                     np.sqrt((mod[~boron] ** 2).mean())),
        "sum_dn": float(dn.sum()),
    }


def polarization_analysis(atoms, calc_name: str | None = None, model: SlaterKoster | None = None,
                          method: str = "kpm", n_moments: int = 128,
                          probe_radius: float | None = 20.0, min_width: float = 40.0,
                          height: float = 3.35, reference=None, plot_dir: str | None = None,
                          prefix: str = "polarization", n_grid: int | None = None,
                          sites_path: str | None = None) -> dict:
    """Induced charge, surface potential and P_max of an hBN bilayer (module docstring).

    ``calc_name``: what relaxed the structure (default ``info["relaxed_with"]``);
    options as :func:`induced_charges` and :func:`surface_potential`; ``plot_dir``: PNG
    maps (charge per layer, potential); ``sites_path``: extxyz with per-atom
    ``dn`` and ``dsigma`` arrays.

    Result keys: ``analysis``, ``calc_name``, ``material``, ``n_atoms``, ``theta_deg``,
    ``P_max_pC_per_m``, ``P_z_pC_per_m`` (mean dipole per area, signed, > 0 up),
    ``V_max_mV``, ``V_min_mV``, ``height_A``, ``charge`` (:func:`charge_summary`),
    ``electronic`` (neutrality levels, gaps, repetitions, probing vectors),
    ``settings`` (model parameters and method), ``timings``, ``wall_time``, ``plots``.
    """
    t0 = time.perf_counter()
    model = model or SlaterKoster()
    charges = induced_charges(atoms, model, method=method, n_moments=n_moments,
                              probe_radius=probe_radius, min_width=min_width, reference=reference)
    t1 = time.perf_counter()
    pot = surface_potential(atoms, charges.dn, height=height, a=model.lattice_parameter(atoms),
                            n_grid=n_grid)
    V = pot["V"]
    summary = charge_summary(atoms, charges.dn)
    el = charges.summary()
    result = {
        "analysis": "polarization",
        "calc_name": calc_name or atoms.info.get("relaxed_with"),
        "material": "hbn",
        "n_atoms": len(atoms),
        "theta_deg": atoms.info.get("theta_deg"),
        "P_max_pC_per_m": float(EPS0 * (V.max() - V.min()) * 1e12),
        "P_z_pC_per_m": float(pot["P_z"] * 1e12),
        "V_max_mV": float(V.max() * 1e3),
        "V_min_mV": float(V.min() * 1e3),
        "height_A": float(height),
        "charge": summary,
        "electronic": {k: el[k] for k in ("mu", "mu_ref", "gap", "gap_ref", "reps", "n_tb_sites",
                                          "n_colours", "bounds")},
        "settings": {"model": el["model"], "method": charges.method,
                     "n_moments": charges.n_moments, "probe_radius_A": charges.probe_radius,
                     "min_width_A": float(min_width), "reference": charges.reference,
                     "height_A": float(height), "g_cut_per_A": pot["g_cut"], "n_G": pot["n_G"],
                     "n_grid": int(V.shape[0])},
        "timings": {**charges.timings, "potential_s": time.perf_counter() - t1},
        "plots": {},
    }
    if sites_path:
        from moire_al.structures import write_structures

        os.makedirs(os.path.dirname(os.path.abspath(sites_path)), exist_ok=True)
        out = atoms.copy()
        out.calc = None
        out.arrays["dn"] = charges.dn
        out.arrays["dsigma"] = charges.dn / layer_site_area(atoms) * PER_A2_TO_1E12_PER_CM2
        write_structures(sites_path, [out])
        result["sites_path"] = sites_path
    if plot_dir:
        from moire_al.analysis import plots

        result["plots"] = plots.plot_polarization_maps(
            atoms, charges.dn / layer_site_area(atoms) * PER_A2_TO_1E12_PER_CM2, pot, plot_dir,
            prefix=prefix, title=_title(atoms, result["calc_name"]))
    result["wall_time"] = time.perf_counter() - t0
    return jsonable(result)


def _title(atoms, calc_name):
    th = atoms.info.get("theta_deg")
    parts = [f"θ = {th:.2f}°" if th else None, calc_name]
    return ", ".join(p for p in parts if p)


def polarization_sweep(material: str, calc, calc_name: str | None = None, ms=SWEEP_MS,
                       angles=None, fmax: float = 1e-3, steps: int = 1000, d: float = 3.4,
                       rigid: bool = True, plot_dir: str | None = None, **options) -> dict:
    """Seed 000 Fig. 4c: P_max(θ) of relaxed (with ``calc``) and rigid twisted hBN
    bilayers over r = 1 cells ``ms`` (or ``angles`` in degrees → nearest r = 1 cell),
    parallel stacking (AA at the rotation centre, which makes AB/BA domains), built at
    interlayer distance ``d``; ``options`` go to :func:`polarization_analysis`.

    Result keys: ``analysis`` (``"polarization_sweep"``), ``calc_name``, ``material``,
    ``points`` (per angle: theta_deg, n_atoms, relax steps/converged, d_mean of the
    relaxed top layer, and for ``relaxed`` / ``rigid``: P_max, P_z, charge range,
    max |Δσ|, B/N ratios, wall time), ``settings``, ``plots``."""
    from moire_al import structures
    from moire_al.analysis.moire import interlayer_distance
    from moire_al.analysis.relax import relax

    if str(material).lower() not in ("hbn", "bn", "h-bn"):
        raise MoireALError(f"polarization is an hBN analysis; got material {material!r}")
    name = calc_label(calc, calc_name)
    specs = [{"angle": x} for x in angles] if angles is not None else [{"m": int(m)} for m in ms]
    points = []
    settings = None

    def brief(res):
        c = res["charge"]
        return {"P_max_pC_per_m": res["P_max_pC_per_m"], "P_z_pC_per_m": res["P_z_pC_per_m"],
                "V_max_mV": res["V_max_mV"], "V_min_mV": res["V_min_mV"],
                "charge_range": c["range"], "charge_max_abs": c["max_abs"],
                "modulation_range": c["modulation_range"], "bn_ratio": c["bn_ratio"],
                "bn_ratio_modulation": c["bn_ratio_modulation"], "sum_dn": c["sum_dn"],
                "wall_time": res["wall_time"]}

    for spec in specs:
        atoms = structures.twisted_bilayer("hbn", d=d, stacking="AA", **spec)
        th = atoms.info["theta_deg"]
        sub = os.path.join(plot_dir, f"theta_{th:.3f}") if plot_dir else None
        relaxed, rr = relax(atoms, calc, fmax=fmax, steps=steps, calc_name=name)
        _, dz = interlayer_distance(relaxed)
        pr = polarization_analysis(relaxed, calc_name=name, plot_dir=sub, prefix="relaxed",
                                   **options)
        settings = pr["settings"]
        point = {"theta_deg": th, "n_atoms": len(atoms), "steps": rr["steps"],
                 "converged": rr["converged"], "relax_wall_time": rr["wall_time"],
                 "d_mean": float(dz.mean()), "d_min": float(dz.min()), "d_max": float(dz.max()),
                 "relaxed": brief(pr)}
        if rigid:
            pg = polarization_analysis(atoms, calc_name=f"rigid (d = {d} Å)", plot_dir=sub,
                                       prefix="rigid", **options)
            point["rigid"] = brief(pg)
        points.append(point)
    points.sort(key=lambda p: p["theta_deg"])
    result = {"analysis": "polarization_sweep", "calc_name": name, "material": "hbn",
              "rigid_d": float(d), "points": points, "settings": settings, "plots": {}}
    if plot_dir:
        from moire_al.analysis import plots

        result["plots"] = plots.plot_polarization_sweep({name: result}, plot_dir)
    return jsonable(result)
