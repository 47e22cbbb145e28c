"""Operations on running loops: status, resume of failed labels, reports.

These work on the LaunchPad and the store only; they never run science themselves
(resume reruns Fireworks, which workers then pick up).
"""

from __future__ import annotations

import json
from pathlib import Path

from moire_al.errors import MoireALError
from moire_al.store.mongo import Store

TERMINAL_RUN = ("COMPLETED", "RUNNING", "FIZZLED", "RESERVED")


def loop_ids(store: Store) -> list[str]:
    return [d["loop_id"] for d in store.loops.find({}, {"loop_id": 1}).sort("created", 1)]


def fw_states(lp, loop_id: str | None = None) -> dict:
    """Count of Fireworks per state (for one loop: its label and fit Fireworks)."""
    q = {"spec._moire.loop_id": loop_id} if loop_id else {}
    counts: dict = {}
    for d in lp.fireworks.find(q, {"state": 1}):
        counts[d["state"]] = counts.get(d["state"], 0) + 1
    return counts


def status_table(store: Store, loop_id: str) -> str:
    """A plain-text table of a loop's rounds."""
    loop = store.loops.find_one({"loop_id": loop_id}) or {}
    params = loop.get("params", {})
    head = (f"loop {loop_id}  material {params.get('material', '?')}  labeller {params.get('labeller', '?')}  "
            f"state {loop.get('state', '?')}" + (f" ({loop['stop_reason']})" if loop.get("stop_reason") else ""))
    try:
        from moire_al.workflows.loop import labels_description
        from moire_al.workflows.settings import LoopSettings

        head += "\nlabels: " + labels_description(LoopSettings.from_dict(params))
    except MoireALError:
        pass  # a loop stored by another version: the table without the line
    cols = ["round", "n_train", "new", "failed", "E meV/at", "F eV/Å", "max σF", "med σF", "next", "time s"]
    rows = []
    for d in store.get_rounds(loop_id):
        if "n_train" not in d:
            continue
        rmse = d.get("rmse") or {}
        rows.append([
            str(d["round"]), str(d["n_train"]), str(d.get("n_new", "")), str(d.get("n_failed", "")),
            _fmt(rmse.get("E_meV_atom")), _fmt(rmse.get("F")), _fmt(d.get("max_sigma_f")),
            _fmt(d.get("median_sigma_f")), d.get("stop_reason") or str(len(d.get("selected") or [])),
            f"{d.get('wall_time', 0):.1f}",
        ])
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(cols)]
    line = lambda r: "  ".join(x.rjust(w) for x, w in zip(r, widths))  # noqa: E731
    out = [head, line(cols), line(["-" * w for w in widths])] + [line(r) for r in rows]
    if not rows:
        out.append("(no finished round yet)")
    return "\n".join(out)


def _fmt(x) -> str:
    if x is None:
        return "-"
    return f"{x:.4g}" if isinstance(x, float) else str(x)


def _detach_finished_children(lp, fw_id: int) -> list[int]:
    """Remove links from ``fw_id`` to children that already ran.

    FireWorks reruns every non-WAITING descendant of a rerun Firework; for a label
    whose round was already fitted that would replay the rest of the loop. The
    finished fit has consumed the round, so the link is no longer needed: the next
    fit picks up the label from the store.
    """
    from fireworks.core.launchpad import WFLock

    with WFLock(lp, fw_id):
        wf = lp.workflows.find_one({"nodes": fw_id}, {"links": 1, "fw_states": 1})
        children = wf["links"].get(str(fw_id), [])
        states = wf.get("fw_states", {})
        done = [c for c in children if states.get(str(c)) in TERMINAL_RUN]
        if done:
            keep = [c for c in children if c not in done]
            update = {f"links.{fw_id}": keep}
            lp.workflows.update_one({"_id": wf["_id"]}, {"$set": update})
            for c in done:  # parent_links is stored too in recent FireWorks
                lp.workflows.update_one({"_id": wf["_id"]}, {"$pull": {f"parent_links.{c}": fw_id}})
    return done


def resume(lp, loop_id: str | None = None, round_: int | None = None) -> dict:
    """Rerun exactly the FIZZLED labelling Fireworks (of one loop / round).

    When the loop has already stopped, a refit Firework is added after them so the
    recovered labels reach a model.
    """
    from fireworks import Firework

    from moire_al.workflows.settings import LoopSettings
    from moire_al.workflows.tasks import FitRoundTask

    q: dict = {"state": "FIZZLED", "spec._moire.step": "label"}
    if loop_id:
        q["spec._moire.loop_id"] = loop_id
    if round_ is not None:
        q["spec._moire.round"] = round_
    fws = list(lp.fireworks.find(q, {"fw_id": 1, "spec._moire": 1}))
    rerun, detached = [], []
    for d in fws:
        detached += _detach_finished_children(lp, d["fw_id"])
        lp.rerun_fw(d["fw_id"])
        rerun.append(d["fw_id"])
    store = Store.from_launchpad(lp)
    refits = []
    by_loop: dict = {}
    for d in fws:
        by_loop.setdefault(d["spec"]["_moire"]["loop_id"], []).append(d["fw_id"])
    for lid, ids in by_loop.items():
        loop = store.loops.find_one({"loop_id": lid}) or {}
        if loop.get("state") != "COMPLETED":
            continue  # a fit still to come will pick the labels up
        last = max((r["round"] for r in store.get_rounds(lid)), default=-1)
        settings = LoopSettings.from_dict(loop["params"])
        store.set_loop_state(lid, "RUNNING", stop_reason=None)
        fw = Firework([FitRoundTask(loop_id=lid, round=last + 1, params=settings.as_dict())],
                      name=f"fit+score r{last + 1} (after resume)",
                      spec={"_add_launchpad_and_fw_id": True, "_category": "fit", "_allow_fizzled_parents": True,
                            "_moire": {"loop_id": lid, "round": last + 1, "step": "fit"}})
        from fireworks import Workflow

        lp.append_wf(Workflow([fw]), fw_ids=ids)
        refits.append(lid)
    return {"rerun": rerun, "detached": detached, "refit_loops": refits}


def write_report(store: Store, loop_id: str, outdir: str | Path) -> Path:
    """Plots (PNG), the rounds as JSON, and the latest model, in ``outdir``."""
    from moire_al.workflows import report

    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    rounds = [r for r in store.get_rounds(loop_id) if "n_train" in r]
    report.write_plots(rounds, outdir)
    (outdir / "rounds.json").write_text(json.dumps(
        [{k: v for k, v in r.items() if k not in ("sigma_f", "rel_unc", "parity")} for r in rounds],
        indent=1, default=str))
    (outdir / "status.txt").write_text(status_table(store, loop_id) + "\n")
    if rounds:
        store.get_model_dir(rounds[-1]["model_id"], outdir)
    return outdir
