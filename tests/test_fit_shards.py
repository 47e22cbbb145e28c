"""Normal equations in blocks and shards; a fit sharded into Fireworks equals the single-process fit."""

import numpy as np
import pytest

from moire_al.labelling.reference import reference_calculator
from moire_al.models import ACEModel
import synthetic as S
from moire_al.models.blr import NormalEquations

PARAMS = {"order": 2, "totaldegree": 6, "committee_size": 4, "d3": False, "seed": 3}


@pytest.fixture(scope="module")
def data():
    return S.label(S.random_set("graphene", 10, seed=7, n=2, layers=(1, 2), rattle=(0.02, 0.08)),
                   reference_calculator("graphene"), skip_failures=True)


def _close(a: NormalEquations, b: NormalEquations, rtol=1e-12):
    assert a.n_obs == b.n_obs and a.counts == b.counts and a.n_atoms == b.n_atoms
    (A1, b1, y1, l1), (A2, b2, y2, l2) = a.totals(), b.totals()
    np.testing.assert_allclose(A1, A2, rtol=0, atol=rtol * np.abs(A2).max())
    np.testing.assert_allclose(b1, b2, rtol=0, atol=rtol * np.abs(b2).max())
    assert y1 == pytest.approx(y2, rel=rtol)
    assert l1 == pytest.approx(l2, rel=rtol)


def test_blocks_and_shards_sum_to_the_same_normal_equations(data):
    m = ACEModel(**PARAMS)
    m.fit_plan(data)
    whole = m.normal_equations(data)
    assert whole.n_obs == len(data) + sum(3 * len(a) for a in data) + 6 * len(data)
    A = whole.totals()[0]
    np.testing.assert_array_equal(A, A.T)
    _close(m.normal_equations(data, block_rows=1), whole)          # one dsyrk per structure
    # whole blocks dealt to shards in any grouping: the same sums bit for bit (error-free summation)
    blocks = m.fit_blocks(data, 50)
    assert len(blocks) >= 4
    ref = m.normal_equations(data, blocks=blocks)
    for n_shards in (2, 3):
        parts = []
        for k in range(n_shards):
            mine = blocks[k::n_shards]
            sub = [data[i] for a, b in mine for i in range(a, b)]
            local = np.cumsum([0] + [b - a for a, b in mine])
            parts.append(m.normal_equations(sub, blocks=list(zip(local[:-1], local[1:]))))
        for got, want in zip(sum(parts[::-1]).totals(), ref.totals()):
            np.testing.assert_array_equal(got, want)
    back = NormalEquations.from_bytes(whole.to_bytes())
    for got, want in zip(back.totals(), whole.totals()):
        np.testing.assert_array_equal(got, want)
    # the rows themselves: Ψ of one structure stacked by hand
    one = data[:1]
    PsiE, PsiF, PsiS = m.basis_.structure_rows(one[0])
    n = len(one[0])
    rows = np.concatenate([30.0 * np.r_[PsiE, n][None] / n, np.c_[PsiF, np.zeros(len(PsiF))],
                           np.c_[PsiS, np.zeros(6)] * one[0].get_volume() / n])
    from moire_al.geometry import layer_count

    rows *= m.multilayer_weight if layer_count(one[0]) >= 2 else 1.0   # a bilayer's rows: weight 3
    np.testing.assert_allclose(m.normal_equations(one).totals()[0], rows.T @ rows, rtol=0,
                               atol=1e-12 * np.abs(rows.T @ rows).max())


