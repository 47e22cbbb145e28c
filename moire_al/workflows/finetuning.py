"""Fine-tuning a model on a new task as Fireworks (issue 16; seed 003's NEB example).

    label × k        the normal labelling Fireworks (LabelTask, category ``dft``): skips what
                     is stored, a failure lands in ``label_failures`` and fizzles only itself
    FinetuneTask     (category ``fit``, after the labels COMPLETED or FIZZLED) refits the base
                     model's hyperparameters on its training labels + the task labels
                     (:func:`moire_al.models.finetune.finetune`), stores the new model and a
                     :class:`~moire_al.store.documents.FinetuneDoc` (``finetunes``)

The NEB workflow (:class:`NebFinetuneTask`) puts a stage before and after it: a base model
fitted on a labelled file's (replayed) labels, a vacancy NEB in a twisted bilayer with it,
whose images become the task; after the refit, the NEB again with the new model. The
Fireworks are built by :mod:`moire_al.workflows.builders` (``finetune_workflow``,
``neb_finetune_workflow``); the science is plain functions here over the store.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path

from fireworks import FiretaskBase, FWAction, explicit_serialize

from moire_al.errors import LabelError
from moire_al.labelling.base import key_of
from moire_al.store.documents import FinetuneDoc
from moire_al.store.mongo import Store, utcnow
from moire_al.workflows.settings import FinetuneSettings, NebFinetuneSettings

log = logging.getLogger(__name__)


def store_labelled_file(store: Store, path: str, owner: str) -> list[list[str]]:
    """Store the structures and labels of a labelled extxyz file (replayed by hash, so a
    label keeps its original key); returns their ``[hash, label key]`` pairs in file order."""
    from moire_al.labelling import get_labeller
    from moire_al.labelling.base import LabelFailure

    lab = get_labeller("dataset", {"path": path})
    atoms = list(lab.index.values())
    hashes = store.put_structures(atoms)
    pairs = []
    for h, at in zip(hashes, atoms):
        rec = lab.label(at)
        if isinstance(rec, LabelFailure):  # cannot happen for the file's own structures
            raise LabelError(f"{path}: {rec.message}")
        store.put_label(rec.as_dict(), loop_id=owner, round=-1)
        pairs.append([h, rec.key])
    return pairs


def _labelled(store: Store, pairs) -> list:
    atoms, missing = store.labelled_atoms([p[0] for p in pairs], [p[1] for p in pairs])
    if missing:
        raise LabelError(f"{len(missing)} training/test structures have no label in the store (e.g. {missing[0]})")
    return atoms


def _task_labels(store: Store, labeller: str, labeller_settings: dict, hashes: list[str]):
    """(label keys, labelled structures, hashes without a label) of the stored structures
    ``hashes`` by that labeller."""
    from moire_al.labelling import get_labeller

    lab = get_labeller(labeller, labeller_settings)
    keys = [key_of(lab, a) for a in store.get_structures(hashes)]
    labelled, missing = store.labelled_atoms(hashes, keys)
    return keys, labelled, missing


def finetune_job(store: Store, s: FinetuneSettings, finetune_id: str) -> FinetuneDoc:
    """Refit ``s.model_id`` on its training labels + the task labels stored so far; store
    the new model (``<finetune_id>-model``) and the job's document; returns it."""
    from moire_al.models import ACEModel
    from moire_al.models.finetune import finetune
    from moire_al.workflows.loop import labels_description

    t0 = time.time()
    keys, task, missing = _task_labels(store, s.labeller, s.labeller_settings, s.task)
    if not task:
        raise LabelError(f"fine-tuning {finetune_id}: none of the {len(s.task)} task structures has a label")
    with tempfile.TemporaryDirectory() as tmp:
        model = ACEModel.load(store.get_model_dir(s.model_id, tmp))
    train = _labelled(store, s.train)
    test = _labelled(store, s.test) if s.test else None
    new, report = finetune(model, task, train, test)
    report.n_failed = len(missing)
    new.fit_report_["finetune"] = report.as_dict()
    new_id = f"{finetune_id}-model"
    with tempfile.TemporaryDirectory() as tmp:
        new.save(Path(tmp) / "model")
        store.put_model(Path(tmp) / "model", model_id=new_id, finetune_id=finetune_id, base_model=s.model_id,
                        n_train=len(train) + len(task))
    missing_set = set(missing)
    doc = FinetuneDoc(
        finetune_id=finetune_id, model_id=s.model_id, new_model_id=new_id, labeller=s.labeller,
        labels=labels_description(s), task=list(s.task), n_task=len(task), n_failed=len(missing),
        failed_keys=[k for h, k in zip(s.task, keys) if h in missing_set], n_train=len(train),
        test_set=report.test_set, task_before=report.task_before, task_after=report.task_after,
        test_before=report.test_before, test_after=report.test_after, forgetting_F_ratio=report.forgetting,
        finished=utcnow(), wall_time=time.time() - t0)
    store.put_finetune(doc)
    log.info("fine-tuning %s: task F RMSE %.4f -> %.4f eV/A (%d labelled, %d failed), forgetting %.3f",
             finetune_id, report.task_before["all"]["F_eV_per_A"], report.task_after["all"]["F_eV_per_A"],
             len(task), len(missing), report.forgetting)
    return doc


