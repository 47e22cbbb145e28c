"""A fit sharded across workers: shard Fireworks write partial normal equations, a reduce
Firework sums and solves.

    plan (shard_plan)       fit_plan on all labelled structures: basis, E0
                            (the Fireworks: moire_al.workflows.builders.sharded_fit_workflow)
    FitShardTask × k        (category ``fit``) its structures' ΨᵀWΨ, ΨᵀWy, yᵀWy, n -> GridFS
    FitReduceTask           sums the partials, solves (BLR + committee), stores the model

The science is :meth:`ACEModel.fit_plan`, :meth:`~ACEModel.normal_equations` and
:meth:`~ACEModel.fit_normal_equations` (arrays in, arrays out); this module only moves
them through the job database. Workers of any machine that reach the database take the
shards in parallel (``rlaunch -w fworkers/fit.yaml``).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from fireworks import FiretaskBase, FWAction, explicit_serialize

from moire_al.store.mongo import Store


def _model(params: dict, plan: dict):
    from moire_al.models import ACEModel

    return ACEModel(**params).set_plan(plan)


def fit_shard(store: Store, fit_id: str, shard: int, hashes: list[str], keys: list[str], params: dict,
              plan: dict, blocks: list) -> str:
    """Partial normal equations of one shard's labelled structures (``blocks``: its whole
    blocks of the fit, as ranges of ``hashes``), stored; returns the file id."""
    atoms, missing = store.labelled_atoms(hashes, keys)
    if missing:
        from moire_al.errors import LabelError

        raise LabelError(f"fit shard {shard}: {len(missing)} structures have no label (e.g. {missing[0]})")
    neq = _model(params, plan).normal_equations(atoms, blocks=[tuple(b) for b in blocks])
    return store.put_partial(neq.to_bytes(), fit_id=fit_id, shard=shard, n_structures=len(atoms))


def fit_reduce(store: Store, fit_id: str, file_ids: list[str], hashes: list[str], keys: list[str], params: dict,
               plan: dict, **metadata) -> str:
    """Sum the shards' partials, solve, store the model (``model_id = fit_id``); returns it."""
    from moire_al.models.blr import NormalEquations

    neq = sum(NormalEquations.from_bytes(store.get_partial(f)) for f in sorted(file_ids))
    atoms, _ = store.labelled_atoms(hashes, keys)
    model = _model(params, plan).fit_normal_equations(neq, atoms)
    with tempfile.TemporaryDirectory() as tmp:
        model.save(Path(tmp) / "model")
        return store.put_model(Path(tmp) / "model", model_id=fit_id, n_train=len(atoms), sharded=len(file_ids),
                               **metadata)


def _store(task) -> Store:
    from moire_al.workflows.tasks import _store as store_of

    return store_of(task)


@explicit_serialize
class FitShardTask(FiretaskBase):
    """One shard of a sharded fit: its partial normal equations to GridFS."""

    required_params = ["fit_id", "shard", "hashes", "keys", "params", "plan", "blocks"]

    def run_task(self, fw_spec):
        fid = fit_shard(_store(self), self["fit_id"], self["shard"], self["hashes"], self["keys"],
                        self["params"], self["plan"], self["blocks"])
        return FWAction(mod_spec=[{"_push": {"fit_partials": fid}}], stored_data={"partial": fid})


@explicit_serialize
class FitReduceTask(FiretaskBase):
    """Sum the shards' partials (pushed into the spec by the shards), solve, store the model."""

    required_params = ["fit_id", "hashes", "keys", "params", "plan", "n_shards"]
    optional_params = ["metadata"]        # stored with the model (e.g. loop_id, round, material)

    def run_task(self, fw_spec):
        from moire_al.errors import ModelError

        parts = list(fw_spec.get("fit_partials", []))
        if len(set(parts)) != self["n_shards"]:
            raise ModelError(f"fit {self['fit_id']}: {len(set(parts))} of {self['n_shards']} shard partials arrived")
        mid = fit_reduce(_store(self), self["fit_id"], sorted(set(parts)), self["hashes"], self["keys"],
                         self["params"], self["plan"], **(self.get("metadata") or {}))
        return FWAction(stored_data={"model_id": mid})


def shard_plan(store: Store, fit_id: str, hashes: list[str], keys: list[str], params: dict,
               n_shards: int) -> tuple[dict, list[dict]]:
    """The plan (basis, E0) of a sharded fit and each shard's structures: ``(plan,
    [{"hashes", "keys", "blocks"}] * n_shards)``; the Fireworks are
    :func:`moire_al.workflows.builders.sharded_fit_workflow`."""
    from moire_al.errors import ModelError
    from moire_al.models import ACEModel

    atoms, missing = store.labelled_atoms(hashes, keys)
    if missing:
        raise ModelError(f"sharded fit {fit_id}: {len(missing)} structures have no label")
    if n_shards < 1:
        raise ModelError(f"sharded fit {fit_id}: n_shards must be at least 1, got {n_shards}")
    model = ACEModel(**params)
    plan = model.fit_plan(atoms)
    # whole blocks of the single-process fit, dealt round-robin: the same products, summed exactly
    blocks = model.fit_blocks(atoms)
    shards = []
    for k in range(n_shards):
        mine = blocks[k::n_shards]
        idx = [i for a, b in mine for i in range(a, b)]
        local, at = [], 0
        for a, b in mine:
            local.append([at, at + b - a])
            at += b - a
        shards.append({"hashes": [hashes[i] for i in idx], "keys": [keys[i] for i in idx], "blocks": local})
    return plan, shards
