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
biased / unbiased.

Part 2 (``--part halve``): the labels each needs to halve the force error on an MD test
trajectory, biased vs unbiased at the same T and seeds, judged against the labeller
(``--labeller cp2k``, the default, for the real figure: DFT). The start model is fitted
on ``--n-start`` structures (<= 36 atoms) of data/dft/graphene.extxyz with their
replayed CP2K labels (with ``--labeller reference``: the same structures labelled by
the classical reference potential, not DFT). The test trajectory: ``--test-frames``
frames of a reference-potential Langevin run (a cheap way to thermal configurations) of
the 36-atom bilayer of that file, labelled by the labeller. Each mode then repeats:
explore from that bilayer with the current model (biased: τ_rel = ``--tau``; unbiased:
τ = 0; trigger ``--tolerance``, the run's last configuration if it never fires), label
the configuration, refit with the same hyperparameters, measure the test force RMSE,
until it is <= half the start model's or ``--max-labels`` are spent. Every computed
label goes into a resumable extxyz (``OUT/labels-LABELLER.extxyz``): a rerun computes
none again. ``--labeller dataset`` replays such a file (``--replay``, default the CP2K
cache) and computes nothing. CP2K calls: test frames + at most 2 × seeds × max-labels.

    .venv/bin/python benchmarks/explore.py --part halve --labeller reference        # classical, not DFT: minutes
    .venv/bin/python benchmarks/explore.py --part halve --dry-run                   # CP2K: count, compute nothing
    .venv/bin/python benchmarks/explore.py --part halve                             # CP2K: <= 26 calls, 36 atoms
    .venv/bin/python benchmarks/explore.py --part halve --halve-seeds 3 --labeller dataset \
        --replay data/dft/explore_md_graphene_cp2k.extxyz                           # the committed CP2K run, replayed

Ends with one JSON line of all figures.
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
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=("traces", "halve", "both"), default="both")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--tau", type=float, default=0.3)
    p.add_argument("--temperatures", default="300,600")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--out", default="benchmarks/out/explore")
    h = p.add_argument_group("part 2: labels to halve the test error")
    h.add_argument("--labeller", choices=("cp2k", "dataset", "reference"), default="cp2k")
    h.add_argument("--replay", default=None,
                   help="with --labeller dataset: the labelled file (default: the CP2K cache)")
    h.add_argument("--n-start", type=int, default=6, help="start-model structures from data/dft/graphene.extxyz")
    h.add_argument("--test-frames", type=int, default=6)
    h.add_argument("--test-every", type=int, default=100, help="MD steps between test frames (after as many)")
    h.add_argument("--halve-temperature", type=float, default=300.0)
    h.add_argument("--halve-seeds", type=int, default=1)
    h.add_argument("--threads", type=int, default=2, help="CP2K OpenMP threads (a run option: not in the label key)")
    h.add_argument("--halve-steps", type=int, default=300, help="max MD steps per exploration run")
    h.add_argument("--tolerance", type=float, default=0.3,
                   help="trigger: max relative force uncertainty (0.3; at 0.15 both modes fire within the ramp)")
    h.add_argument("--max-labels", type=int, default=10, help="per mode and seed")
    h.add_argument("--model", default="3:10:8", help="order:degree:committee of the fitted models ((2, 6) went "
                   "only from 0.244 to 0.16-0.17 eV/A in 10 reference labels: it cannot halve)")
    h.add_argument("--dry-run", action="store_true",
                   help="label the start set (replayed), make the test frames, count the labels a run would compute "
                        "at most; compute none")
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    figures = {}
    if args.part in ("traces", "both"):
        figures.update(traces(args))
    if args.part in ("halve", "both"):
        figures.update(halve(args))
    print(json.dumps(figures))
    return 0


def traces(args) -> dict:
    """Part 1: committee σ_F and σ_E reached per MD step, biased vs unbiased."""
    import numpy as np

    from moire_al.analysis.explore import ExploreSettings, explore_one
    S = scaffold.synthetic()

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
    return figures


DFT_FILE = "data/dft/graphene.extxyz"
#: the start set (and, last, the MD start) of the recorded figures, picked by _start_set's rule
#: from the file as it stood at 14:10 on 2026-12-01 (99 structures); kept fixed as the file grows
START_HASHES = ("464ec81a4213300adda8f458", "77e8fc2ae09785d81f0414d1", "fdb18ab470b2445094b3d928",
                "893d74084042a48c95b65f9b", "d985ca55f752170bb4966909", "ee949b8558e5cde1ce1d7d3d")


