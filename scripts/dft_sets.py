#!/usr/bin/env python
"""Build, label and describe the committed CP2K reference sets (``data/dft/``).

    python scripts/dft_sets.py pool graphene            # data/dft/graphene_pool.extxyz
    python scripts/dft_sets.py import-shared            # reuse ../shared/dft labels (keys migrated)
    python scripts/dft_sets.py label graphene [--threads 1]   # moire-al label ... --labeller cp2k (resumes)
    python scripts/dft_sets.py recipe graphene          # data/dft/graphene.recipe.json

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


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("pool", "label", "recipe"):
        s = sub.add_parser(name)
        s.add_argument("material", choices=["graphene", "hbn"])
        if name == "label":
            s.add_argument("--threads", type=int, default=2)
    s = sub.add_parser("import-shared")
    s.add_argument("--source", default=SHARED)
    args = ap.parse_args(argv)
    return {"pool": cmd_pool, "label": cmd_label, "recipe": cmd_recipe,
            "import-shared": cmd_import_shared}[args.cmd](args) or 0


if __name__ == "__main__":
    sys.exit(main())
