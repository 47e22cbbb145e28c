"""The documents the store keeps and hands to other modules, one dataclass each.

A :class:`RoundDoc` is written by the loop's fit (``workflows.loop.fit_round``) and read
by ``moire-al status`` and ``report``, the demo, the dashboard and the Firetasks; a
:class:`LoopDoc` is a loop's parameters and state. :meth:`from_dict` accepts what an
older or hand-made document holds: unknown keys are dropped, missing ones are None
(shown as a dash). ``docs/interfaces.md`` lists the same fields (a test keeps them equal).
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field, fields

#: Why a loop stopped (``RoundDoc.stop_reason``; None while it goes on).
STOP_REASONS = ("converged", "pool_exhausted", "max_rounds")


class _Doc:
    """``from_dict`` keeps fields it does not know in ``extra``; ``as_dict`` puts them back."""

    @classmethod
    def from_dict(cls, d: dict):
        d = {k: v for k, v in (d or {}).items() if k != "_id"}
        names = {f.name for f in fields(cls)} - {"extra"}
        return cls(**{k: v for k, v in d.items() if k in names},
                   extra={k: v for k, v in d.items() if k not in names})

    def as_dict(self, exclude=()) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("extra", *exclude)}
        out.update({k: v for k, v in self.extra.items() if k not in exclude and k not in out})
        return out


@dataclass
class RoundDoc(_Doc):
    """One round of a loop: the model fitted on every label selected so far, its errors
    on the held-out test split, the scores of the remaining pool and the next batch."""

    loop_id: str
    round: int                                  # 0-based
    started: _dt.datetime | None = None         # UTC
    finished: _dt.datetime | None = None        # UTC
    wall_time: float | None = None              # s
    n_train: int | None = None                  # labelled structures the model was fitted on
    n_labels: int | None = None                 # labels of the loop so far (test split included)
    n_new: int | None = None                    # labels since the previous round (n_labels difference)
    n_failed: int | None = None                 # selected structures without a label (failed)
    failed_keys: list | None = None             # label keys of unresolved failures
    model_id: str | None = None
    rmse: dict | None = None                    # test split: E_meV_atom, F, F_inplane, F_outofplane (eV/Å)
    n_test: int | None = None                   # labelled test structures
    parity: dict | None = None                  # F_ref, F_pred: <= 3000 test force components (eV/Å)
    n_pool: int | None = None                   # candidates scored
    sigma_f: list | None = None                 # per candidate max_i ‖σ F_i‖, eV/Å (absolute)
    max_sigma_f: float | None = None            # the stopping quantity, eV/Å
    median_sigma_f: float | None = None
    rel_unc: list | None = None                 # per candidate max_i ‖σ F_i‖ / (‖F̄_i‖ + 0.2 eV/Å)
    max_rel_unc: float | None = None
    threshold: float | None = None              # eV/Å, on max_sigma_f
    criterion: str | None = None                # ranking: rel_force_unc or max_force_std
    selected: list | None = None                # structure hashes picked for the next round
    converged: bool | None = None
    stop_reason: str | None = None              # one of STOP_REASONS, or None
    extra: dict = field(default_factory=dict)   # fields a newer writer added (kept, not interpreted)

    @property
    def finished_fit(self) -> bool:
        """Whether the round's fit has written it (a document may be partial)."""
        return self.n_train is not None

    @property
    def rmse_f(self) -> float | None:
        return (self.rmse or {}).get("F")


#: fields too long for tables and the rounds.json of a report
LONG_FIELDS = ("sigma_f", "rel_unc", "parity")


@dataclass
class LoopDoc(_Doc):
    """A loop: its parameters (``LoopSettings.as_dict()``) and where it stands."""

    loop_id: str
    params: dict = field(default_factory=dict)
    material: str | None = None
    state: str | None = None                    # RUNNING or COMPLETED
    created: _dt.datetime | None = None
    stop_reason: str | None = None
    final_model: str | None = None
    final_round: int | None = None
    extra: dict = field(default_factory=dict)   # other fields (shown by the dashboard)



@dataclass
class FinetuneDoc(_Doc):
    """A fine-tuning job run as Fireworks (``moire_al.workflows.finetuning``): the base
    model refitted with its own hyperparameters on its training labels + the labelled
    task structures, and the errors before and after (``rmse_table`` dicts: energies
    meV/atom, forces eV/Å). The NEB workflow adds the barrier before and after."""

    finetune_id: str
    model_id: str | None = None                 # the base model (store id)
    new_model_id: str | None = None             # the refitted model (store id)
    labeller: str | None = None                 # of the task labels
    labels: str | None = None                   # what the task labels are, in words (never "DFT" for a replay)
    task: list | None = None                    # structure hashes of the task
    n_task: int | None = None                   # task structures labelled and fitted
    n_failed: int | None = None                 # task structures without a label (failed)
    failed_keys: list | None = None             # their label keys
    n_train: int | None = None                  # the base model's training structures
    test_set: str | None = None                 # "test" (held-out labels) or "train" (stands in)
    task_before: dict | None = None
    task_after: dict | None = None
    test_before: dict | None = None
    test_after: dict | None = None
    forgetting_F_ratio: float | None = None     # original-set force RMSE after / before
    neb_before: dict | None = None              # NEB workflow: vacancy_migration result, base model
    neb_after: dict | None = None               # ... with the new model
    barrier_before: float | None = None         # eV
    barrier_after: float | None = None          # eV
    barrier_labels: float | None = None         # eV: max label energy − image 0's, on the before path
    round: int | None = None                    # NEB workflow: the round (0: the base model's path)
    path_after: list | None = None              # NEB workflow: structure hashes of the after path's images
    next_finetune_id: str | None = None         # NEB workflow: the round that labels path_after
    converged: bool | None = None               # NEB workflow: |barrier_before − barrier_labels| <= barrier_tol
    created: _dt.datetime | None = None
    finished: _dt.datetime | None = None
    wall_time: float | None = None              # s, of the refit step
    extra: dict = field(default_factory=dict)
