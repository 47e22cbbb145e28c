"""Hyperactive vs random vs largest-σ_E selection on the committed CP2K labels (replayed).

The pool is a DFT reference set (``data/dft/graphene.extxyz`` by default; mono/bi/
trilayers), its labels replayed, so only the fits cost time. For each seed, every
strategy starts from the same random initial set, adds ``--batch`` structures per
round and refits; the force RMSE is measured on the same fixed held-out split
(``fixed_test_split``, as the loop uses for a pool from a file):

- hyperactive: largest max_i relative force uncertainty (the loop's criterion);
- sigma_E: largest committee energy std per atom;
- random.

Figure of merit: labels hyperactive needs to reach random's final RMSE (goal <= 1/2 of
random's), per seed and as the mean. Prints the curves side by side, writes a plot,
and ends with one JSON line of all figures.

    .venv/bin/python benchmarks/learning.py [--data data/dft/graphene.extxyz] [--seeds 0,1,2]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
STRATEGIES = ("hyperactive", "sigma_E", "random")


def scores(model, atoms_list):
    """(relative force uncertainty, energy std per atom) per structure, one committee pass each."""
    rel, se = [], []
    for at in atoms_list:
        p = model.predict_one(at, committee=True, stress=False, d3=False)
        rel.append(p["max_rel_force_unc"])
        se.append(p["energy_std"] / len(at))
    return np.asarray(rel), np.asarray(se)


_BASES = {}


def shared_basis(model, atoms):
    """One basis per spec for the whole run, its design rows kept per structure: every
    strategy and round refits on structures whose rows an earlier fit already computed,
    so the benchmark costs the fits' solves, not the same rows again (same numbers)."""
    model._build_basis(model._validated(atoms)[1])
    spec = json.dumps(model.basis_.spec(), sort_keys=True)
    if spec not in _BASES:
        basis, rows = model.basis_, {}
        compute = basis.structure_rows

        def structure_rows(at, name=""):
            key = at.info["hash"]
            if key not in rows:
                rows[key] = compute(at, name)
            return rows[key]

        basis.structure_rows = structure_rows
        _BASES[spec] = basis
    model.basis_ = _BASES[spec]
    return model


def run(strategy, data, initial, test, rounds, batch, seed, model_params):
    from moire_al.models import ACEModel
    from moire_al.workflows.loop import force_errors, select_most_uncertain

    rng = np.random.default_rng(seed + 1)
    chosen = list(initial)
    curve = []
    for r in range(rounds):
        train = [data[h] for h in chosen]
        model = shared_basis(ACEModel(seed=seed, **model_params), train).fit(train)
        rmse = force_errors(model, test)["F"]
        curve.append((len(chosen), rmse))
        print(f"  seed {seed} {strategy:11s} round {r}: {len(chosen):4d} labels, force RMSE {rmse:.4f} eV/Å",
              flush=True)
        rest = [h for h in data if h not in set(chosen)]
        if not rest or r == rounds - 1:
            break
        if strategy == "random":
            chosen += list(rng.choice(rest, size=min(batch, len(rest)), replace=False))
            continue
        rel, se = scores(model, [data[h] for h in rest])
        chosen += select_most_uncertain(rest, rel if strategy == "hyperactive" else se, batch)
    return curve