def test_sharded_fireworks_fit_equals_single_process_fit(data, launchpad, tmp_path, monkeypatch):
    from fireworks.core.fworker import FWorker
    from fireworks.core.rocket_launcher import rapidfire

    from moire_al.labelling.reference import ReferenceLabeller
    from moire_al.store.mongo import Store
    from moire_al.workflows.builders import sharded_fit_workflow

    import moire_al.models.ace as ace

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(ace, "BLOCK_ROWS", 50)            # several blocks in this small set
    store = Store.from_launchpad(launchpad)
    hashes = store.put_structures(data)
    lab = ReferenceLabeller()
    keys = []
    for at in data:
        rec = lab.label(at)
        store.put_label(rec.as_dict())
        keys.append(rec.key)
    wf = sharded_fit_workflow(store, "F1", hashes, keys, PARAMS, n_shards=2)
    assert sum(fw.spec["_category"] == "fit" for fw in wf.fws) == 3
    launchpad.add_wf(wf)
    rapidfire(launchpad, FWorker(category="fit"), nlaunches=0, sleep_time=0, max_loops=1)
    states = {fw["name"]: fw["state"] for fw in launchpad.fireworks.find({}, {"name": 1, "state": 1})}
    assert set(states.values()) == {"COMPLETED"}, states
    sharded = ACEModel.load(store.get_model_dir("F1"))
    atoms, _ = store.labelled_atoms(hashes, keys)
    single = ACEModel(**PARAMS).fit(atoms)
    assert sharded.fit_info_["n_rows"] == single.fit_info_["n_rows"]
    assert len(ace.ACEModel.fit_blocks(atoms)) >= 4
    np.testing.assert_allclose(sharded.coef_, single.coef_, rtol=0, atol=1e-10 * np.abs(single.coef_).max())
    np.testing.assert_allclose(sharded.committee_, single.committee_, rtol=0,
                               atol=1e-10 * np.abs(single.committee_).max())
    np.testing.assert_allclose(sharded.E0_, single.E0_, rtol=1e-10)


def test_loop_round_fit_sharded_equals_single_process_fit(launchpad, tmp_path, monkeypatch):
    """LoopSettings.fit_shards = 2: the round's fit runs as 2 shard Fireworks + a reduce, then
    the rest of the round loads that model; it is the single-process fit's model to 1e-10 and
    the round scores the pool with it."""
    from fireworks import FWorker
    from fireworks.core.rocket_launcher import rapidfire

    import moire_al.models.ace as ace
    from moire_al.store.mongo import Store
    from moire_al.workflows import loop
    from moire_al.workflows.builders import hyperactive_loop
    from moire_al.workflows.settings import LoopSettings
    from test_loop import TINY_MODEL, TINY_POOL

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(ace, "BLOCK_ROWS", 50)            # several blocks in this small set
    settings = LoopSettings(material="graphene", pool=TINY_POOL, model=TINY_MODEL, n_initial=6, n_test=2,
                            batch_size=3, max_rounds=1, threshold=1e-9, seed=1, labeller="reference",
                            fit_shards=2)
    launchpad.add_wf(hyperactive_loop(settings, loop_id="S"))
    rapidfire(launchpad, FWorker(category=["dft", "fit"]), nlaunches=0, sleep_time=0, max_loops=1)
    fws = list(launchpad.fireworks.find({}, {"state": 1, "spec._moire": 1}))
    assert {f["state"] for f in fws} == {"COMPLETED"}
    steps = sorted(f["spec"]["_moire"]["step"] for f in fws)
    assert steps.count("fit_shard") == 2 and steps.count("fit_reduce") == 1 and steps.count("fit") == 2
    store = Store.from_launchpad(launchpad)
    (r0,) = store.get_rounds("S")
    assert r0.model_id == loop.round_model_id("S", 0) and r0.n_train == 6 and r0.n_pool > 0
    assert store.models.find_one({"model_id": r0.model_id})["sharded"] == 2
    sharded = ACEModel.load(store.get_model_dir(r0.model_id, tmp_path / "m"))
    hashes, keys = loop.training_labels(store, settings, "S", 0)
    atoms, missing = store.labelled_atoms(hashes, keys)
    assert not missing and len(atoms) == 6
    single = ACEModel(**loop.model_params(settings)).fit(atoms)
    assert len(ace.ACEModel.fit_blocks(atoms)) >= 2
    for a, b in ((sharded.coef_, single.coef_), (sharded.committee_, single.committee_)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-10 * np.abs(b).max())
    np.testing.assert_allclose(sharded.E0_, single.E0_, rtol=1e-10)
    _, sigma = loop.committee_scores(single, store.get_structures(
        store.member_hashes("S", role="pool", selected=False)))
    np.testing.assert_allclose(r0.sigma_f, sigma, rtol=1e-8)
