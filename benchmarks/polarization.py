"""Benchmark: tight-binding polarization (seed 000) of a relaxed ~1° twisted hBN bilayer.

    .venv/bin/python benchmarks/polarization.py [--m 31] [--relaxed FILE]
        [--pybinding-sites 6] [--out benchmarks/out/polarization]

1. Relaxes the r = 1 cell ``--m`` (31: 1.05°, 11,908 atoms) with the reference potential
   (Tersoff + ILP; not DFT), or reads ``--relaxed``.
2. Runs the polarization analysis with the defaults (our Chebyshev KPM with probing,
   128 moments, 20 Å probing radius): wall time, peak memory, P_max. Goal: < 10 min on
   2 cores.
3. Baseline and accuracy in the same run, on a cell where both are affordable
   (``--m-small``, default 5: 6.01°, repeated to 1,456 sites): exact diagonalisation;
   pybinding-dev's KPM (the seed's library) on the same Hamiltonian, per-site LDOS of the
   stack and of the isolated layers for ``--pybinding-sites`` sites, integrated to the
   neutrality level. Its lattice build grows ~quadratically with the hoppings (20 s at
   1,456 sites), so it is not built for the big cell: its time per site is extrapolated
   (∝ N per site, N sites).

Ends with one JSON line of all figures.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time

import numpy as np


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--m", type=int, default=31)
    ap.add_argument("--m-small", type=int, default=5,
                    help="cell for exact diagonalisation and pybinding (5: 6.01°, 1,456 sites)")
    ap.add_argument("--relaxed", default=None, help="a relaxed structure (skips step 1)")
    ap.add_argument("--pybinding-sites", type=int, default=20)
    ap.add_argument("--out", default="benchmarks/out/polarization")
    args = ap.parse_args(argv)

    from moire_al import structures
    from moire_al.analysis.calculators import get_calculator
    from moire_al.analysis.polarization import (induced_charges, polarization_analysis,
                                                surface_potential, EPS0)
    from moire_al.analysis.relax import relax

    os.makedirs(args.out, exist_ok=True)
    fig = {}
    rigid = structures.twisted_bilayer("hbn", m=args.m, d=3.4)
    fig.update(theta_deg=rigid.info["theta_deg"], n_atoms=len(rigid))
    if args.relaxed:
        relaxed = structures.read_structures(args.relaxed)[0]
        fig["relax_s"] = None
    else:
        t0 = time.perf_counter()
        relaxed, rr = relax(rigid, get_calculator("reference", "hbn"), fmax=1e-3, steps=2000,
                            calc_name="reference:Tersoff+ILP")
        fig.update(relax_s=time.perf_counter() - t0, relax_steps=rr["steps"],
                   relax_converged=rr["converged"])
        structures.write_structures(os.path.join(args.out, "relaxed.xyz"), [relaxed])
    print(f"structure: {fig['theta_deg']:.3f}°, {len(relaxed)} atoms; relax {fig['relax_s']} s",
          flush=True)

    # ---- ours
    t0 = time.perf_counter()
    res = polarization_analysis(relaxed, calc_name="reference:Tersoff+ILP",
                                plot_dir=os.path.join(args.out, "relaxed"))
    fig.update(polarization_s=time.perf_counter() - t0, polarization_peak_rss_mb=rss_mb(),
               P_max_pC_per_m=res["P_max_pC_per_m"], charge_range=res["charge"]["range"],
               bn_ratio=res["charge"]["bn_ratio"],
               bn_ratio_modulation=res["charge"]["bn_ratio_modulation"],
               n_colours=res["electronic"]["n_colours"], timings=res["timings"],
               goal_s=600.0)
    fig["goal_met"] = fig["polarization_s"] < 600.0
    print(f"ours (KPM, probing): {fig['polarization_s']:.1f} s, P_max "
          f"{fig['P_max_pC_per_m']:.2f} pC/m, {fig['n_colours']} probing vectors", flush=True)
    t0 = time.perf_counter()
    rres = polarization_analysis(rigid, calc_name="rigid", plot_dir=os.path.join(args.out, "rigid"))
    fig.update(rigid_polarization_s=time.perf_counter() - t0,
               P_max_rigid_pC_per_m=rres["P_max_pC_per_m"],
               rigid_charge_range=rres["charge"]["range"], rigid_bn_ratio=rres["charge"]["bn_ratio"],
               convention=res["settings"]["model"]["convention"],
               aa_distance_c=res["settings"]["model"]["c"])
    print(f"relaxed: charge {fig['charge_range']} 1e12 e/cm2, B/N {fig['bn_ratio']:.2f}; rigid: "
          f"P_max {fig['P_max_rigid_pC_per_m']:.2f} pC/m, charge {fig['rigid_charge_range']}, "
          f"B/N {fig['rigid_bn_ratio']:.2f}", flush=True)

    # ---- baseline and accuracy on a smaller cell: pybinding's KPM per site, exact diagonalisation
    import pybinding as pb

    from moire_al.analysis.tightbinding import build_system, pybinding_model, spectral_bounds

    small = structures.twisted_bilayer("hbn", m=args.m_small, d=3.4)
    t0 = time.perf_counter()
    ex = induced_charges(small, method="exact")
    t_ex = time.perf_counter() - t0
    t0 = time.perf_counter()
    kp = induced_charges(small)
    t_kp = time.perf_counter() - t0
    pe = EPS0 * np.ptp(surface_potential(small, ex.dn)["V"]) * 1e12
    pk = EPS0 * np.ptp(surface_potential(small, kp.dn)["V"]) * 1e12
    system = build_system(small)
    t0 = time.perf_counter()
    models = [pybinding_model(system), pybinding_model(system, layers_only=True)]
    t_build = time.perf_counter() - t0
    bounds = spectral_bounds(system.H)
    # the resolution of our 128 moments: broadening π·(half-width)/128
    broadening = np.pi * (bounds[1] - bounds[0]) / 2 / 128
    sites = np.random.default_rng(0).choice(system.n_sites, size=args.pybinding_sites, replace=False)
    kpms = [pb.kpm(model, energy_range=bounds, silent=True) for model in models]
    t0 = time.perf_counter()
    pb_dn = []
    for k in sites:
        occ = []
        for kpm, mu in zip(kpms, (ex.mu, ex.mu_ref)):
            E = np.linspace(bounds[0] + 1e-3, mu, 2000)
            ld = kpm.calc_ldos(E, broadening, system.atoms.positions[k] / 10, sublattice=f"s{k}").data
            occ.append(2 * np.trapezoid(ld, E))
        pb_dn.append(occ[0] - occ[1])
    per_site = (time.perf_counter() - t0) / max(1, len(sites))
    n_big = res["electronic"]["n_tb_sites"]
    fig["small_cell"] = {
        "theta_deg": small.info["theta_deg"], "n_tb_sites": system.n_sites,
        "exact_s": t_ex, "ours_kpm_s": t_kp,
        "ours_max_abs_dn_error_rel": float(np.abs(kp.dn - ex.dn).max() / np.abs(ex.dn).max()),
        "P_max_exact": pe, "P_max_ours": pk, "P_max_rel_error": abs(pk - pe) / pe,
        "pybinding_build_s": t_build, "pybinding_s_per_site": per_site,
        "pybinding_all_sites_s": per_site * system.n_sites,
        "pybinding_max_abs_dn_error_rel": float(np.abs(np.array(pb_dn) - ex.dn[system.source[sites]]).max()
                                                / np.abs(ex.dn).max()),
        "pybinding_broadening_eV": broadening}
    # KPM per site costs ∝ N (one recursion on the whole matrix), N sites: ∝ N²
    fig["pybinding_big_cell_s_extrapolated"] = per_site * n_big * n_big / system.n_sites
    print(f"small cell ({system.n_sites} sites): exact {t_ex:.1f} s, ours {t_kp:.1f} s "
          f"(P_max {pe:.4f} vs {pk:.4f} pC/m); pybinding: build {t_build:.1f} s, "
          f"{per_site:.3f} s per site -> {per_site * system.n_sites:.0f} s for all; "
          f"extrapolated to {n_big} sites: {fig['pybinding_big_cell_s_extrapolated']:.0f} s",
          flush=True)
    print(json.dumps(fig, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
