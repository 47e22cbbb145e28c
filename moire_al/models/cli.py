"""``moire-al fit``, ``predict``, ``explore`` and ``finetune``. JAX is imported inside the handlers."""

from __future__ import annotations

import argparse

from moire_al.errors import MoireALError


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
    p.add_argument("train", nargs="+", help="labelled training structures (extxyz with REF_energy, REF_forces, "
                                             "...); several files are fitted together")
    p.add_argument("--test", help="labelled test structures")
    p.add_argument("-o", "--output", required=True, help="model directory to write")
    p.add_argument("--order", type=int, default=None,
                   help="correlation order (default: 3 for one species, 2 for more; docs/model.md)")
    p.add_argument("--totaldegree", type=int, default=None,
                   help="ACE total degree (default: 16 for one species; for more, 12 at order 2 and 10 at "
                        "order 3 or more; docs/model.md)")
    p.add_argument("--rcut", type=float, default=5.5)
    p.add_argument("--elements", help="comma-separated symbols (default: those in the data)")
    p.add_argument("--committee-size", type=int, default=32)
    p.add_argument("--weights", type=_weights, default=None, help="E=30,F=1,V=1")
    p.add_argument("--multilayer-weight", type=float, default=None,
                   help="factor on every row of a structure with two or more layers (default 3; the hBN "
                        "twisted-bilayer model of docs/analysis.md used 30)")
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

    e = subparsers.add_parser("explore", help="uncertainty-biased MD: find structures the model gets wrong",
                              description="Langevin MD of each structure at each temperature with the force "
                                          "biased up the committee's energy std (V = E - tau sigma_E, tau "
                                          "relative to the mean force, ramped); a run stops when the max "
                                          "relative force uncertainty passes --tolerance and that "
                                          "configuration is written to OUT (extxyz, explore_* info keys).")
    e.add_argument("model", help="model directory (moire-al fit -o), with a committee")
    e.add_argument("structures", help="start structures (DFT-sized cells; extxyz or any ASE-readable file)")
    e.add_argument("-o", "--output", required=True, help="the finds (extxyz)")
    e.add_argument("--temperatures", type=_floats, default=(300.0,), help="comma-separated K (default 300)")
    e.add_argument("--steps", type=int, default=1000, help="max MD steps per run (default 1000)")
    e.add_argument("--tau", type=float, default=0.1, help="bias force / mean force (default 0.1; 0: unbiased)")
    e.add_argument("--ramp", type=int, default=100, help="steps over which tau ramps up (default 100)")
    e.add_argument("--tolerance", type=float, default=0.3,
                   help="max relative force uncertainty that stops a run (default 0.3)")
    e.add_argument("--timestep", type=float, default=1.0, help="fs (default 1)")
    e.add_argument("--friction", type=float, default=0.01, help="Langevin friction per fs (default 0.01)")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--json", help="write the runs' summaries (traces included) to this JSON file")
    e.set_defaults(func=explore_command)

    f = subparsers.add_parser("finetune", help="label task structures, refit the model on its training set + "
                                               "the task, print errors before/after",
                              description="Fine-tune MODEL on TASK (NEB images, strained cells, defects): "
                                          "label TASK with --labeller, refit with MODEL's hyperparameters "
                                          "on the union of its training set (--train, checked against the "
                                          "hash the model keeps) and the task, print the task error and the "
                                          "original test error (--test; else the training set) before and "
                                          "after, and write NEW_MODEL.")
    f.add_argument("model", help="model directory (moire-al fit -o)")
    f.add_argument("task", help="task structures (extxyz or any ASE-readable file)")
    f.add_argument("--labeller", default="cp2k",
                   help="cp2k (default), gpaw, reference = the classical potential (a fast baseline, not "
                        "DFT), dataset: replay labels from a labelled file (--settings {\"path\": ...}; "
                        "default: TASK itself)")
    f.add_argument("--settings", help="JSON (or YAML) file with labeller settings")
    f.add_argument("--train", required=True,
                   help="the model's labelled training structures (a saved model keeps only their hash)")
    f.add_argument("--test", help="labelled original test structures (default: the training set stands in)")
    f.add_argument("--workdir", default=None, help="labelling run directories (default: NEW_MODEL.runs/)")
    f.add_argument("-o", "--output", help="new model directory (not with --workflow)")
    f.add_argument("--workflow", action="store_true",
                   help="instead of running here: store MODEL, the training labels and TASK in the job "
                        "database and add the fine-tuning as Fireworks (labels: category dft, refit: fit); "
                        "the new model lands in the store, the errors in the 'finetunes' collection")
    f.add_argument("--id", default=None, help="with --workflow: the fine-tuning id (default: finetune-<random>)")
    f.add_argument("-l", "--launchpad", default=None,
                   help="with --workflow: launchpad.yaml (default: the local job database)")
    f.set_defaults(func=finetune_command)


