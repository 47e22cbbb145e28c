"""The hyperactive learning loop as plain functions over a :class:`Store`.

Each function is one step of the loop and is what a Firetask calls; none of them
knows about FireWorks. A round ``r`` is: fit on every labelled structure selected in
rounds ``<= r``, measure errors on the held-out test split, score the rest of the
pool with the committee, and select the most uncertain ``batch_size`` for round
``r + 1``. Candidates are ranked by the committee's relative force uncertainty
max_i ‖σ F_i‖ / (‖F̄_i‖ + 0.2 eV/Å) (or by max_i ‖σ F_i‖, ``criterion``); the loop
stops when the largest max_i ‖σ F_i‖ left in the pool is below the threshold (eV/Å)
(``converged``), when the pool is used up (``pool_exhausted``), or after
``max_rounds`` fits (``max_rounds``).
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import numpy as np

from moire_al.labelling.base import key_of
from moire_al.errors import LabelError, MoireALError
from moire_al.store.documents import RoundDoc
from moire_al.store.mongo import Store, utcnow
from moire_al.workflows.settings import LoopSettings

log = logging.getLogger(__name__)

PARITY_MAX = 3000


# ------------------------------------------------------------------ pure helpers


def split_initial(hashes: list[str], n_initial: int, n_test: int, seed: int) -> tuple[list[str], list[str]]:
    """Random initial training set and held-out test split, disjoint, reproducible."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(hashes))
    n_test = min(n_test, max(len(hashes) - n_initial, 0))
    test = [hashes[i] for i in order[:n_test]]
    initial = [hashes[i] for i in order[n_test:n_test + n_initial]]
    return initial, test


def select_most_uncertain(hashes: list[str], scores: np.ndarray, n: int) -> list[str]:
    """The ``n`` hashes with the largest scores (ties broken by hash for determinism)."""
    order = sorted(range(len(hashes)), key=lambda i: (-float(scores[i]), hashes[i]))
    return [hashes[i] for i in order[:n]]


def committee_scores(model, atoms_list) -> tuple[np.ndarray, np.ndarray]:
    """Per structure, from one committee evaluation each (:meth:`ACEModel.predict`: the
    structures on the basis' threads): (max_i relative force uncertainty
    ‖σ F_i‖ / (‖F̄_i‖ + 0.2 eV/Å), max_i ‖σ F_i‖ in eV/Å)."""
    preds = model.predict(atoms_list, committee=True, stress=False, d3=False)
    return (np.array([p["max_rel_force_unc"] for p in preds], dtype=float),
            np.array([p["max_force_std"] for p in preds], dtype=float))


def force_errors(model, atoms_list) -> dict:
    """RMSE on labelled structures (energy meV/atom; forces eV/Å, all, in-plane, out-of-plane),
    each compared in its label's D3 convention, plus the force components for a parity plot."""
    from moire_al.models.metrics import error_arrays, predict_like_labels, rmse_table

    if not atoms_list:
        return {}
    preds = predict_like_labels(model, atoms_list, committee=False)
    row = rmse_table(model, atoms_list, preds)["all"]
    groups = error_arrays(model, atoms_list, preds).values()
    return {
        "E_meV_atom": row["E_meV_per_atom"], "F": row["F_eV_per_A"],
        "F_inplane": row["F_inplane_eV_per_A"], "F_outofplane": row["F_outofplane_eV_per_A"],
        "_ref": np.concatenate([g["F_ref"] for g in groups]),
        "_pred": np.concatenate([g["F_pred"] for g in groups]),
    }


def labels_include_d3(settings: LoopSettings) -> bool:
    """Whether the loop's labels hold D3(BJ) (DFT, or replayed DFT): then the model adds
    D3 and fits the rest; the reference potential's interlayer terms already bind."""
    labeller = settings.labeller_obj()
    d3 = getattr(labeller, "d3_included", None)  # the reference potential and replayed labels say
    return bool(labeller.settings.get("d3", False) if d3 is None else d3)


