"""Benchmark: MD speed (ns/day, 1 fs) of a 1,008-atom bilayer graphene on one core.

    .venv/bin/python benchmarks/md.py [--steps 300] [--model MODEL_DIR] [--out benchmarks/out/md]

Side by side, in the same run, each in its own process pinned to one core:

1. the default ACE model (order 3, total degree 10) through ``moire_al.analysis.md.run_md``
   (ASE's Langevin, the stability checks, traces): the goal is >= 2 ns/day;
2. KC-full + REBO (the reference potential) driven the same way;
3. LAMMPS' own ``run`` (fix nve + fix langevin, same cell, T, damping) with KC-full + REBO;
4. for 1 and 2, the calculator's energy+force call alone on the same moving cell, so
   the driver's share is visible.

The model: without ``--model``, the benchmark fits (once; reused from
``<out>/model``) the default basis on reference-potential labels of the training set
of ``benchmarks/relax.py`` (pool + binding curves + rippled layers + relaxed twisted
bilayers), so its MD stays on the potential energy surface it learned.
Ends with one JSON line of all figures.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time

import scaffold  # benchmarks/scaffold.py: the tests' structures

T_K = 300.0


def bilayer():
    S = scaffold.synthetic()

    return S.stacked("graphene", 2, 14, m=18, shifts=[[0, 0], [1.42, 0]], d=3.4)   # 1,008 atoms, AB


def _pin():
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[-1]})


def _driver(spec, steps, queue):
    _pin()
    import numpy as np
    from ase import units

    from moire_al.analysis.calculators import calculator_name, get_calculator
    from moire_al.analysis.md import run_md

    atoms = bilayer()
    calc = get_calculator(spec, "graphene")
    name = calculator_name(spec, "graphene")
    warm = run_md(atoms, calc, temperature_K=T_K, steps=20, sample_every=0)        # compile, lists
    run = run_md(warm.final, calc, temperature_K=T_K, steps=steps, sample_every=0, seed=1,
                 velocities=warm.final.get_velocities() * units.fs)     # Å/fs
    # the calculator alone on the same moving cell
    a = warm.final.copy()
    a.calc = calc
    a.get_forces()
    rng = np.random.default_rng(0)
    n_calls = max(20, steps // 5)
    t = time.perf_counter()
    for _ in range(n_calls):
        a.positions += rng.normal(0, 2e-3, a.positions.shape)
        a.get_forces()
    ef = (time.perf_counter() - t) / n_calls
    queue.put({"calc": name, "n_atoms": len(atoms), "steps": run.steps_done, "stable": run.verdict.stable,
               "wall_s": run.wall_time, "ms_per_step": 1e3 * run.wall_time / max(run.steps_done, 1),
               "ns_per_day": run.ns_per_day(), "ef_ms_per_call": 1e3 * ef,
               "T_mean": float(run.temperature_K.mean()), "evaluator": getattr(calc, "evaluator", None)})


def _lammps_native(steps, queue):
    _pin()
    from moire_al.labelling.reference import reference_calculator

    atoms = bilayer()
    calc = reference_calculator("graphene")
    atoms.calc = calc
    atoms.get_forces()                       # the same LAMMPS setup the calculator makes
    lmp = calc._lmp
    lmp.commands_list([f"velocity all create {T_K} 1 dist gaussian mom yes", "timestep 0.001",
                       "fix nve all nve", f"fix lgv all langevin {T_K} {T_K} 0.1 48279 zero yes",
                       "thermo 100", "run 20"])
    t = time.perf_counter()
    lmp.command(f"run {steps}")
    wall = time.perf_counter() - t
    queue.put({"calc": "LAMMPS run (fix nve + langevin), KC-full + REBO", "n_atoms": len(atoms),
               "steps": steps, "wall_s": wall, "ms_per_step": 1e3 * wall / steps,
               "ns_per_day": steps * 1e-6 / wall * 86400})


def default_model(out: str) -> str:
    path = os.path.join(out, "model")
    if not os.path.exists(os.path.join(path, "model.json")):
        spec = importlib.util.spec_from_file_location("relax_bench", os.path.join(os.path.dirname(__file__),
                                                                                  "relax.py"))
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        mod.train_model(path, degree=10)     # the default basis: order 3, total degree 10
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--model", default=None, help="ACE model directory (default: fit the default basis once)")
    p.add_argument("--out", default="benchmarks/out/md")
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    model = args.model or default_model(args.out)
    print(f"# MD benchmark: 1,008-atom AB bilayer graphene, {T_K:g} K Langevin, 1 fs, {args.steps} steps, "
          f"one core each; model {model}", flush=True)
    rows = [scaffold.in_child(_driver, model, args.steps), scaffold.in_child(_driver, "reference", args.steps),
            scaffold.in_child(_lammps_native, args.steps)]
    print(f"{'how':52s} {'ms/step':>8s} {'ns/day':>7s} {'E+F ms':>7s}")
    for r in rows:
        label = r["calc"] + (" (moire-al MD driver)" if "ef_ms_per_call" in r else "")
        ef = f"{r['ef_ms_per_call']:7.1f}" if "ef_ms_per_call" in r else "      -"
        print(f"{label:52s} {r['ms_per_step']:8.1f} {r['ns_per_day']:7.2f} {ef}")
    ace, ref, nat = rows
    figures = {"n_atoms": ace["n_atoms"], "steps": args.steps,
               "ace_ns_per_day": ace["ns_per_day"], "ace_ms_per_step": ace["ms_per_step"],
               "ace_ef_ms": ace["ef_ms_per_call"], "ace_evaluator": ace["evaluator"], "ace_stable": ace["stable"],
               "ref_driver_ns_per_day": ref["ns_per_day"], "ref_driver_ms_per_step": ref["ms_per_step"],
               "ref_ef_ms": ref["ef_ms_per_call"], "lammps_run_ns_per_day": nat["ns_per_day"],
               "lammps_run_ms_per_step": nat["ms_per_step"], "goal_ns_per_day": 2.0,
               "goal_met": bool(ace["ns_per_day"] >= 2.0)}
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