def _floats(text: str) -> tuple:
    try:
        out = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad list of numbers {text!r}: use e.g. 300,600") from None
    if not out:
        raise argparse.ArgumentTypeError("empty list of numbers")
    return out


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

    train = [at for path in args.train for at in _read(path)]
    test = _read(args.test) if args.test else None
    params = dict(elements=args.elements.split(",") if args.elements else None, order=args.order,
                  totaldegree=args.totaldegree, rcut=args.rcut, committee_size=args.committee_size,
                  weights=args.weights, d3=_want_d3(args, train), seed=args.seed)
    if args.multilayer_weight is not None:
        params["multilayer_weight"] = args.multilayer_weight
    ACEModel.check_params(params, committee_optional=True)    # a bad value: one line, before fitting
    model = ACEModel(**params)
    model.fit(train)
    tables = {"train": model.fit_report_["train"]}
    if test:
        tables["test"] = rmse_table(model, test)
        model.fit_report_["test"] = tables["test"]
    out = model.save(args.output)
    info = model.fit_info_
    print(f"model: {out}  ({info['n_basis']} basis functions, {info['n_structures']} structures, "
          f"{info['n_atoms']} atoms, fit {info['time_total_s']:.1f} s)")
    print(f"evidence: noise σ_F = {info['noise_std_force_eV_per_A']:.4f} eV/Å (multilayers; monolayers "
          f"{info['noise_std_force_monolayer_eV_per_A']:.4f}), "
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


def _load_model(path):
    from moire_al.models.ace import ACEModel

    return ACEModel.load(path)


def explore_command(args) -> int:
    import json

    from moire_al.analysis.explore import ExploreSettings, explore
    from moire_al.structures import write_structures

    structures = _read(args.structures)
    settings = ExploreSettings(temperatures_K=args.temperatures, steps=args.steps, tau_rel=args.tau,
                               ramp_steps=args.ramp, tolerance=args.tolerance, seed=args.seed,
                               timestep_fs=args.timestep, friction_per_fs=args.friction).validate()
    model = _load_model(args.model)
    runs = explore(model, structures, settings)
    finds = [r.structure for r in runs if r.triggered]
    for r in runs:
        what = (f"find at step {r.step}: max rel. force unc. {r.max_rel_force_unc:.3f}, "
                f"sigma_F {r.max_force_std:.3f} eV/A, sigma_E {r.energy_std:.4f} eV" if r.triggered
                else f"no find ({r.reason or 'ran to the end'}{'' if r.step is None else f' at step {r.step}'})")
        print(f"{r.source[:12]} {r.temperature_K:g} K seed {r.seed}: {what}")
    write_structures(args.output, finds)
    if args.json:
        from moire_al.conventions import plain

        with open(args.json, "w") as fh:
            json.dump(plain({"settings": settings.as_dict(), "runs": [r.as_dict() for r in runs]}), fh, indent=1)
    print(f"wrote {len(finds)} find(s) of {len(runs)} run(s) to {args.output}")
    return 0


def finetune_command(args) -> int:
    import json
    from pathlib import Path

    from moire_al.labelling import get_labeller
    from moire_al.labelling.cli import _read_settings
    from moire_al.models.finetune import check_training_set, finetune, label_all

    if args.workflow:
        if args.output:
            raise MoireALError("finetune --workflow stores the new model in the job database: drop -o")
        return finetune_submit(args)
    if not args.output:
        raise MoireALError("finetune: -o NEW_MODEL is required (or --workflow to add it as Fireworks)")
    if Path(args.output).resolve() == Path(args.model).resolve():
        raise MoireALError("finetune: -o must be a new directory (the original model is kept)")
    task = _read(args.task)
    train = _read(args.train)
    test = _read(args.test) if args.test else None
    settings = _read_settings(args.settings)
    if args.labeller == "dataset" and not settings:
        settings = {"path": args.task}
    labeller = get_labeller(args.labeller, settings)
    model = _load_model(args.model)
    check_training_set(model, train)              # before any labelling is spent
    labelled, failed = label_all(labeller, task, args.workdir or f"{args.output}.runs")
    for fl in failed:
        print(f"label failed: {fl.structure_hash[:12]} {fl.error_type}: {fl.message}")
    if not labelled:
        raise MoireALError(f"finetune: none of the {len(task)} task structures could be labelled")
    new, report = finetune(model, labelled, train, test, check_train=False)
    report.n_failed = len(failed)
    new.fit_report_["finetune"] = report.as_dict()
    out = new.save(args.output)
    (Path(out) / "finetune.json").write_text(json.dumps(report.as_dict(), indent=1))
    print(report.text())
    print(f"model: {out} ({report.n_train} + {report.n_task} structures, labeller {labeller.name}"
          f"{', the classical reference potential (not DFT)' if labeller.name == 'reference' else ''})")
    return 0


def finetune_submit(args) -> int:
    """``moire-al finetune --workflow``: store the model, its training (and test) labels
    and the task, then add the fine-tuning Fireworks."""
    import os
    import uuid

    from moire_al.config import INTERACTIVE_DB_WAIT_S, ensure_initialized, get_launchpad
    from moire_al.labelling.cli import _read_settings
    from moire_al.models.finetune import check_training_set
    from moire_al.store.documents import FinetuneDoc
    from moire_al.store.mongo import Store, utcnow
    from moire_al.workflows.builders import finetune_workflow
    from moire_al.workflows.finetuning import store_labelled_file
    from moire_al.workflows.settings import FinetuneSettings

    task = _read(args.task)
    train = _read(args.train)
    if args.test:
        _read(args.test)
    settings = _read_settings(args.settings) or {}
    if args.labeller == "dataset" and not settings:
        settings = {"path": os.path.abspath(args.task)}
    fid = args.id or f"finetune-{uuid.uuid4().hex[:8]}"
    ft = FinetuneSettings(model_id=f"{fid}-base", labeller=args.labeller, labeller_settings=settings,
                          finetune_id=fid)   # checks the labeller and its settings before anything is stored
    check_training_set(_load_model(args.model), train)
    lp = get_launchpad(args.launchpad, wait_s=INTERACTIVE_DB_WAIT_S)
    ensure_initialized(lp)
    store = Store.from_launchpad(lp)
    if store.get_finetune(fid) is not None:
        raise MoireALError(f"finetune --workflow: a fine-tuning {fid!r} is already in the job database")
    store.put_model(args.model, model_id=ft.model_id, finetune_id=fid, n_train=len(train))
    ft.train = store_labelled_file(store, os.path.abspath(args.train), fid)
    ft.test = store_labelled_file(store, os.path.abspath(args.test), fid) if args.test else []
    ft.task = list(dict.fromkeys(store.put_structures(task)))
    store.put_finetune(FinetuneDoc(finetune_id=fid, model_id=ft.model_id, labeller=ft.labeller, task=ft.task,
                                   created=utcnow()))
    ids = lp.add_wf(finetune_workflow(ft))
    print(f"added fine-tuning {fid}: {len(ft.task)} task structures to label ({args.labeller}), refit on "
          f"{len(ft.train)} + task (fw ids {sorted(ids.values())}); run `rlaunch -l launchpad.yaml -w "
          f"fworkers/all.yaml rapidfire`; results: the 'finetunes' collection, model {fid}-model")
    return 0