class _Labels:
    """The benchmark's labeller: a structure of the committed DFT set is replayed (cp2k,
    dataset), every other one comes from the cache or is computed and cached."""

    def __init__(self, args):
        from moire_al.labelling import get_labeller
        from moire_al.labelling.cache import LabelCache

        self.name = args.labeller
        self.replay_dft = get_labeller("dataset", {"path": DFT_FILE}) if self.name != "reference" else None
        if self.name == "dataset":
            path = args.replay or os.path.join(args.out, "labels-cp2k.extxyz")
            if not os.path.exists(path):
                raise SystemExit(f"--labeller dataset: {path} does not exist (run --labeller cp2k first, or --replay)")
            self.labeller = get_labeller("dataset", {"path": path})
            self.cache = None
        else:
            self.labeller = get_labeller(self.name, {"omp_threads": args.threads} if self.name == "cp2k" else {})
            self.cache = LabelCache(os.path.join(args.out, f"labels-{self.name}.extxyz"))
        self.workdir = os.path.join(args.out, f"runs-{self.name}")
        self.failures = 0

    @property
    def what(self) -> str:
        return {"cp2k": "CP2K PBE+D3(BJ) (DFT; cached)", "dataset": "replayed CP2K labels (DFT, computed earlier)",
                "reference": "the classical reference potential (REBO + KC-full; not DFT)"}[self.name]

    @property
    def n_computed(self) -> int:
        return self.cache.n_new if self.cache is not None else 0

    def __call__(self, atoms):
        """The labelled copy of ``atoms``, or None when its label failed."""
        from moire_al.conventions import structure_hash
        from moire_al.labelling.base import LabelFailure
        from moire_al.labelling.cache import as_stored

        if self.replay_dft is not None and structure_hash(atoms) in self.replay_dft.index:
            return self.replay_dft.label(atoms).apply_to(atoms)
        if self.cache is None:
            out = self.labeller.label(atoms)
            # as the cache returns it, so a replay goes on with the numbers the live run had
            out = out if isinstance(out, LabelFailure) else as_stored(out.apply_to(atoms))
        else:
            out = self.cache.label(self.labeller, atoms, self.workdir)
        if isinstance(out, LabelFailure):
            self.failures += 1
            print(f"#   label failed: {out.error_type}: {out.message}", flush=True)
            return None
        return out


def _start_set(n_start, pinned=START_HASHES):
    """(start structures, the 36-atom MD start): ``pinned`` when the file holds them all and
    ``n_start`` is their number; else <= 36-atom structures of the DFT file in the fixed
    sha256 order, with the first 36-atom bilayer among them (the MD start)."""
    from moire_al.conventions import structure_hash
    from moire_al.structures import read_structures
    from moire_al.structures.pool import fixed_test_split

    images = [a for a in read_structures(DFT_FILE) if len(a) <= 36]
    by_hash = {structure_hash(a): a for a in images}
    if pinned and len(pinned) == n_start and all(h in by_hash for h in pinned):
        start, md_start = [by_hash[h] for h in pinned], by_hash[pinned[-1]]
    else:
        order = [by_hash[h] for h in fixed_test_split(list(by_hash), len(by_hash))]
        md_start = next(a for a in order if len(a) == 36 and int(a.info.get("n_layers", 0)) == 2)
        start = order[:n_start]
        if all(structure_hash(a) != structure_hash(md_start) for a in start):
            start = start[:-1] + [md_start]
    clean = []
    for a in start:
        a = a.copy()
        for k in [k for k in a.info if k.startswith("REF_")]:
            del a.info[k]
        a.arrays.pop("REF_forces", None)
        clean.append(a)
    return clean, clean[[structure_hash(a) for a in clean].index(structure_hash(md_start))]


def _test_frames(md_start, args):
    from ase import Atoms

    from moire_al.analysis.md import MDSettings, run_md
    from moire_al.labelling.reference import reference_calculator

    run = run_md(md_start, reference_calculator("graphene"),
                 MDSettings(temperature_K=args.halve_temperature, steps=args.test_every * (args.test_frames + 1),
                            sample_every=args.test_every, seed=12345, fix_com=True), calc_name="reference potential")
    frames = []
    for x in run.positions[2:2 + args.test_frames]:      # skip the start and the first interval (equilibration)
        a = Atoms(numbers=md_start.numbers, positions=x, cell=md_start.cell, pbc=md_start.pbc)
        if "layer" in md_start.arrays:
            a.arrays["layer"] = md_start.arrays["layer"].copy()
        a.wrap()
        a.info.update(generator="md_test_frame", material="graphene", n_layers=2)
        frames.append(a)
    return frames