# ------------------------------------------------------------------ the NEB example

def _neb(s: NebFinetuneSettings, model, name: str, workdir, images_out=None) -> dict:
    from moire_al.analysis.neb import vacancy_migration
    from moire_al.structures import twisted_bilayer

    pristine = twisted_bilayer(s.material, m=s.m, r=s.r)
    return vacancy_migration(pristine, model.calculator(committee=False), calc_name=f"ACE {name}", **s.neb,
                             plot_path=str(Path(workdir) / "neb_vacancy.png"), images_out=images_out)


def base_model(store: Store, s: NebFinetuneSettings, finetune_id: str):
    """(model, model id, training pairs): the base model fitted on ``s.train_file``'s
    labels (stored first); a rerun loads the stored one."""
    from moire_al.config import resolve_data_path
    from moire_al.conventions import REF_D3
    from moire_al.models import ACEModel

    pairs = store_labelled_file(store, resolve_data_path(s.train_file), finetune_id)
    model_id = f"{finetune_id}-base"
    with tempfile.TemporaryDirectory() as tmp:
        if store.has_model(model_id):
            return ACEModel.load(store.get_model_dir(model_id, tmp)), model_id, pairs
        train = _labelled(store, pairs)
        d3 = all(bool(a.info.get(REF_D3, False)) for a in train)   # replayed DFT: D3 in the labels
        model = ACEModel(**{"seed": s.seed, "d3": d3, **s.model}).fit(train)
        model.save(Path(tmp) / "model")
        store.put_model(Path(tmp) / "model", model_id=model_id, finetune_id=finetune_id, n_train=len(train),
                        material=s.material)
    return model, model_id, pairs


def neb_before(store: Store, s: NebFinetuneSettings, finetune_id: str, workdir) -> FinetuneSettings:
    """Base model, vacancy NEB with it; the images are stored and become the task.
    Returns the settings of the fine-tuning that follows. A rerun reuses the stored
    NEB and images (the labels, the refit and the branch's Fireworks stay valid)."""
    model, model_id, pairs = base_model(store, s, finetune_id)
    done = store.get_finetune(finetune_id)
    if done is not None and done.neb_before and done.task:    # a rerun: the stored NEB and images
        return FinetuneSettings(model_id=model_id, task=done.task, train=pairs, labeller=s.labeller,
                                labeller_settings=s.labeller_settings, finetune_id=finetune_id,
                                name=s.name or f"NEB fine-tuning {finetune_id}")
    images: list = []
    res = _neb(s, model, model_id, workdir, images)
    hashes = store.put_structures(images)
    store.put_analysis({"analysis": "neb_vacancy", "model_id": model_id, "finetune_id": finetune_id,
                        "stage": "before", "material": s.material, "result": res, "error": None,
                        "launch_dir": str(workdir), "created": utcnow()})
    store.put_finetune(FinetuneDoc(finetune_id=finetune_id, model_id=model_id, task=hashes, neb_before=res,
                                   barrier_before=res["barrier"], created=utcnow()))
    log.info("NEB fine-tuning %s: barrier %.3f eV with the base model, %d images to label", finetune_id,
             res["barrier"], len(hashes))
    return neb_before(store, s, finetune_id, workdir)


def neb_after(store: Store, s: NebFinetuneSettings, finetune_id: str, workdir, round_: int = 0) -> FinetuneDoc:
    """The NEB again with the fine-tuned model; barrier before/after, the labels' own
    barrier along the path before (the check of the model before: ``converged``) and the
    after path's images (the next round's task), in the job's document."""
    from moire_al.models import ACEModel

    doc = store.get_finetune(finetune_id)
    if doc is None or not doc.new_model_id:
        from moire_al.errors import NotFoundError

        raise NotFoundError(f"NEB fine-tuning {finetune_id}: no fine-tuned model stored")
    with tempfile.TemporaryDirectory() as tmp:
        model = ACEModel.load(store.get_model_dir(doc.new_model_id, tmp))
    images: list = []
    res = _neb(s, model, doc.new_model_id, workdir, images)
    path_after = store.put_structures(images)
    store.put_analysis({"analysis": "neb_vacancy", "model_id": doc.new_model_id, "finetune_id": finetune_id,
                        "stage": "after", "round": round_, "material": s.material, "result": res, "error": None,
                        "launch_dir": str(workdir), "created": utcnow()})
    _, labelled, missing = _task_labels(store, s.labeller, s.labeller_settings, doc.task)
    barrier_labels = None
    if not missing:   # every image labelled: the labels' barrier along the base model's path
        from moire_al.conventions import REF_ENERGY

        e = [a.info[REF_ENERGY] for a in labelled]
        barrier_labels = float(max(e) - e[0])
    converged = None
    if barrier_labels is not None and doc.barrier_before is not None:
        converged = abs(float(doc.barrier_before) - barrier_labels) <= float(s.barrier_tol)
    upd = FinetuneDoc(finetune_id=finetune_id, neb_after=res, barrier_after=res["barrier"],
                      barrier_labels=barrier_labels, round=round_, path_after=path_after, converged=converged)
    store.put_finetune(upd)
    return store.get_finetune(finetune_id)