def labels_description(settings: LoopSettings) -> str:
    """What the loop's labels are, in words for tables and reports (never calls a replayed
    or classical label DFT run here)."""
    name = settings.labeller
    if name == "reference":
        return "reference potential (KC-full+REBO / ILP+Tersoff in LAMMPS; a classical baseline, not DFT)"
    if name == "dataset":
        import os

        import ase.io

        from moire_al.config import resolve_data_path

        path = resolve_data_path(settings.labeller_settings.get("path", ""))
        try:
            first = ase.io.read(path, 0, format="extxyz")
            source = str(first.info.get("REF_labeller", "unknown")).upper()
        except Exception:  # noqa: BLE001 - a description must not fail a table
            source = "stored"
        return f"replayed {source} labels from {os.path.basename(path)} (computed earlier, not in this run)"
    return {"cp2k": "CP2K PBE+D3(BJ), computed in this run",
            "gpaw": "GPAW PBE+D3(BJ), computed in this run"}.get(name, name)


def model_params(settings: LoopSettings) -> dict:
    """ACEModel hyperparameters of a loop (D3 follows the labels, :func:`labels_include_d3`)."""
    return {"seed": settings.seed, "d3": labels_include_d3(settings), **settings.model}


def make_candidates(settings: LoopSettings) -> list:
    """The loop's candidate pool: generated from its recipe, or read from a file."""
    from moire_al.structures.pool import make_pool, pool_from_file

    if settings.pool_file is not None:
        from moire_al.config import resolve_data_path

        return pool_from_file(resolve_data_path(settings.pool_file), settings.pool.get("layers"))
    return make_pool(settings.material, settings.pool_recipe(), seed=settings.seed)


# ------------------------------------------------------------------ steps


def init_loop(store: Store, settings: LoopSettings, loop_id: str) -> dict:
    """Make the candidate pool, store it, choose the initial and test structures.

    Idempotent: a rerun finds the pool and the choice already stored.
    """
    from moire_al.structures.pool import fixed_test_split

    existing = store.member_hashes(loop_id)
    if existing:
        initial = store.member_hashes(loop_id, role="pool", selected=True, upto_round=0)
        test = store.member_hashes(loop_id, role="test")
        return {"initial": initial, "test": test, "n_pool": len(existing)}
    if settings.pool_file is None:
        settings.pool_recipe()  # a bad recipe fails before anything is stored
    store.put_loop(loop_id, settings.as_dict())
    pool = make_candidates(settings)
    hashes = store.put_structures(pool)
    hashes = list(dict.fromkeys(hashes))  # identical candidates count once
    if settings.pool_file is not None:  # a fixed held-out split, the same for every loop on the file
        test = fixed_test_split(hashes, min(settings.n_test, max(len(hashes) - settings.n_initial, 0)))
        initial, _ = split_initial([h for h in hashes if h not in set(test)], settings.n_initial, 0,
                                   settings.seed)
    else:
        initial, test = split_initial(hashes, settings.n_initial, settings.n_test, settings.seed)
    test_set = set(test)
    store.add_members(loop_id, test, role="test")
    store.add_members(loop_id, [h for h in hashes if h not in test_set], role="pool")
    store.mark_selected(loop_id, initial, 0)
    log.info("loop %s: pool of %d, %d initial, %d test", loop_id, len(hashes), len(initial), len(test))
    return {"initial": initial, "test": test, "n_pool": len(hashes)}


def label_structures(store: Store, loop_id: str, round_: int, hashes: list[str], labeller_name: str,
                     labeller_settings: dict, workdir: str | Path) -> dict:
    """Label structures not labelled yet; store records and failures.

    A structure whose label key is already stored is skipped, so a rerun (after a
    crash, a lost run or ``moire-al resume``) never labels anything twice. Raises
    :class:`LabelError` after trying every structure if any failed, so the Firework
    fizzles and only the failures are rerun later.
    """
    from moire_al.labelling import LabelFailure, get_labeller

    labeller = get_labeller(labeller_name, labeller_settings)
    done, skipped, failed = [], [], []
    for h, atoms in zip(hashes, store.get_structures(hashes)):
        key = key_of(labeller, atoms)
        if store.get_label(key) is not None:
            skipped.append(h)
            continue
        store.count_label_run(loop_id, h)
        try:
            result = labeller.label(atoms, str(workdir))
        except MoireALError as exc:  # bad structure, missing code, a crash the labeller reports
            result = None
            failure = {"key": key, "structure_hash": h, "labeller": labeller.name,
                       "settings": labeller.settings, "error_type": type(exc).__name__, "message": str(exc)}
        if isinstance(result, LabelFailure):
            failure = result.as_dict()
        if result is None or isinstance(result, LabelFailure):
            store.put_failure(failure, loop_id=loop_id, round=round_, resolved=False)
            failed.append((h, failure.get("message", "")))
            continue
        store.put_label(result.as_dict(), loop_id=loop_id, round=round_)
        store.resolve_failures(key)
        done.append(h)
    if failed:
        msgs = "; ".join(f"{h}: {m}" for h, m in failed)
        raise LabelError(f"{len(failed)} of {len(hashes)} structures failed to label: {msgs}")
    return {"labelled": done, "skipped": skipped}


