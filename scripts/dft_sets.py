#!/usr/bin/env python
"""Build, label and describe the committed CP2K reference sets (``data/dft/``).

    python scripts/dft_sets.py pool graphene            # data/dft/graphene_pool.extxyz
    python scripts/dft_sets.py import-shared            # reuse ../shared/dft labels (keys migrated)
    python scripts/dft_sets.py label graphene [--threads 1]   # moire-al label ... --labeller cp2k (resumes)
    python scripts/dft_sets.py recipe graphene          # data/dft/graphene.recipe.json
    python scripts/dft_sets.py binding-pool             # data/dft/hbn_binding_pool.extxyz
    python scripts/dft_sets.py binding-label [--threads 1]   # -> data/dft/hbn_binding.extxyz
    python scripts/dft_sets.py binding-fit              # fitted AA / AB / AA' minima (JSON)

The pools come from ``data/dft/recipes.json`` (one ``make_pool`` call per entry, cells
above ``max_atoms`` left out), interleaved family by family so that a set that is only
partly labelled still covers every family. Labelling is ``moire-al label`` with the
project's default CP2K settings; run options (threads, ranks) are not part of a label's
key, so any parallel setup continues the same file.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
from collections import Counter, defaultdict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "data", "dft")
SHARED = os.path.join(os.path.dirname(ROOT), "shared", "dft", "graphene_small_cp2k.extxyz")
RUNS = os.environ.get("MOIRE_AL_DFT_RUNS", os.path.join(os.path.dirname(ROOT), "dft-runs"))
#: the pool families that are held out of training as the out-of-distribution split
OOD_LAYERS = (4, 5)


def _paths(material):
    return {k: os.path.join(DATA, f"{material}{s}") for k, s in
            (("pool", "_pool.extxyz"), ("set", ".extxyz"), ("recipe", ".recipe.json"),
             ("failures", ".extxyz.failures.json"))}


def _recipes():
    with open(os.path.join(DATA, "recipes.json")) as fh:
        return json.load(fh)


def build_pool(material):
    from moire_al.structures.pool import PoolRecipe, make_pool

    by_family = defaultdict(list)
    for entry in _recipes()[material]:
        pool = make_pool(material, PoolRecipe.from_dict(entry["recipe"]), entry["seed"])
        for at in pool:
            if len(at) <= entry["max_atoms"]:
                by_family[(entry["seed"], at.info["pool_family"])].append(at)
    # round robin over families within a seed, seeds in order
    out = []
    for seed in sorted({s for s, _ in by_family}):
        lists = [v for (s, _), v in sorted(by_family.items()) if s == seed]
        for i in range(max(len(v) for v in lists)):
            out.extend(v[i] for v in lists if i < len(v))
    return out


def cmd_pool(args):
    import ase.io

    pool = build_pool(args.material)
    path = _paths(args.material)["pool"]
    ase.io.write(path, pool, format="extxyz")
    print(f"{len(pool)} structures -> {path}: {dict(Counter(a.info['pool_family'] for a in pool))}")


def cmd_import_shared(args):
    """Take the shared starting set: check each label was made with today's physics settings
    (its key under the former definition, which hashed CP2K's run options too), give it the
    current key, and keep only structures that are in our pool."""
    import ase.io

    from moire_al import conventions as conv
    from moire_al.labelling import get_labeller

    lab = get_labeller("cp2k")
    legacy = dict(lab.settings) | {"max_corrections": 3, "omp_threads": 2, "ranks": 1}
    pool = {conv.structure_hash(a) for a in build_pool("graphene")}
    images = ase.io.read(args.source, ":", format="extxyz")
    kept, skipped = [], Counter()
    for at in images:
        old = at.info.get("label_key")
        if old != conv.label_key(at, "cp2k", legacy):
            skipped["settings differ"] += 1
            continue
        if conv.structure_hash(at) not in pool:
            skipped["not in the pool"] += 1
            continue
        at.info["label_key"] = conv.label_key(at, lab.name, lab.settings)
        at.info["label_source"] = "shared/dft/graphene_small_cp2k.extxyz"
        at.info["label_key_v1"] = old
        kept.append(at)
    out = _paths("graphene")["set"]
    if os.path.exists(out) and os.path.getsize(out) > 0:
        have = {a.info["label_key"] for a in ase.io.read(out, ":", format="extxyz")}
        kept = [a for a in kept if a.info["label_key"] not in have] + ase.io.read(out, ":", format="extxyz")
    ase.io.write(out, kept, format="extxyz")
    print(f"imported {len(kept)} labels into {out}; skipped {dict(skipped) or 0}")


def cmd_label(args):
    p = _paths(args.material)
    settings = os.path.join(RUNS, f"run_options_{args.threads}.json")
    os.makedirs(RUNS, exist_ok=True)
    with open(settings, "w") as fh:
        json.dump({"omp_threads": args.threads, "ranks": 1}, fh)
    cmd = [os.path.join(ROOT, ".venv", "bin", "moire-al"), "label", p["pool"], "-o", p["set"],
           "--labeller", "cp2k", "--settings", settings, "--workdir", os.path.join(RUNS, args.material)]
    print(" ".join(cmd), flush=True)
    return subprocess.call(cmd)


def cmd_recipe(args):
    import ase.io

    from moire_al.labelling import get_labeller
    from moire_al.labelling.cp2k import cp2k_version

    p = _paths(args.material)
    lab = get_labeller("cp2k")
    labelled = ase.io.read(p["set"], ":", format="extxyz") if os.path.exists(p["set"]) else []
    pool = ase.io.read(p["pool"], ":", format="extxyz")
    failures = json.load(open(p["failures"])) if os.path.exists(p["failures"]) else []
    walls = [{"hash": a.info["hash"], "n_atoms": len(a), "family": a.info["pool_family"],
              "wall_s": a.info.get("label_wall_s"), "source": a.info.get("label_source", "labelled here")}
             for a in labelled]
    versions = {}
    for mod in ("moire_al", "ase", "pymatgen", "custodian", "numpy"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - a version we cannot read is recorded as such
            versions[mod] = "unknown"
    try:
        versions["cp2k"] = cp2k_version("cp2k.psmp")
    except Exception:  # noqa: BLE001
        versions["cp2k"] = "unknown"
    git = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    doc = {
        "material": args.material,
        "written": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "pools": _recipes()[args.material],
        "pool_file": os.path.relpath(p["pool"], ROOT),
        "n_pool": len(pool),
        "n_labelled": len(labelled),
        "counts": {"by_family": dict(Counter(a.info["pool_family"] for a in labelled)),
                   "by_n_layers": dict(Counter(int(a.info["n_layers"]) for a in labelled))},
        "ood_split": {"n_layers": list(OOD_LAYERS),
                      "n": sum(int(a.info["n_layers"]) in OOD_LAYERS for a in labelled)},
        "labeller": {"name": lab.name, "settings": lab.settings,
                     "run_options": "not part of the label; see label_wall_s per structure"},
        "versions": versions | {"moire_al_commit": git.stdout.strip()},
        "failures": failures,
        "failures_note": ("none" if not failures else
                          "listed failures are retried by every 'label' run; none is dropped silently"),
        "wall_time_per_structure": walls,
        "reuse": ("69 labels of ../shared/dft/graphene_small_cp2k.extxyz (same CP2K settings, checked "
                  "by their former key; keys migrated, 'label_key_v1' keeps the old one)"
                  if args.material == "graphene" else "none"),
    }
    with open(p["recipe"], "w") as fh:
        json.dump(doc, fh, indent=1, default=str)
    print(f"{p['recipe']}: {len(labelled)} of {len(pool)} labelled, {len(failures)} failures")


# Binding curves of flat bilayer hBN (4-atom cells, a = 2.504 Å): the AA minimum is c of
# the tight-binding model (moire_al.analysis.tightbinding.DEFAULT_C). Every cell (and the
# monolayer, the E_b reference) has the same height BINDING_CELL_Z with the bottom layer
# at the same z: CP2K's real-space grid is then the same in all of them. With the height
# d + 20 Å of stacking_bilayer the grid changes with d and moves E by up to 0.8 meV/atom
# (measured, AA at 3.4 Å: 23.4 vs 24.0 Å cell), as much as the curve changes over 0.1 Å.
# AA (c): 3.0–4.0 Å every 0.1 Å, every 0.025 Å over 3.4–3.8 Å, tails 5 and 8 Å; AB and
# AA' (context): 3.0–4.0 Å every 0.1 Å, 0.05 Å midpoints over 3.15–3.45 Å, 8 Å.
BINDING_CELL_Z = 26.0
#: CP2K's finest real-space grid along z in these cells (280 Ry: 264 points, cp2k.out
#: "PW_GRID| Bounds 3"): the egg-box period of the fit (binding.fit_minimum)
BINDING_GRID_DZ = BINDING_CELL_Z / 264
BINDING_GRID = {
    "AA": sorted({round(3.0 + 0.1 * i, 3) for i in range(11)}
                 | {round(3.4 + 0.025 * i, 3) for i in range(17)} | {5.0, 8.0}),
    "AB": sorted({round(3.0 + 0.1 * i, 3) for i in range(11)} | {3.15, 3.25, 3.35, 3.45, 8.0}),
}
BINDING_GRID["AA'"] = BINDING_GRID["AB"]


def binding_pool():
    from moire_al.analysis.binding import _monolayer, stacking_bilayer

    def fixed_height(at):
        cell = at.cell.array.copy()
        cell[2, 2] = BINDING_CELL_Z
        at.set_cell(cell)
        at.info |= {"curve": "hbn_binding", "a": 2.504, "grid_dz": BINDING_GRID_DZ}
        return at

    mono = fixed_height(_monolayer("hbn", 2.504))
    mono.info["stacking"] = "monolayer"
    out = [mono]
    for stk, grid in BINDING_GRID.items():
        for d in grid:
            at = fixed_height(stacking_bilayer("hbn", stk, d))
            at.info["d"] = d
            out.append(at)
    return out


def cmd_binding_pool(args):
    import ase.io

    pool = binding_pool()
    path = os.path.join(DATA, "hbn_binding_pool.extxyz")
    ase.io.write(path, pool, format="extxyz")
    print(f"{len(pool)} structures -> {path}")


def cmd_binding_label(args):
    settings = os.path.join(RUNS, f"run_options_{args.threads}.json")
    os.makedirs(RUNS, exist_ok=True)
    with open(settings, "w") as fh:
        json.dump({"omp_threads": args.threads, "ranks": 1}, fh)
    cmd = [os.path.join(ROOT, ".venv", "bin", "moire-al"), "label",
           os.path.join(DATA, "hbn_binding_pool.extxyz"), "-o", os.path.join(DATA, "hbn_binding.extxyz"),
           "--labeller", "cp2k", "--settings", settings, "--workdir", os.path.join(RUNS, "hbn_binding")]
    print(" ".join(cmd), flush=True)
    return subprocess.call(cmd)


def cmd_binding_fit(args):
    from moire_al.analysis.binding import labelled_binding_curves
    from moire_al.structures import read_structures

    res = labelled_binding_curves(read_structures(args.path), window=args.window)
    print(json.dumps({"equilibrium": res["equilibrium"],
                      "stacking_energy_meV": res["stacking_energy_meV"]}, indent=1))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("pool", "label", "recipe"):
        s = sub.add_parser(name)
        s.add_argument("material", choices=["graphene", "hbn"])
        if name == "label":
            s.add_argument("--threads", type=int, default=2)
    sub.add_parser("binding-pool")
    s = sub.add_parser("binding-label")
    s.add_argument("--threads", type=int, default=1)
    s = sub.add_parser("binding-fit")
    s.add_argument("--path", default=os.path.join(DATA, "hbn_binding.extxyz"))
    s.add_argument("--window", type=float, default=0.3)
    s = sub.add_parser("import-shared")
    s.add_argument("--source", default=SHARED)
    args = ap.parse_args(argv)
    return {"pool": cmd_pool, "label": cmd_label, "recipe": cmd_recipe,
            "import-shared": cmd_import_shared, "binding-pool": cmd_binding_pool,
            "binding-label": cmd_binding_label, "binding-fit": cmd_binding_fit}[args.cmd](args) or 0


if __name__ == "__main__":
    sys.exit(main())
