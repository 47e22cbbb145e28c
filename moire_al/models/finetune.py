"""Fine-tuning a fitted model on a new task (seed 003: NEB images, strained cells, defects).

The task structures are labelled (any labeller), appended to the model's training
set and the model is refitted from scratch with its own hyperparameters (a linear
model with Bayesian regression has no "warm start" to gain from: the normal
equations of the union are the exact posterior). A saved model keeps no training
structures, only their hash (``training_set_hash``), so the training set is passed
in and checked against that hash.

The report holds the error tables (:func:`moire_al.models.metrics.rmse_table`) of
the task and of the original test set, before and after, and the forgetting ratio
(test force RMSE after / before).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from moire_al.errors import ModelError


@dataclass
class FinetuneReport:
    """Errors before and after fine-tuning (rmse_table dicts; energies meV/atom, forces eV/Å)."""

    n_task: int
    n_train: int
    n_failed: int
    test_set: str                 # "test" (a held-out file) or "train" (the original training set)
    task_before: dict
    task_after: dict
    test_before: dict
    test_after: dict

    @property
    def forgetting(self) -> float:
        """Test force RMSE after / before (1: nothing forgotten)."""
        b = self.test_before["all"]["F_eV_per_A"]
        return float(self.test_after["all"]["F_eV_per_A"] / b) if b > 0 else float("nan")

    def as_dict(self) -> dict:
        return {**dataclasses.asdict(self), "forgetting_F_ratio": self.forgetting}

    def text(self) -> str:
        from .metrics import format_table

        return "\n".join([f"task ({self.n_task} structures):", format_table({"before": self.task_before,
                                                                               "after": self.task_after}),
                          f"original {self.test_set} set:", format_table({"before": self.test_before,
                                                                          "after": self.test_after}),
                          f"forgetting: original-{self.test_set} force RMSE after/before = "
                          f"{self.forgetting:.3f}"])


def label_all(labeller, structures, workdir) -> tuple[list, list]:
    """(labelled copies, failures) of ``structures`` with ``labeller`` (run dirs under ``workdir``)."""
    import os

    from moire_al import conventions as conv
    from moire_al.labelling.base import LabelFailure

    done, failed = [], []
    for at in structures:
        result = labeller.label(at, os.path.join(str(workdir), f"{labeller.name}-{conv.structure_hash(at)}"))
        if isinstance(result, LabelFailure):
            failed.append(result)
        else:
            done.append(result.apply_to(at))
    return done, failed


def check_training_set(model, train) -> None:
    from .ace import training_set_hash

    h = training_set_hash(train)
    if getattr(model, "training_hash_", None) and h != model.training_hash_:
        raise ModelError(f"the training set given ({len(train)} structures, hash {h}) is not the one the model "
                         f"was fitted to (hash {model.training_hash_}); pass the model's own training file")


def finetune(model, task, train, test=None, check_train: bool = True):
    """(new model, :class:`FinetuneReport`): refit ``model``'s hyperparameters on
    ``train`` + ``task`` (both labelled); ``test``: the original held-out set (default:
    ``train`` stands in for it)."""
    from .ace import ACEModel
    from .metrics import rmse_table

    task, train = list(task), list(train)
    if not task:
        raise ModelError("fine-tuning: no labelled task structures")
    if check_train:
        check_training_set(model, train)
    test_set = "test" if test else "train"
    test = list(test) if test else train
    task_before, test_before = rmse_table(model, task), rmse_table(model, test)
    new = ACEModel(**model.get_params())
    new.basis_ = model.basis_            # same spec: fit() reuses it
    new.fit(train + task)
    report = FinetuneReport(n_task=len(task), n_train=len(train), n_failed=0, test_set=test_set,
                            task_before=task_before, task_after=rmse_table(new, task),
                            test_before=test_before, test_after=rmse_table(new, test))
    new.fit_report_["finetune"] = report.as_dict()
    return new, report
