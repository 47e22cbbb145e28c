"""CLI of the learning loop: ``loop add``, ``status``, ``resume``, ``report``, ``demo``."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("loop", help="add a hyperactive learning loop to the job database")
    p.add_argument("workflow", nargs="?", help="a workflow YAML (e.g. workflows/graphene_hyperactive.yaml); "
                   "default: build one from the options")
    p.add_argument("-l", "--launchpad", default=None, help="launchpad.yaml (default: the local job database)")
    p.add_argument("--material", default="graphene", choices=("graphene", "hbn"))
    p.add_argument("--labeller", default="reference", choices=("reference", "cp2k", "gpaw"))
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a loop parameter (JSON value), e.g. --set batch_size=20 --set max_rounds=5")
    p.set_defaults(func=_cmd_loop_add)

    p = sub.add_parser("status", help="per-round table of a loop and the state of its Fireworks")
    p.add_argument("--loop", default=None, help="loop id (default: every loop)")
    p.add_argument("-l", "--launchpad", default=None)
    p.set_defaults(func=_cmd_status)

    p = sub.add_parser("resume", help="rerun exactly the FIZZLED labelling Fireworks")
    p.add_argument("--loop", default=None, help="only this loop")
    p.add_argument("--round", type=int, default=None, help="only this round")
    p.add_argument("-l", "--launchpad", default=None)
    p.set_defaults(func=_cmd_resume)

    p = sub.add_parser("report", help="write a loop's plots, rounds and latest model to a directory")
    p.add_argument("loop", help="loop id")
    p.add_argument("-o", "--output", default=None, help="directory (default runs/<loop>/report)")
    p.add_argument("-l", "--launchpad", default=None)
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("suite", help="add the standard analysis suite of a model (category 'analysis')")
    p.add_argument("--model", default="reference", help="model id in the store (default: the reference potential)")
    p.add_argument("--material", default="graphene", choices=("graphene", "hbn"))
    p.add_argument("--quick", action="store_true", help="small cells and ranges (minutes)")
    p.add_argument("--polarization", action="store_true",
                   help="instead: the hBN polarization sweep, one Firework per angle (seed 000 Fig. 4c)")
    p.add_argument("--m", type=int, nargs="+", default=None,
                   help="with --polarization: r = 1 cells (default m = 1 .. 30, 21.8° .. 1.08°)")
    p.add_argument("-l", "--launchpad", default=None)
    p.set_defaults(func=_cmd_suite)

    p = sub.add_parser("md", help="add MD runs of a structure at several temperatures, then D(T) "
                       "(category 'analysis'; `moire-al analyse md` runs one here and now)")
    p.add_argument("structure", help="structure file (extxyz); stored in the job database")
    p.add_argument("--model", default="reference", help="model id in the store (default: the reference potential)")
    p.add_argument("--material", default=None, choices=("graphene", "hbn"))
    p.add_argument("--temperatures", default="300", help="comma-separated K (default 300)")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="an md_analysis option (JSON value), e.g. --set ensemble=\"nve\" --set kappa_runs=3")
    p.add_argument("-l", "--launchpad", default=None)
    p.set_defaults(func=_cmd_md)

    p = sub.add_parser("demo", help="the main job: a small real hyperactive loop through FireWorks")
    p.add_argument("--material", default="graphene", choices=("graphene", "hbn"))
    p.add_argument("--labeller", default="dataset", choices=("dataset", "cp2k", "reference"),
                   help="dataset: the committed CP2K labels replayed (minutes, the default); cp2k: the same "
                        "loop with CP2K computing its labels live (hours); reference: the classical baseline")
    p.add_argument("--rounds", type=int, default=4, help="max rounds (fits)")
    p.add_argument("--batch", type=int, default=10, help="structures added per round")
    p.add_argument("--workers", type=int, default=1, help="rlaunch worker processes")
    p.add_argument("--runs", default="runs", help="directory for launches and the report")
    p.set_defaults(func=_cmd_demo)


def _parse_sets(items: list[str]) -> dict:
    import json

    from moire_al.errors import MoireALError

    out = {}
    for item in items:
        if "=" not in item:
            raise MoireALError(f"--set {item!r}: expected KEY=VALUE")
        k, v = item.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def _read_workflow(path):
    """A FireWorks workflow file, or one clear line saying why it cannot be read."""
    from fireworks import Workflow

    from moire_al.errors import MoireALError

    try:
        return Workflow.from_file(path)
    except OSError as exc:
        raise MoireALError(f"{path}: {exc.strerror or exc}") from None
    except Exception as exc:  # YAML/JSON syntax, or not a workflow (FireWorks raises many types)
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MoireALError(f"{path}: not a readable workflow file ({type(exc).__name__}: {msg})") from None


def _cmd_loop_add(args) -> int:

    from moire_al.config import INTERACTIVE_DB_WAIT_S, get_launchpad
    from moire_al.workflows.builders import hyperactive_loop
    from moire_al.workflows.settings import LoopSettings

    if args.workflow:
        wf = _read_workflow(args.workflow)
        from moire_al.workflows.settings import NebFinetuneSettings

        sets = _parse_sets(args.set)
        for fw in wf.fws:  # validate before adding: a typo fails here, not on a worker
            for t in fw.tasks:
                if "params" in t:
                    kind = NebFinetuneSettings if type(t).__name__ == "NebFinetuneTask" else LoopSettings
                    kind.from_dict({**t["params"], **sets})
                    t["params"] = {**t["params"], **sets}   # --set overrides the file's value
    else:
        settings = LoopSettings.from_dict({"material": args.material, "labeller": args.labeller,
                                           **_parse_sets(args.set)})
        wf = hyperactive_loop(settings)
    from moire_al.config import ensure_initialized

    lp = get_launchpad(args.launchpad, wait_s=INTERACTIVE_DB_WAIT_S)
    ensure_initialized(lp)
    ids = lp.add_wf(wf)
    print(f"added workflow '{wf.name}' (fw ids {sorted(ids.values())}); run workers with "
          f"`rlaunch -l launchpad.yaml -w fworkers/all.yaml rapidfire`")
    return 0


def _cmd_status(args) -> int:
    from moire_al.config import INTERACTIVE_DB_WAIT_S, get_launchpad
    from moire_al.store.mongo import Store
    from moire_al.workflows.builders import fw_query
    from moire_al.workflows.manage import finetune_line, fw_states, init_problems, loop_ids, require_loop, status_table

    lp = get_launchpad(args.launchpad, wait_s=INTERACTIVE_DB_WAIT_S)
    store = Store.from_launchpad(lp)
    if args.loop:
        require_loop(store, args.loop)
    ids = [args.loop] if args.loop else loop_ids(store)
    inits = [] if args.loop else init_problems(lp)
    for p in inits:  # a loop whose init has not run (or failed) has no loop document yet
        what = {"FIZZLED": "FIZZLED", "RUNNING": "running", "RESERVED": "reserved"}.get(p["state"], "not started")
        print(f"workflow '{p['workflow']}': init fw {p['fw_id']} {what} ({p['state']})"
              + (f": {p['error']}" if p["error"] else ""))
    if inits:
        print()
    finetunes = [] if args.loop else store.get_finetunes()
    for doc in finetunes:
        print(finetune_line(doc))
    if finetunes:
        print()
    if not ids and not inits and not finetunes:
        print("no loops in the job database")
    for lid in ids:
        print(status_table(store, lid))
        states = fw_states(lp, lid)
        print("fireworks: " + ", ".join(f"{k} {v}" for k, v in sorted(states.items())))
        running = list(lp.fireworks.find({**fw_query(loop_id=lid), "state": {"$in": ["RUNNING", "FIZZLED"]}},
                                         {"fw_id": 1, "name": 1, "state": 1}))
        for d in running:
            print(f"  {d['state']:9s} fw {d['fw_id']}: {d['name']}")
        print()
    return 0


def _cmd_resume(args) -> int:
    from moire_al.config import INTERACTIVE_DB_WAIT_S, get_launchpad
    from moire_al.workflows.manage import resume

    out = resume(get_launchpad(args.launchpad, wait_s=INTERACTIVE_DB_WAIT_S), args.loop, args.round)
    print(f"rerun {len(out['rerun'])} fizzled labelling fireworks {out['rerun']}"
          + (f"; refit added for {out['refit_loops']}" if out["refit_loops"] else ""))
    return 0


def _cmd_report(args) -> int:
    from moire_al.config import INTERACTIVE_DB_WAIT_S, get_launchpad
    from moire_al.store.mongo import Store
    from moire_al.workflows.manage import write_report

    store = Store.from_launchpad(get_launchpad(args.launchpad, wait_s=INTERACTIVE_DB_WAIT_S))
    out = write_report(store, args.loop, args.output or Path("runs") / args.loop / "report")
    print(f"report written to {out}")
    return 0


def _cmd_suite(args) -> int:
    from moire_al.config import INTERACTIVE_DB_WAIT_S, get_launchpad
    from moire_al.workflows.builders import analysis_workflow

    from moire_al.config import ensure_initialized

    if args.polarization:
        from moire_al.workflows.builders import polarization_workflow

        wf = polarization_workflow(model_id=args.model, ms=args.m)
    else:
        wf = analysis_workflow(args.material, model_id=args.model, quick=args.quick)
    lp = get_launchpad(args.launchpad, wait_s=INTERACTIVE_DB_WAIT_S)
    ensure_initialized(lp)
    ids = lp.add_wf(wf)
    print(f"added '{wf.name}': {len(ids)} analysis fireworks; run `rlaunch -l launchpad.yaml "
          "-w fworkers/analysis.yaml rapidfire`")
    return 0


def _cmd_md(args) -> int:
    from moire_al.analysis.common import material_of
    from moire_al.config import ensure_initialized, get_launchpad
    from moire_al.errors import MoireALError
    from moire_al.store.mongo import Store
    from moire_al.structures import read_structures
    from moire_al.workflows.analysis import check_md_options
    from moire_al.workflows.builders import md_workflow

    atoms = read_structures(args.structure)[0]
    try:
        temps = [float(t) for t in args.temperatures.split(",") if t.strip()]
    except ValueError:
        raise MoireALError(f"--temperatures {args.temperatures!r}: expected comma-separated kelvin") from None
    material = material_of(atoms, args.material)
    options = check_md_options(_parse_sets(args.set))
    lp = get_launchpad(args.launchpad)
    ensure_initialized(lp)
    (h,) = Store.from_launchpad(lp).put_structures([atoms])
    wf = md_workflow(h, material, args.model, temps, args.steps, options)
    ids = lp.add_wf(wf)
    print(f"added '{wf.name}': {len(ids)} fireworks ({len(temps)} MD runs + D(T)); run `rlaunch -l "
          "launchpad.yaml -w fworkers/analysis.yaml rapidfire`")
    return 0


def _cmd_demo(args) -> int:
    from moire_al.workflows.demo import run_demo

    return run_demo(material=args.material, labeller=args.labeller, max_rounds=args.rounds,
                    batch_size=args.batch, workers=args.workers, runs_dir=Path(args.runs))
