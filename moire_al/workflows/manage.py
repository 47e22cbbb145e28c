"""Operations on running loops: status, resume of failed labels, reports.

These work on the LaunchPad and the store only; they never run science themselves
(resume reruns Fireworks, which workers then pick up).
"""

from __future__ import annotations

import json
from pathlib import Path

from moire_al.errors import MoireALError
from moire_al.store.documents import LONG_FIELDS, LoopDoc
from moire_al.store.mongo import Store

# Children of a rerun label that keep their result: their link is removed so FireWorks
# does not replay them. A FIZZLED child (a fit that failed because every label of its
# round failed) produced nothing and added nothing: it stays linked, so rerunning the
# label reruns it too once the labels are in.
DETACH_STATES = ("COMPLETED", "RUNNING", "RESERVED")


def loop_ids(store: Store) -> list[str]:
    return store.loop_ids()


def require_loop(store: Store, loop_id: str) -> LoopDoc:
    """The loop document, or a :class:`NotFoundError` naming the known loops."""
    from moire_al.errors import NotFoundError

    loop = store.get_loop(loop_id)
    if loop is None:
        known = store.loop_ids()
        raise NotFoundError(f"no loop {loop_id!r} in the job database"
                            + (f" (loops: {', '.join(known[-10:])})" if known else " (it has no loops)"))
    return loop


def init_problems(lp) -> list[dict]:
    """Init Fireworks that have not completed (no loop document yet): fw id, workflow
    name, state and, for a FIZZLED one, the last line of its error."""
    out = []
    from moire_al.workflows.builders import fw_query

    for d in lp.fireworks.find({**fw_query(step="init"), "state": {"$ne": "COMPLETED"}},
                               {"fw_id": 1, "name": 1, "state": 1}):
        wf = lp.workflows.find_one({"nodes": d["fw_id"]}, {"name": 1}) or {}
        error = ""
        if d["state"] == "FIZZLED":
            launch = lp.launches.find_one({"fw_id": d["fw_id"]}, {"action.stored_data._exception": 1},
                                          sort=[("launch_id", -1)]) or {}
            trace = (((launch.get("action") or {}).get("stored_data") or {}).get("_exception") or {}) \
                .get("_stacktrace") or ""
            error = trace.strip().splitlines()[-1] if trace.strip() else ""
        out.append({"fw_id": d["fw_id"], "workflow": wf.get("name", ""), "state": d["state"], "error": error})
    return sorted(out, key=lambda x: x["fw_id"])


def fw_states(lp, loop_id: str | None = None) -> dict:
    """Count of Fireworks per state (for one loop: its label and fit Fireworks)."""
    from moire_al.workflows.builders import fw_query

    q = fw_query(loop_id=loop_id)
    counts: dict = {}
    for d in lp.fireworks.find(q, {"state": 1}):
        counts[d["state"]] = counts.get(d["state"], 0) + 1
    return counts


def status_table(store: Store, loop_id: str) -> str:
    """A plain-text table of a loop's rounds."""
    loop = store.get_loop(loop_id) or LoopDoc(loop_id=loop_id)
    params = loop.params or {}
    head = (f"loop {loop_id}  material {params.get('material', '?')}  labeller {params.get('labeller', '?')}  "
            f"state {loop.state or '?'}" + (f" ({loop.stop_reason})" if loop.stop_reason else ""))
    try:
        from moire_al.workflows.loop import labels_description
        from moire_al.workflows.settings import LoopSettings

        head += "\nlabels: " + labels_description(LoopSettings.from_dict(params))
    except MoireALError:
        pass  # a loop stored by another version: the table without the line
    cols = ["round", "n_train", "new", "failed", "E meV/at", "F eV/Å", "max σF", "med σF", "next", "time s"]
    rows = []
    for d in store.get_rounds(loop_id):
        if not d.finished_fit:
            continue
        rmse = d.rmse or {}
        rows.append([
            str(d.round), str(d.n_train), _fmt(d.n_new, ""), _fmt(d.n_failed, ""),
            _fmt(rmse.get("E_meV_atom")), _fmt(rmse.get("F")), _fmt(d.max_sigma_f),
            _fmt(d.median_sigma_f), d.stop_reason or str(len(d.selected or [])),
            f"{d.wall_time or 0:.1f}",
        ])
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(cols)]
    line = lambda r: "  ".join(x.rjust(w) for x, w in zip(r, widths))  # noqa: E731
    out = [head, line(cols), line(["-" * w for w in widths])] + [line(r) for r in rows]
    if not rows:
        out.append("(no finished round yet)")
    return "\n".join(out)


