"""Firetasks of the hyperactive loop: thin wrappers over :mod:`moire_al.workflows.loop`.

Each reads its spec, calls one library function on the store (which shares the
LaunchPad's database), and returns an ``FWAction``. The dynamic steps (init, fit)
add the next branch with ``FWAction(additions=...)`` only if the LaunchPad does
not hold it already, so rerunning a finished step (``lpad rerun_fws``, lost-run
recovery) never duplicates the rest of the loop.
"""

from __future__ import annotations

import os

from fireworks import FiretaskBase, FWAction, explicit_serialize

from moire_al.store.mongo import Store
from moire_al.workflows import loop
from moire_al.workflows.settings import LoopSettings


def _store(task) -> Store:
    lp = getattr(task, "launchpad", None)
    if lp is None:  # run outside a rocket (tests): the configured database
        from moire_al.config import get_launchpad

        lp = get_launchpad()
    return Store.from_launchpad(lp)


def _branch_exists(task, loop_id: str, round_: int) -> bool:
    lp = getattr(task, "launchpad", None)
    if lp is None:
        return False
    from moire_al.workflows.builders import fw_query

    return lp.fireworks.count_documents(fw_query(step="fit", loop_id=loop_id, round_=round_)) > 0


def _next(task, settings: LoopSettings, loop_id: str, round_: int, hashes: list[str]) -> FWAction:
    from moire_al.workflows.builders import round_branch

    if _branch_exists(task, loop_id, round_):
        return FWAction(stored_data={"branch": "exists", "round": round_})
    return FWAction(additions=round_branch(settings, loop_id, round_, hashes),
                    stored_data={"round": round_, "n_label": len(hashes)})


def _sharded_fit(task, settings: LoopSettings, loop_id: str, round_: int) -> FWAction | None:
    """The round's fit as shard Fireworks, a reduce and the rest of the round (a fit Firework
    that loads the reduced model), as a detour; None when there is nothing to shard (no
    labelled training structure: the round's own fit reports it)."""
    from moire_al.workflows.builders import fw_query, sharded_round_workflow

    lp = getattr(task, "launchpad", None)
    if lp is not None and lp.fireworks.count_documents(
            fw_query(step="fit", loop_id=loop_id, round_=round_, fitted=True)) > 0:
        return FWAction(stored_data={"sharded_fit": "exists", "round": round_})
    hashes, keys = loop.training_labels(_store(task), settings, loop_id, round_)
    if not hashes:
        return None
    wf = sharded_round_workflow(_store(task), settings, loop_id, round_, hashes, keys)
    return FWAction(detours=[wf], stored_data={"round": round_, "fit_shards": settings.fit_shards})


@explicit_serialize
class InitLoopTask(FiretaskBase):
    """Make the pool, choose initial + test structures, add round 0."""

    required_params = ["params"]
    optional_params = ["loop_id"]

    def run_task(self, fw_spec):
        settings = LoopSettings.from_dict(self["params"])
        loop_id = self.get("loop_id") or f"{settings.material}-{getattr(self, 'fw_id', 0)}"
        info = loop.init_loop(_store(self), settings, loop_id)
        return _next(self, settings, loop_id, 0, info["initial"] + info["test"])


@explicit_serialize
class LabelTask(FiretaskBase):
    """Label a chunk of structures (skips those already labelled)."""

    required_params = ["loop_id", "round", "hashes", "labeller", "labeller_settings"]

    def run_task(self, fw_spec):
        out = loop.label_structures(_store(self), self["loop_id"], self["round"], self["hashes"],
                                    self["labeller"], self["labeller_settings"], os.getcwd())
        return FWAction(stored_data=out)


@explicit_serialize
class FitRoundTask(FiretaskBase):
    """Fit, test, score the pool, select; add the next round unless the loop stops."""

    required_params = ["loop_id", "round", "params"]
    optional_params = ["fitted"]      # True: the round's sharded fit stored the model

    def run_task(self, fw_spec):
        settings = LoopSettings.from_dict(self["params"])
        r = self["round"]
        if settings.fit_shards > 1 and not self.get("fitted"):
            action = _sharded_fit(self, settings, self["loop_id"], r)
            if action is not None:
                return action
        doc = loop.fit_round(_store(self), settings, self["loop_id"], r, fitted=bool(self.get("fitted")))
        summary = {k: getattr(doc, k) for k in ("round", "n_train", "n_failed", "max_sigma_f", "stop_reason",
                                                 "model_id")}
        if not doc.selected:
            return FWAction(stored_data=summary)
        action = _next(self, settings, self["loop_id"], r + 1, doc.selected)
        action.stored_data.update(summary)
        return action


@explicit_serialize
class ExploreTask(FiretaskBase):
    """Uncertainty-biased MD with the previous round's model; finds join the pool."""

    required_params = ["loop_id", "round", "params"]

    def run_task(self, fw_spec):
        settings = LoopSettings.from_dict(self["params"])
        out = loop.explore_round(_store(self), settings, self["loop_id"], self["round"])
        return FWAction(stored_data={k: out[k] for k in ("round", "n_runs", "n_finds", "new")})