def labels_to_reach(curve, target):
    for n, rmse in curve:
        if rmse <= target * (1 + 1e-9):
            return n
    return None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="data/dft/graphene.extxyz")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--batch", type=int, default=10)
    ap.add_argument("--initial", type=int, default=10)
    ap.add_argument("--test-fraction", type=float, default=0.2)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--order", type=int, default=None, help="default: the model's")
    ap.add_argument("--totaldegree", type=int, default=None, help="default: the model's (docs/model.md)")
    ap.add_argument("-o", "--output", default="benchmarks/out/learning.png")
    args = ap.parse_args(argv)

    from moire_al.config import resolve_data_path
    from moire_al.labelling import get_labeller
    from moire_al.structures.pool import fixed_test_split, pool_from_file
    from moire_al.workflows.loop import split_initial

    path = resolve_data_path(args.data)
    t0 = time.perf_counter()
    labeller = get_labeller("dataset", {"path": path})
    pool = pool_from_file(path, layers=[1, 2, 3])
    labelled = {}
    for at in pool:
        rec = labeller.label(at, None)
        labelled[at.info["hash"]] = rec.apply_to(at)
    hashes = list(labelled)
    test_h = set(fixed_test_split(hashes, round(args.test_fraction * len(hashes))))
    test = [labelled[h] for h in hashes if h in test_h]
    data = {h: labelled[h] for h in hashes if h not in test_h}
    print(f"{labeller.description}: {len(pool)} structures ({len(data)} candidates, {len(test)} test), "
          f"read in {time.perf_counter() - t0:.1f} s")
    from moire_al.models.ace import default_order, default_totaldegree

    species = {int(z) for at in pool for z in at.numbers}
    order = args.order or default_order(species)
    degree = args.totaldegree or default_totaldegree(species, order)
    model_params = {"order": order, "totaldegree": degree, "d3": labeller.d3_included}
    seeds = [int(s) for s in args.seeds.split(",")]
    curves = {}
    for seed in seeds:
        initial, _ = split_initial(list(data), args.initial, 0, seed)
        for s in STRATEGIES:
            curves[(seed, s)] = run(s, data, initial, test, args.rounds, args.batch, seed, model_params)

    figures = {"data": args.data, "labels": labeller.description, "n_candidates": len(data),
               "n_test": len(test), "basis": [order, degree], "seeds": {}}
    print(f"\n{'seed':>4} {'labels':>7} " + " ".join(f"{s:>12}" for s in STRATEGIES))
    ratios = []
    for seed in seeds:
        rows = zip(*(curves[(seed, s)] for s in STRATEGIES))
        for row in rows:
            print(f"{seed:>4} {row[0][0]:>7d} " + " ".join(f"{r:>12.4f}" for _, r in row))
        final_random = curves[(seed, "random")][-1][1]
        n_random = curves[(seed, "random")][-1][0]
        need = {s: labels_to_reach(curves[(seed, s)], final_random) for s in ("hyperactive", "sigma_E")}
        ratio = need["hyperactive"] / n_random if need["hyperactive"] else None
        if ratio is not None:
            ratios.append(ratio)
        figures["seeds"][str(seed)] = {
            "curves": {s: curves[(seed, s)] for s in STRATEGIES}, "random_final_rmse": final_random,
            "random_final_labels": n_random, "labels_to_reach_random_final": need,
            "hyperactive_fraction_of_random": ratio}
    mean_ratio = float(np.mean(ratios)) if len(ratios) == len(seeds) else None
    figures["hyperactive_fraction_of_random_mean"] = mean_ratio
    figures["goal_fraction"] = 0.5
    print("\nhyperactive labels to reach random's final RMSE, as a fraction of random's labels: "
          + ", ".join(f"seed {s}: {figures['seeds'][str(s)]['hyperactive_fraction_of_random']}" for s in seeds)
          + f"; mean {mean_ratio} (goal <= 0.5)")

    from moire_al.workflows.report import _figure, save_png

    fig = _figure(5.5 * len(seeds), 4.0)
    for k, seed in enumerate(seeds):
        ax = fig.add_subplot(1, len(seeds), k + 1)
        for s in STRATEGIES:
            ax.plot(*zip(*curves[(seed, s)]), "o-", label=s)
        ax.set_xlabel("labelled structures")
        ax.set_ylabel("force RMSE, held-out split (eV/Å)")
        ax.set_yscale("log")
        ax.set_title(f"seed {seed}")
        ax.legend()
    fig.suptitle(f"{labeller.description}: selection strategies")
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_png(fig, out)
    print(f"plot: {out}")
    from moire_al.conventions import plain

    print(json.dumps(plain(figures, finite_only=True)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
