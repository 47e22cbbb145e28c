"""Benchmark: relaxation of 1.05° twisted bilayer graphene (11,908 atoms) with the
fitted ACE model and with the KC-full + REBO reference side by side.

    .venv/bin/python benchmarks/relax.py [--model MODEL_DIR | --train] [--m 31]
        [--fmax 1e-3] [--steps 1000] [--out benchmarks/out/relax]

``--train`` first fits the benchmark's own model (``<out>/model``, reused when present):
a graphene pool of 334 structures (rattled monolayers, locally twisted bilayers,
multilayers, binding curves with 80 random registries) labelled by the reference
potential, linear ACE of total degree 14 (397 functions), bilayers weighted 10x. It
stands in for a DFT-trained model: same pipeline, labels a potential can give in minutes.

Reports per calculator: wall time, optimiser steps, converged, final fmax, peak
memory (RSS of a fresh worker process), and the moiré analysis (d range, measured
vs formula period, AB/BA domain fraction, AA nodes). Each calculator runs in its
own process so the peak memory is its own. Goal: < 30 min per calculator on 2 cores.
Use ``--m 5`` for a quick smoke run (6.0°, 364 atoms).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import sys
import time


def _worker(spec, m, fmax, steps, out, queue):
    from moire_al import structures
    from moire_al.analysis.calculators import calculator_name, get_calculator
    from moire_al.analysis.moire import relax_and_analyse

    t0 = time.perf_counter()
    atoms = structures.twisted_bilayer("graphene", m=m)
    calc = get_calculator(spec, "graphene")
    name = calculator_name(spec, "graphene")
    _, res = relax_and_analyse(atoms, calc, name, fmax=fmax, steps=steps,
                               plot_dir=os.path.join(out, name.replace(":", "_")))
    queue.put({
        "calc": name, "n_atoms": len(atoms), "theta_deg": atoms.info["theta_deg"],
        "wall_time_s": time.perf_counter() - t0, "steps": res["relax"]["steps"],
        "converged": res["relax"]["converged"], "final_fmax": res["relax"]["final_fmax"],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "moire": {k: res["moire"][k] for k in ("d_min", "d_max", "period_measured",
                                               "period_formula", "domain_fraction",
                                               "stacking_fractions", "n_aa_nodes",
                                               "u_inplane_max", "u_z_max",
                                               "regime_by_angle", "regime_by_structure")},
    })


def train_model(path, degree: int = 14, seed: int = 1, bilayer_weight: float = 10.0):
    """Fit the benchmark model to a reference-labelled pool; save it at ``path``."""
    from moire_al import structures
    from moire_al.labelling import get_labeller
    from moire_al.models import ACEModel
    from moire_al.structures.pool import PoolRecipe

    t0 = time.perf_counter()
    recipe = PoolRecipe(n_rattled_per_size=12, max_rattle=0.1, n_local_angles=12, max_shifts_per_angle=8,
                        zero_angle_grid=4, n_trilayers=8, n_separation_random=80)
    pool = structures.make_pool("graphene", recipe, seed=seed)
    labeller = get_labeller("reference")
    data = []
    work = os.path.join(os.path.dirname(os.path.abspath(path)), "labels")
    for at in pool:
        rec = labeller.label(at, work)
        if hasattr(rec, "apply_to"):
            lab = rec.apply_to(at)
            if lab.info.get("n_layers") == 2:
                lab.info["fit_weight"] = bilayer_weight
            data.append(lab)
    model = ACEModel(d3=False, totaldegree=degree, committee_size=8).fit(data)
    model.save(path)
    info = model.fit_info_
    print(f"trained {path}: {len(data)} structures, {info['n_basis']} functions, "
          f"{time.perf_counter() - t0:.0f} s; bilayer train RMSE "
          f"{model.fit_report_['train']['2']['E_meV_per_atom']:.1f} meV/atom, "
          f"{model.fit_report_['train']['2']['F_eV_per_A']:.3f} eV/A", flush=True)
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="fitted ACE model directory")
    p.add_argument("--m", type=int, default=31, help="commensurate index (31: 1.05°)")
    p.add_argument("--fmax", type=float, default=1e-3)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--out", default="benchmarks/out/relax")
    p.add_argument("--train", action="store_true", help="fit (or reuse) the benchmark model <out>/model")
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    if args.train and not args.model:
        args.model = os.path.join(args.out, "model")
        if not os.path.exists(os.path.join(args.model, "model.json")):
            train_model(args.model)
    specs = ["reference"] + ([args.model] if args.model else [])
    rows = []
    for spec in specs:
        q = mp.get_context("spawn").Queue()
        proc = mp.get_context("spawn").Process(
            target=_worker, args=(spec, args.m, args.fmax, args.steps, args.out, q))
        proc.start()
        row = q.get()
        proc.join()
        rows.append(row)
        print(json.dumps(row), flush=True)
    with open(os.path.join(args.out, "relax_benchmark.json"), "w") as fh:
        json.dump(rows, fh, indent=1)
    print(f"{'calculator':28s} {'atoms':>6s} {'time/s':>8s} {'steps':>6s} {'conv':>5s} "
          f"{'RSS/MB':>7s} {'AB+BA':>6s}")
    for r in rows:
        print(f"{r['calc']:28s} {r['n_atoms']:6d} {r['wall_time_s']:8.1f} {r['steps']:6d} "
              f"{str(r['converged']):>5s} {r['peak_rss_mb']:7.0f} "
              f"{r['moire']['domain_fraction']:6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