def _label_keys(store: Store, settings: LoopSettings, hashes: list[str]) -> list[str]:
    from moire_al.labelling import get_labeller

    labeller = get_labeller(settings.labeller, settings.labeller_settings)
    return [key_of(labeller, a) for a in store.get_structures(hashes)]


def _training_and_test(store: Store, settings: LoopSettings, loop_id: str, round_: int):
    def labelled(hashes):
        return store.labelled_atoms(hashes, _label_keys(store, settings, hashes))

    train, missing = labelled(store.member_hashes(loop_id, role="pool", selected=True, upto_round=round_))
    test, _ = labelled(store.member_hashes(loop_id, role="test"))
    return train, missing, test


def training_labels(store: Store, settings: LoopSettings, loop_id: str, round_: int) -> tuple[list, list]:
    """(hashes, label keys) of round ``round_``'s labelled training structures, in the order
    :func:`fit_round` fits them (the shards of a sharded round fit take these)."""
    hashes = store.member_hashes(loop_id, role="pool", selected=True, upto_round=round_)
    keys = _label_keys(store, settings, hashes)
    have = store.label_keys_present(keys)
    pairs = [(h, k) for h, k in zip(hashes, keys) if k in have]
    return [h for h, _ in pairs], [k for _, k in pairs]


def round_model_id(loop_id: str, round_: int) -> str:
    return f"{loop_id}-r{round_}"


def fit_round(store: Store, settings: LoopSettings, loop_id: str, round_: int, fitted: bool = False) -> RoundDoc:
    """Fit, test, score the remaining pool, select the next batch; store the round.

    ``fitted``: the round's model is already in the store (a sharded fit's reduce stored
    it as :func:`round_model_id`), so it is loaded, not fitted. Returns the round document.
    On a rerun of a round whose next batch was already chosen, the stored selection is
    kept (the branch that labels it may exist).
    """
    from moire_al.models import ACEModel

    t0 = time.time()
    started = utcnow()
    train, missing, test = _training_and_test(store, settings, loop_id, round_)
    if not train:
        raise LabelError(f"round {round_}: no labelled training structures (all {len(missing)} failed)")
    model_id = round_model_id(loop_id, round_)
    if fitted:
        with tempfile.TemporaryDirectory() as tmp:
            model = ACEModel.load(store.get_model_dir(model_id, Path(tmp)))
    else:
        model = ACEModel(**model_params(settings)).fit(train)
        with tempfile.TemporaryDirectory() as tmp:
            model.save(Path(tmp) / "model")
            store.put_model(Path(tmp) / "model", model_id=model_id, loop_id=loop_id, round=round_,
                            n_train=len(train), material=settings.material)
    errors = force_errors(model, test)
    ref, pred = errors.pop("_ref", np.zeros(0)), errors.pop("_pred", np.zeros(0))
    if len(ref) > PARITY_MAX:
        idx = np.random.default_rng(round_).choice(len(ref), PARITY_MAX, replace=False)
        ref, pred = ref[idx], pred[idx]

    candidates = store.member_hashes(loop_id, role="pool", selected=False)
    rel, sigma = committee_scores(model, store.get_structures(candidates))
    ranking = rel if settings.criterion == "rel_force_unc" else sigma
    max_s = float(sigma.max()) if len(sigma) else 0.0
    exhausted = len(sigma) == 0
    converged = not exhausted and max_s < settings.threshold
    last = round_ + 1 >= settings.max_rounds
    previous = store.get_round(loop_id, round_)
    if converged or exhausted or last:
        selected = []
    elif previous is not None and previous.selected is not None:
        selected = previous.selected
    else:
        selected = select_most_uncertain(candidates, ranking, settings.batch_size)
    failures = store.unresolved_failures(loop_id)
    n_labels = store.count_labels(loop_id)  # n_new: labels since the previous round (a refit's too)
    before = store.get_round(loop_id, round_ - 1)
    doc = RoundDoc(
        loop_id=loop_id, round=round_,
        started=previous.started if previous is not None and previous.started else started,
        finished=utcnow(), wall_time=time.time() - t0,
        n_train=len(train), n_labels=n_labels,
        n_new=n_labels - int(before.n_labels or 0 if before is not None else 0),
        n_failed=len(missing), failed_keys=[f["key"] for f in failures],
        model_id=model_id, rmse=errors, n_test=len(test),
        parity={"F_ref": ref.tolist(), "F_pred": pred.tolist()},
        n_pool=len(candidates), sigma_f=sigma.tolist(), max_sigma_f=max_s,
        median_sigma_f=float(np.median(sigma)) if len(sigma) else 0.0,
        rel_unc=rel.tolist(), max_rel_unc=float(rel.max()) if len(rel) else 0.0,
        threshold=settings.threshold, criterion=settings.criterion,
        selected=selected, converged=bool(converged),
        stop_reason=("converged" if converged else "pool_exhausted" if exhausted
                     else "max_rounds" if last else None),
    )
    store.put_round(doc)
    if selected:
        store.mark_selected(loop_id, selected, round_ + 1)
    else:
        store.set_loop_state(loop_id, "COMPLETED", stop_reason=doc.stop_reason, final_model=model_id,
                             final_round=round_)
    log.info("loop %s round %d: n_train %d, F RMSE %s, max sigma %.4g, %s", loop_id, round_, len(train),
             errors.get("F"), max_s, doc.stop_reason or f"selected {len(selected)}")
    return doc


