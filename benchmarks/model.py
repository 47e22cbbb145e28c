"""Benchmark of moire_al.models on this machine, printed side by side in one run.

1. E+F evaluation of a 1,008-atom bilayer graphene: ACE posterior mean (the C++ kernel
   of moire_al.models.fast, and ace-jax's JAX evaluator), ACE + committee (our evaluator), D3(BJ),
   and the KC+REBO LAMMPS baseline;
   µs/atom (wall) and µs/atom/core (wall × cores used / atoms).
2. Fit time and peak memory (RSS of a fresh process) vs training-set size.
3. Committee scoring time for 1,000 candidates.

Usage: .venv/bin/python benchmarks/model.py [--quick] [--order 3 --totaldegree 10]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import sys
import time

import numpy as np


def _synthetic():
    """The tests' small structure builders (tests/synthetic.py)."""
    import importlib
    import sys
    from pathlib import Path

    tests = str(Path(__file__).resolve().parents[1] / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    return importlib.import_module("synthetic")


def _labelled(n_struct, seed, material="graphene"):
    from moire_al.labelling.reference import reference_calculator
    S = _synthetic()

    return S.label(S.random_set(material, n_struct, seed=seed, n=4, layers=(1, 2), rattle=(0.0, 0.08)),
                   reference_calculator(material), skip_failures=True)


def _fit_child(args, q):
    n_struct, params = args
    from moire_al.models import ACEModel

    data = _labelled(n_struct, seed=11)
    t = time.perf_counter()
    m = ACEModel(d3=False, **params).fit(data)
    dt = time.perf_counter() - t
    q.put((len(data), sum(len(a) for a in data), dt, m.fit_info_["time_rows_s"],
           resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, m.basis_.L))


def fit_in_fresh_process(n_struct, params):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_fit_child, args=((n_struct, params), q))
    p.start()
    res = q.get()
    p.join()
    return res