def _fmt(x, missing: str = "-") -> str:
    if x is None:
        return missing
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
        done = [c for c in children if states.get(str(c)) in DETACH_STATES]
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
    recovered labels reach a model. A fine-tuning's labels (``loop_id`` = its
    ``finetune_id``) rerun with their descendants: the refit then sees every label.
    """
    from moire_al.workflows.builders import SPEC_KEY, fw_query, fw_tags, refit_workflow
    from moire_al.workflows.settings import LoopSettings

    if loop_id and Store.from_launchpad(lp).get_finetune(loop_id) is None:
        require_loop(Store.from_launchpad(lp), loop_id)
    q = {**fw_query(step="label", loop_id=loop_id, round_=round_), "state": "FIZZLED"}
    fws = list(lp.fireworks.find(q, {"fw_id": 1, f"spec.{SPEC_KEY}": 1}))
    rerun, detached = [], []
    for d in fws:
        # a fine-tuning's label keeps its link: the refit (and its NEB) reruns with the label in
        if not fw_tags(d).get("finetune_id"):
            detached += _detach_finished_children(lp, d["fw_id"])
        lp.rerun_fw(d["fw_id"])
        rerun.append(d["fw_id"])
    store = Store.from_launchpad(lp)
    refits = []
    by_loop: dict = {}
    for d in fws:
        by_loop.setdefault(fw_tags(d)["loop_id"], []).append(d["fw_id"])
    for lid, ids in by_loop.items():
        loop = store.get_loop(lid)
        if loop is None or loop.state != "COMPLETED":
            continue  # a fit still to come will pick the labels up
        last = max((r.round for r in store.get_rounds(lid, fields=["round"])), default=-1)
        settings = LoopSettings.from_dict(loop.params)
        store.set_loop_state(lid, "RUNNING", stop_reason=None)
        lp.append_wf(refit_workflow(settings, lid, last + 1), fw_ids=ids)
        refits.append(lid)
    return {"rerun": rerun, "detached": detached, "refit_loops": refits}


def write_report(store: Store, loop_id: str, outdir: str | Path) -> Path:
    """Plots (PNG), the rounds as JSON, and the latest model, in ``outdir``."""
    from moire_al.workflows import report

    require_loop(store, loop_id)
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    rounds = [r for r in store.get_rounds(loop_id) if r.finished_fit]
    report.write_plots(rounds, outdir)
    (outdir / "rounds.json").write_text(json.dumps(
        [r.as_dict(exclude=LONG_FIELDS) for r in rounds], indent=1, default=str))
    (outdir / "status.txt").write_text(status_table(store, loop_id) + "\n")
    if rounds:
        store.get_model_dir(rounds[-1].model_id, outdir)
    return outdir


def finetune_line(doc) -> str:
    """One line of a fine-tuning job for ``moire-al status``."""
    from moire_al.workflows.report import table_f_rmse

    def f(table):
        rmse = table_f_rmse(table)
        return "-" if rmse is None else f"{rmse:.4f}"

    line = (f"fine-tuning {doc.finetune_id}: base {doc.model_id}, task {len(doc.task or [])} structures "
            f"({doc.n_task if doc.n_task is not None else '-'} labelled, {doc.n_failed or 0} failed; "
            f"{doc.labels or doc.labeller or '-'}); task F RMSE {f(doc.task_before)} -> {f(doc.task_after)} eV/A")
    if doc.new_model_id:
        line += f", original-set F ratio {doc.forgetting_F_ratio:.3f}, model {doc.new_model_id}"
    if doc.barrier_before is not None:
        after = "-" if doc.barrier_after is None else f"{doc.barrier_after:.3f}"
        labels = "-" if doc.barrier_labels is None else f"{doc.barrier_labels:.3f}"
        line += f"; NEB barrier {doc.barrier_before:.3f} -> {after} eV (labels on the first path: {labels} eV)"
    return line
