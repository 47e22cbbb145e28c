"""``moire-al fit`` and ``moire-al predict``. JAX is imported inside the handlers."""

from __future__ import annotations

import argparse


def _weights(text: str) -> dict:
    out = {}
    for part in text.split(","):
        if not part.strip():
            continue
        k, _, v = part.partition("=")
        if k.strip() not in ("E", "F", "V") or not v:
            raise argparse.ArgumentTypeError(f"bad weight {part!r}: use E=30,F=1,V=1")
        out[k.strip()] = float(v)
    return out


def register(subparsers) -> None:
    p = subparsers.add_parser("fit", help="fit a linear ACE model (BLR + committee) to labelled structures",
                              description="Fit an ACE model to REF_-labelled extxyz structures; print RMSE "
                                          "tables (energy meV/atom, forces eV/Å in-plane/out-of-plane, per "
                                          "layer count) and write parity plots / error histograms.")
    p.add_argument("train", help="labelled training structures (extxyz with REF_energy, REF_forces, ...)")
    p.add_argument("--test", help="labelled test structures")
    p.add_argument("-o", "--output", required=True, help="model directory to write")
    p.add_argument("--order", type=int, default=3)
    p.add_argument("--totaldegree", type=int, default=None,
                   help="ACE total degree (default: 14 for one species, 10 for more; docs/model.md)")
    p.add_argument("--rcut", type=float, default=5.5)
    p.add_argument("--elements", help="comma-separated symbols (default: those in the data)")
    p.add_argument("--committee-size", type=int, default=32)
    p.add_argument("--weights", type=_weights, default=None, help="E=30,F=1,V=1")
    p.add_argument("--d3", choices=("auto", "on", "off"), default="auto",
                   help="add D3(BJ) to the model; auto (default): off when every label comes from the "
                        "reference potential (its interlayer terms already bind the layers), else on")
    p.add_argument("--no-d3", action="store_true", help="same as --d3 off")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-plots", action="store_true")
    p.set_defaults(func=fit_command)

    q = subparsers.add_parser("predict", help="predict energies, forces, stress and uncertainties",
                              description="Evaluate a model on structures; write extxyz with energy, forces, "
                                          "stress, per-atom forces_std / rel_force_unc and per-structure "
                                          "energy_std, max_force_std, max_rel_force_unc.")
    q.add_argument("model", help="model directory (moire-al fit -o)")
    q.add_argument("input", help="structures (extxyz or any ASE-readable file)")
    q.add_argument("-o", "--output", required=True, help="output extxyz")
    q.set_defaults(func=predict_command)


def _read(path):
    """Structures from a file, validated (cells, overlaps, species, NaN): one clear line on error."""
    from moire_al.structures import read_structures

    return read_structures(path)


def _want_d3(args, train) -> bool:
    from moire_al.conventions import REF_LABELLER

    if args.no_d3 or args.d3 == "off":
        return False
    if args.d3 == "on":
        return True
    return not all(at.info.get(REF_LABELLER) == "reference" for at in train)


def fit_command(args) -> int:
    import json
    from pathlib import Path

    from moire_al.models.ace import ACEModel
    from moire_al.models.metrics import format_table, rmse_table, write_plots

    train = _read(args.train)
    test = _read(args.test) if args.test else None
    model = ACEModel(elements=args.elements.split(",") if args.elements else None, order=args.order,
                     totaldegree=args.totaldegree, rcut=args.rcut, committee_size=args.committee_size,
                     weights=args.weights, d3=_want_d3(args, train), seed=args.seed)
    model.fit(train)
    tables = {"train": model.fit_report_["train"]}
    if test:
        tables["test"] = rmse_table(model, test)
        model.fit_report_["test"] = tables["test"]
    out = model.save(args.output)
    info = model.fit_info_
    print(f"model: {out}  ({info['n_basis']} basis functions, {info['n_structures']} structures, "
          f"{info['n_atoms']} atoms, fit {info['time_total_s']:.1f} s)")
    print(f"evidence: noise σ_F = {info['noise_std_force_eV_per_A']:.4f} eV/Å, "
          f"σ_E = {info['noise_std_energy_meV_per_atom']:.3f} meV/atom, "
          f"effective parameters {info['effective_parameters']:.1f}")
    print(format_table(tables))
    (Path(out) / "rmse.json").write_text(json.dumps(tables, indent=1))
    if not args.no_plots:
        sets = {"train": train, **({"test": test} if test else {})}
        for p in write_plots(model, sets, Path(out) / "plots"):
            print(f"wrote {p}")
    return 0


def predict_command(args) -> int:
    import ase.io
    import numpy as np
    from ase.calculators.singlepoint import SinglePointCalculator

    from moire_al.models.ace import ACEModel

    structures = _read(args.input)  # bad input fails before the model (and JAX) loads
    model = ACEModel.load(args.model)
    preds = model.predict(structures)
    out = []
    for at, p in zip(structures, preds):
        at = at.copy()
        for k in ("forces_std", "rel_force_unc"):
            at.arrays[k] = np.asarray(p[k])
        for k in ("energy_std", "max_force_std", "max_rel_force_unc"):
            at.info[k] = float(p[k])
        kw = {"energy": p["energy"], "forces": p["forces"]}
        if p.get("stress") is not None:
            kw["stress"] = p["stress"]
        at.calc = SinglePointCalculator(at, **kw)
        out.append(at)
    ase.io.write(args.output, out, format="extxyz")
    print(f"wrote {len(out)} structures to {args.output}")
    return 0