def timeit(fn, repeat=3):
    fn()                                   # compile / warm-up
    ts = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return min(ts)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="smaller fit sizes and 200 candidates")
    ap.add_argument("--order", type=int, default=3)
    ap.add_argument("--totaldegree", type=int, default=10)
    args = ap.parse_args(argv)
    params = {"order": args.order, "totaldegree": args.totaldegree, "committee_size": 32}
    cores = len(os.sched_getaffinity(0))

    from moire_al.labelling.reference import reference_calculator
    from moire_al.models import ACEModel
    S = _synthetic()
    from moire_al.models.d3 import d3_results

    print(f"# moire-al model benchmark: {cores} cores, basis order={args.order} "
          f"totaldegree={args.totaldegree}, committee K=32")
    t = time.perf_counter()
    train = _labelled(40 if args.quick else 60, seed=1)
    model = ACEModel(d3=True, **params).fit(train)
    print(f"warm-up fit (incl. JIT compile unless cached): {time.perf_counter() - t:.1f} s, "
          f"{model.basis_.L} basis functions")

    # 1. evaluation on a 1,008-atom bilayer
    big = S.stacked("graphene", 2, 14, m=18, shifts=[[0, 0], [1.42, 0]], d=3.4)
    big.rattle(0.01, seed=0)
    n = len(big)
    rows = []
    from moire_al.models.calculator import ACEModelCalculator

    for label, ev in (("C++ kernel", "kernel"), ("ace-jax JAX", "jax")):
        try:
            nat = ACEModelCalculator(model, committee=False, evaluator=ev)._native()
        except Exception as exc:  # pragma: no cover - no compiler for the kernel
            print(f"{label}: unavailable ({exc})")
            continue
        md = big.copy()
        md.calc = nat

        def ace_mean_md():                 # MD-like: same Atoms, small moves, neighbour list reused
            md.positions += np.random.default_rng().normal(0, 1e-3, md.positions.shape)
            md.get_forces()

        def ace_mean():
            x = big.copy()
            x.positions += np.random.default_rng().normal(0, 1e-4, x.positions.shape)
            x.calc = nat
            x.get_forces()
        # the kernel is single-threaded: one core; the JAX path uses all
        c = 1 if ev == "kernel" else cores
        rows.append((f"ACE mean, MD step ({label})", timeit(ace_mean_md, 5), c))
        rows.append((f"ACE mean, new nlist ({label})", timeit(ace_mean), c))
    rows.append(("ACE + 32 committee (one basis eval)",
                 timeit(lambda: model.predict_one(big, committee=True, stress=False, d3=False), 2), cores))
    rows.append(("D3(BJ) alone (dftd3)", timeit(lambda: d3_results(big), 2), 1))
    ref = reference_calculator("graphene")

    def lammps():
        x = big.copy()
        x.positions += np.random.default_rng().normal(0, 1e-4, x.positions.shape)
        x.calc = ref
        x.get_forces()
    try:
        rows.append(("KC+REBO LAMMPS (baseline)", timeit(lammps), 1))
    except Exception as exc:  # pragma: no cover
        print(f"LAMMPS baseline failed: {exc}")
    print(f"\n## E+F on a {n}-atom bilayer graphene")
    print(f"{'evaluator':<40} {'wall s':>8} {'µs/atom':>9} {'µs/atom/core':>13}")
    for name, dt, c in rows:
        print(f"{name:<40} {dt:>8.3f} {1e6 * dt / n:>9.1f} {1e6 * dt * c / n:>13.1f}")

    # 2. fit time / memory vs size (fresh processes; the JIT cache is warm)
    sizes = (10, 20, 40) if args.quick else (15, 30, 60, 120)
    print("\n## fit (fresh process, persistent JIT cache warm)")
    print(f"{'structures':>10} {'atoms':>7} {'fit s':>7} {'rows s':>7} {'peak MB':>8} {'basis':>6}")
    for ns in sizes:
        nstr, nat_, dt, trows, mb, L = fit_in_fresh_process(ns, params)
        print(f"{nstr:>10} {nat_:>7} {dt:>7.1f} {trows:>7.1f} {mb:>8.0f} {L:>6}")

    # 2b. cost drivers of a seed-sized fit (500 structures, 150k atoms, ~5k functions)
    from moire_al.models.basis import ACEBasis

    hb = ACEBasis([5, 7], args.order, args.totaldegree, 5.5)
    hx = S.stacked("hbn", 2, 5, d=3.3, shifts=[[0, 0], [0.7, 0.4]], rattle=0.05)
    t_rows = timeit(lambda: hb.structure_rows(hx), 2)
    Lbig = 5000
    Pw = np.random.default_rng(0).normal(size=(900, Lbig))
    t = time.perf_counter()
    _ = Pw.T @ Pw
    t_gemm = time.perf_counter() - t
    print(f"\n## seed-sized fit, extrapolated: hBN rows {1e3 * t_rows / len(hx):.2f} ms/atom at "
          f"{hb.L} functions; normal-equation update {1e3 * t_gemm / 300:.2f} ms/atom at L={Lbig}; "
          f"150k atoms ≈ {150e3 * t_rows / len(hx) * Lbig / hb.L / 60:.0f} min rows (linear in L, "
          f"a lower bound) + {150e3 * t_gemm / 300 / 60:.0f} min normal equations; "
          f"memory ≈ {3 * 8 * Lbig ** 2 / 1e9:.1f} GB for the L×L matrices")

    # 3. committee scoring of candidates
    ncand = 200 if args.quick else 1000
    cands = S.random_set("graphene", ncand, seed=99, n=4, layers=(1, 2), rattle=(0.0, 0.1))
    model.score(cands[:5])
    t = time.perf_counter()
    sc = model.score(cands)
    dt = time.perf_counter() - t
    print(f"\n## committee scoring: {ncand} candidates ({sum(len(a) for a in cands)} atoms) in {dt:.1f} s "
          f"({1e3 * dt / ncand:.1f} ms/structure, D3 not evaluated); max rel. force unc. range "
          f"{sc.min():.3f}-{sc.max():.3f}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
