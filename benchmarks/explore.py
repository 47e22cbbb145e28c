"""Benchmark: uncertainty-biased vs unbiased MD exploration (hyperactive learning, issue 16).

    .venv/bin/python benchmarks/explore.py [--steps 200] [--tau 0.3] [--out benchmarks/out/explore]

A small ACE model (order 2, total degree 6, committee of 8) is fitted to labels of the
reference potential (REBO + KC-full in LAMMPS: the classical baseline, not DFT) of 16
rattled graphene bilayers. From the same 36-atom AB bilayer, at each temperature and
seed, Langevin MD runs unbiased (τ = 0: the baseline, same run) and biased
(V = E − τσ_E, τ relative to the mean force, ramped over 20 steps). Per MD step the
committee's max σ_F and σ_E are recorded (no trigger: the runs stop only on the MD
driver's stability checks). Figures: max σ_F and σ_E reached within 25/50/100/all
steps (mean over seeds), the steps to first reach σ_F ≥ 2 × its start, and the ratio
biased / unbiased. Ends with one JSON line of all figures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import scaffold  # benchmarks/scaffold.py: the tests' structures


def _model(out):
    from moire_al.labelling.reference import reference_calculator
    from moire_al.models import ACEModel
    S = scaffold.synthetic()

    path = os.path.join(out, "model")
    if os.path.exists(os.path.join(path, "model.json")):
        return ACEModel.load(path)
    data = S.label(S.random_set("graphene", 16, seed=3, n=3, layers=(2,), rattle=(0.0, 0.05)),
                   reference_calculator("graphene"))
    model = ACEModel(d3=False, order=2, totaldegree=6, committee_size=8).fit(data)
    model.save(path)
    return model


def _first_reaching(trace, level):
    for k, v in enumerate(trace):
        if v >= level:
            return k
    return None


def main(argv=None) -> int:
    import numpy as np

    from moire_al.analysis.explore import ExploreSettings, explore_one
    S = scaffold.synthetic()

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--tau", type=float, default=0.3)
    p.add_argument("--temperatures", default="300,600")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--out", default="benchmarks/out/explore")
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    model = _model(args.out)
    start = S.stacked("graphene", 2, 3, d=3.4, shifts=[[0, 0], [1.42, 0]])
    temps = [float(t) for t in args.temperatures.split(",")]
    print(f"# explore benchmark: 36-atom AB bilayer graphene, {args.steps} Langevin steps, 1 fs, "
          f"tau_rel {args.tau} vs 0, T {temps} K, {args.seeds} seeds; model order 2 / degree 6 / K=8 "
          "on reference-potential labels (not DFT)", flush=True)
    windows = (25, 50, 100, args.steps)
    figures = {"steps": args.steps, "tau_rel": args.tau, "seeds": args.seeds}
    print(f"{'T K':>5s} {'run':>9s} " + " ".join(f"{'sF<=' + str(w):>9s}" for w in windows)
          + f" {'sE max':>8s} {'n->2x':>6s} {'steps':>6s} {'ms/step':>8s}")
    for T in temps:
        for label, tau in (("unbiased", 0.0), ("biased", args.tau)):
            sf = {w: [] for w in windows}
            se, reach, done, ms = [], [], [], []
            for seed in range(args.seeds):
                s = ExploreSettings(steps=args.steps, tau_rel=tau, ramp_steps=20, tolerance=1e9, seed=seed)
                t0 = time.perf_counter()
                r = explore_one(model, start, T, s)
                ms.append(1000 * (time.perf_counter() - t0) / max(len(r.max_force_std_trace), 1))
                f = np.array(r.max_force_std_trace)
                for w in windows:
                    sf[w].append(float(f[:w].max()))
                se.append(float(max(r.energy_std_trace)))
                k = _first_reaching(f, 2 * f[0])
                reach.append(k if k is not None else np.nan)
                done.append(len(f))
            row = {f"sigma_f_max_{w}": float(np.mean(sf[w])) for w in windows}
            row.update(sigma_e_max=float(np.mean(se)), steps_to_2x_sigma_f=float(np.nanmean(reach))
                       if np.isfinite(reach).any() else None,
                       n_reaching_2x=int(np.isfinite(reach).sum()), steps_done_mean=float(np.mean(done)),
                       ms_per_step=float(np.median(ms)))
            for k, v in row.items():
                figures[f"{label}_{T:g}K_{k}"] = v
            n2 = "-" if row["steps_to_2x_sigma_f"] is None else f"{row['steps_to_2x_sigma_f']:.0f}"
            print(f"{T:5.0f} {label:>9s} " + " ".join(f"{row[f'sigma_f_max_{w}']:9.4f}" for w in windows)
                  + f" {row['sigma_e_max']:8.4f} {n2:>6s} {row['steps_done_mean']:6.0f} {row['ms_per_step']:8.1f}")
        for w in windows:
            figures[f"ratio_{T:g}K_sigma_f_max_{w}"] = (figures[f"biased_{T:g}K_sigma_f_max_{w}"]
                                                       / figures[f"unbiased_{T:g}K_sigma_f_max_{w}"])
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