def round_id(finetune_id: str, round_: int) -> str:
    """The fine-tuning id of round ``round_`` of the NEB workflow whose round 0 is ``finetune_id``."""
    return finetune_id if round_ == 0 else f"{finetune_id}-r{round_}"


def next_round(store: Store, s: NebFinetuneSettings, doc: FinetuneDoc, done: FinetuneSettings,
               round_: int) -> FinetuneSettings | None:
    """The fine-tuning of round ``round_ + 1`` after ``doc`` (round ``round_``, refitted with
    ``done``), or None when the workflow stops: ``s.rounds`` reached, or the model before
    this round already matched its path's labels (``doc.converged``). Its task is this
    round's after path; its base model this round's new model; its training set the
    previous one + this round's task labels. Its document is stored (the path before =
    this round's after path)."""
    if round_ + 1 >= s.rounds or doc.converged or not doc.path_after or not doc.new_model_id:
        return None
    keys, _, missing = _task_labels(store, s.labeller, s.labeller_settings, done.task)
    unlabelled = set(missing)
    train = [list(p) for p in done.train] + [[h, k] for h, k in zip(done.task, keys) if h not in unlabelled]
    base_id = doc.finetune_id[: -len(f"-r{round_}")] if round_ else doc.finetune_id
    fid = round_id(base_id, round_ + 1)
    nxt = FinetuneSettings(model_id=doc.new_model_id, task=list(doc.path_after), train=train, test=list(done.test),
                           labeller=s.labeller, labeller_settings=s.labeller_settings, chunk_size=done.chunk_size,
                           finetune_id=fid, name=f"{s.name or 'NEB fine-tuning'} (round {round_ + 1})")
    store.put_finetune(FinetuneDoc(finetune_id=fid, model_id=doc.new_model_id, task=list(doc.path_after),
                                   neb_before=doc.neb_after, barrier_before=doc.barrier_after, round=round_ + 1,
                                   created=utcnow()))
    store.put_finetune(FinetuneDoc(finetune_id=doc.finetune_id, next_finetune_id=fid))
    return nxt


# ------------------------------------------------------------------ Firetasks

def _store(task) -> Store:
    from moire_al.workflows.tasks import _store as store_of

    return store_of(task)


@explicit_serialize
class FinetuneTask(FiretaskBase):
    """Refit the base model on its training labels + the task labels that landed."""

    required_params = ["params", "finetune_id"]

    def run_task(self, fw_spec):
        doc = finetune_job(_store(self), FinetuneSettings.from_dict(self["params"]), self["finetune_id"])
        return FWAction(stored_data={"finetune_id": doc.finetune_id, "new_model_id": doc.new_model_id,
                                     "n_task": doc.n_task, "n_failed": doc.n_failed,
                                     "task_F_before": doc.task_before["all"]["F_eV_per_A"],
                                     "task_F_after": doc.task_after["all"]["F_eV_per_A"]})


@explicit_serialize
class NebFinetuneTask(FiretaskBase):
    """Stage ``before`` (base model, NEB, then adds labels + refit + stage ``after``) or
    ``after`` (the NEB with the fine-tuned model)."""

    required_params = ["params", "stage"]
    optional_params = ["finetune_id", "finetune", "round"]

    def run_task(self, fw_spec):
        from moire_al.workflows.builders import finetune_branch, fw_query

        s = NebFinetuneSettings.from_dict(self["params"])
        fid = self.get("finetune_id") or s.finetune_id or f"neb-{s.material}-{getattr(self, 'fw_id', 0)}"
        store = _store(self)
        lp = getattr(self, "launchpad", None)

        def branch(ft: FinetuneSettings, branch_id: str, round_: int, data: dict) -> FWAction:
            if lp is not None and lp.fireworks.count_documents(fw_query(step="finetune", finetune_id=branch_id)):
                return FWAction(stored_data={**data, "branch": "exists"})    # a rerun adds no second branch
            return FWAction(additions=finetune_branch(ft, branch_id, neb=s, round_=round_), stored_data=data)

        if self["stage"] == "after":
            k = int(self.get("round") or 0)
            doc = neb_after(store, s, fid, os.getcwd(), round_=k)
            data = {"finetune_id": fid, "round": k, "barrier_before": doc.barrier_before,
                    "barrier_after": doc.barrier_after, "barrier_labels": doc.barrier_labels,
                    "converged": doc.converged}
            done = self.get("finetune")
            nxt = next_round(store, s, doc, FinetuneSettings.from_dict(done), k) if done else None
            return FWAction(stored_data=data) if nxt is None else branch(nxt, nxt.finetune_id, k + 1, data)
        ft = neb_before(store, s, fid, os.getcwd())
        return branch(ft, fid, 0, {"finetune_id": fid, "n_images": len(ft.task)})