def explore_starts(store: Store, loop_id: str, round_: int, n: int) -> list:
    """Up to ``n`` start structures for round ``round_``'s exploration: the training
    structures (selected in rounds < ``round_``), one per pool family in turn (hash
    order within a family), so the starts span the pool's families."""
    hashes = store.member_hashes(loop_id, role="pool", selected=True, upto_round=round_ - 1)
    atoms = store.get_structures(hashes)
    families: dict = {}
    for a in atoms:
        families.setdefault(str(a.info.get("pool_family", a.info.get("generator", "?"))), []).append(a)
    out, k = [], 0
    while len(out) < n and any(k < len(v) for v in families.values()):
        for fam in sorted(families):
            if k < len(families[fam]) and len(out) < n:
                out.append(families[fam][k])
        k += 1
    return out


def explore_round(store: Store, settings: LoopSettings, loop_id: str, round_: int) -> dict:
    """Uncertainty-biased MD with round ``round_ - 1``'s model; the finds are stored
    (once: by structure hash) and join the loop's pool as unselected candidates, so
    round ``round_``'s fit scores them with the rest. Idempotent (a rerun adds nothing)."""
    from moire_al.analysis.explore import explore
    from moire_al.models import ACEModel

    if round_ < 1:
        raise MoireALError("the explore step needs the model of a previous round (round >= 1)")
    n_starts, es = settings.explore_settings(round_)
    with tempfile.TemporaryDirectory() as tmp:
        model = ACEModel.load(store.get_model_dir(f"{loop_id}-r{round_ - 1}", tmp))
    starts = explore_starts(store, loop_id, round_, n_starts)
    runs = explore(model, starts, es)
    finds = [r.structure for r in runs if r.triggered]
    for f in finds:
        f.info["explore_round"] = round_
    known = set(store.member_hashes(loop_id))
    hashes = list(dict.fromkeys(store.put_structures(finds)))
    new = [h for h in hashes if h not in known]
    store.add_members(loop_id, new, role="pool")
    log.info("loop %s round %d explore: %d runs, %d finds, %d new candidates", loop_id, round_, len(runs),
             len(finds), len(new))
    return {"round": round_, "n_runs": len(runs), "n_finds": len(finds), "finds": hashes, "new": new,
            "runs": [{k: v for k, v in r.as_dict().items() if not k.endswith("_trace")} for r in runs]}