def halve(args) -> dict:
    """Part 2: labels to halve the MD-test force error, biased vs unbiased."""
    import numpy as np

    from moire_al.analysis.explore import ExploreSettings, explore_one
    from moire_al.conventions import REF_D3
    from moire_al.models import ACEModel
    from moire_al.models.metrics import rmse_table

    order, degree, K = (int(x) for x in args.model.split(":"))
    labels = _Labels(args)
    start, md_start = _start_set(args.n_start)
    train0 = [x for x in (labels(a) for a in start) if x is not None]
    frames = _test_frames(md_start, args)
    if args.dry_run:
        from moire_al.labelling.base import key_of

        todo = 0 if labels.cache is None else sum(key_of(labels.labeller, a) not in labels.cache for a in frames)
        most = todo + (0 if labels.cache is None else 2 * args.halve_seeds * args.max_labels)
        print(f"# dry run: {len(train0)} start structures labelled ({labels.what}); {todo} of {len(frames)} test "
              f"frames to compute, at most {most} labels to compute in all "
              f"(cache {labels.cache.path if labels.cache is not None else '-'}, "
              f"{len(labels.cache.images) if labels.cache is not None else 0} labels in it)", flush=True)
        return {"halve_dry_run": True, "halve_labeller": args.labeller, "halve_test_frames_to_compute": todo,
                "halve_max_labels_to_compute": most, "halve_n_start": len(train0)}
    test = [x for x in (labels(a) for a in frames) if x is not None]
    d3 = all(bool(a.info.get(REF_D3, False)) for a in train0)
    params = dict(order=order, totaldegree=degree, committee_size=K, d3=d3, seed=0)

    def fit(train):
        return ACEModel(**params).fit(train)

    def err(model):
        return float(rmse_table(model, test)["all"]["F_eV_per_A"])

    model0 = fit(train0)
    e0 = err(model0)
    # what this basis can reach at all on the test frames: fitted on them too (a lower bound, no label spent)
    floor = err(fit(train0 + test))
    print(f"# part 2: labels to halve the force RMSE on {len(test)} MD test frames (reference-potential MD at "
          f"{args.halve_temperature:g} K of the 36-atom bilayer), labels: {labels.what}; start model "
          f"({order}, {degree}, K={K}, D3 {'on' if d3 else 'off'}) on {len(train0)} structures of {DFT_FILE}: "
          f"test F RMSE {e0:.4f} eV/A (fitted on the test frames too: {floor:.4f}, the basis' floor); "
          f"tau_rel {args.tau} vs 0, tolerance {args.tolerance}, <= {args.halve_steps} steps per run, "
          f"<= {args.max_labels} labels", flush=True)
    figures = {"halve_labeller": args.labeller, "halve_labels": labels.what, "halve_T_K": args.halve_temperature,
               "halve_n_test": len(test), "halve_n_start": len(train0), "halve_start_F_rmse": e0,
               "halve_floor_F_rmse": floor, "halve_model": args.model,
               "halve_max_labels": args.max_labels, "halve_seeds": args.halve_seeds}
    print(f"{'run':>9s} {'seed':>4s} {'labels':>6s} {'found':>5s} {'F RMSE after each label (eV/A)'}")
    for mode, tau in (("unbiased", 0.0), ("biased", args.tau)):
        needed, curves, found = [], [], []
        for seed in range(args.halve_seeds):
            train, model, curve, k_half, n_found = list(train0), model0, [e0], None, 0
            for k in range(args.max_labels):
                s = ExploreSettings(steps=args.halve_steps, tau_rel=tau, ramp_steps=20, tolerance=args.tolerance,
                                    seed=1000 * seed + k)
                r = explore_one(model, md_start, args.halve_temperature, s)
                n_found += bool(r.triggered)
                lab = labels(r.structure if r.triggered else r.final)
                if lab is not None:
                    train.append(lab)
                    model = fit(train)
                curve.append(err(model))
                if curve[-1] <= 0.5 * e0:
                    k_half = k + 1
                    break
            needed.append(k_half)
            curves.append(curve)
            found.append(n_found)
            print(f"{mode:>9s} {seed:4d} {('>' + str(args.max_labels)) if k_half is None else str(k_half):>6s} "
                  f"{n_found:5d} " + " ".join(f"{c:.4f}" for c in curve), flush=True)
        figures[f"halve_{mode}_labels_needed"] = needed
        figures[f"halve_{mode}_curves"] = curves
        figures[f"halve_{mode}_triggered"] = found
        figures[f"halve_{mode}_best_ratio"] = float(np.mean([min(c) / e0 for c in curves]))
    figures["halve_labels_computed"] = labels.n_computed
    figures["halve_label_failures"] = labels.failures
    print(f"# labels computed in this run: {labels.n_computed} ({labels.what}); failures {labels.failures}", flush=True)
    return figures


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
