"""Analyses as Fireworks (category 'analysis'), results stored with the model id."""

import pytest
from fireworks import FWorker
from fireworks.core.rocket_launcher import rapidfire

from moire_al.store.mongo import Store
from moire_al.workflows.builders import analysis_workflow


def test_analysis_firework_stores_result_with_model_id(launchpad, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    launchpad.add_wf(analysis_workflow("graphene", model_id="reference", analyses=["binding"], quick=True))
    # A worker of another category leaves it alone.
    rapidfire(launchpad, FWorker(category="dft"), nlaunches=0, max_loops=1)
    assert launchpad.get_fw_ids({"state": "READY"}, count_only=True) == 1
    rapidfire(launchpad, FWorker(category="analysis"), nlaunches=0, max_loops=1)
    assert launchpad.get_fw_ids({"state": "COMPLETED"}, count_only=True) == 1
    doc = Store.from_launchpad(launchpad).db["analyses"].find_one({"analysis": "binding"})
    assert doc["model_id"] == "reference" and doc["error"] is None
    assert doc["result"]["ground_state"] == "AB"  # graphene: Bernal below AA
    eq = doc["result"]["equilibrium"]
    assert 3.2 < eq["AB"]["d_eq"] < eq["AA"]["d_eq"] < 3.8


def test_unknown_model_fizzles_with_clear_message(launchpad, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    launchpad.add_wf(analysis_workflow("graphene", model_id="nope", analyses=["binding"], quick=True))
    rapidfire(launchpad, FWorker(category="analysis"), nlaunches=0, max_loops=1)
    fw = launchpad.get_fw_by_id(launchpad.get_fw_ids()[0])
    assert fw.state == "FIZZLED"
    assert "no model 'nope'" in fw.launches[-1].action.stored_data["_exception"]["_stacktrace"]


def test_polarization_sweep_fireworks_store_points_and_the_sweep(launchpad, tmp_path, monkeypatch):
    """One Firework per angle (relax with the reference potential, relaxed + rigid) and a
    gathering one (allowed to run after fizzled angles) that stores P_max(θ) and draws it."""
    import os

    from moire_al.workflows.builders import polarization_workflow

    monkeypatch.chdir(tmp_path)
    wf = polarization_workflow(ms=(1, 2), options={"min_width": 20.0, "method": "exact",
                                                   "model": {"cutoff": 6.0}})
    assert len(wf.fws) == 3
    launchpad.add_wf(wf)
    rapidfire(launchpad, FWorker(category="analysis"), nlaunches=0, max_loops=1)
    assert launchpad.get_fw_ids({"state": "COMPLETED"}, count_only=True) == 3
    db = Store.from_launchpad(launchpad).db["analyses"]
    points = list(db.find({"analysis": "polarization"}))
    assert sorted(p["m"] for p in points) == [1, 2]
    for p in points:
        assert p["model_id"] == "reference" and p["result"]["converged"]
        assert p["result"]["relaxed"]["P_max_pC_per_m"] > p["result"]["rigid"]["P_max_pC_per_m"] > 0
        assert p["settings"]["method"] == "exact"
    sweep = db.find_one({"analysis": "polarization_sweep"})
    assert [q["theta_deg"] for q in sweep["result"]["points"]] == sorted(p["theta_deg"] for p in points)
    assert os.path.getsize(sweep["result"]["plots"]["P_max"]) > 1000


def test_polarization_workflow_rejects_bad_options():
    import pytest

    from moire_al.errors import MoireALError
    from moire_al.workflows.builders import polarization_workflow

    with pytest.raises(MoireALError, match="cutoff"):
        polarization_workflow(ms=(1,), options={"model": {"cutoff": -1.0}})
    with pytest.raises(MoireALError, match="unknown polarization option"):
        polarization_workflow(ms=(1,), options={"moments": 64})
    with pytest.raises(MoireALError, match="model"):
        polarization_workflow(ms=(1,), options={"model": {"kappa": 1.0}})


def test_md_fireworks_store_results_and_the_temperature_series(launchpad, tmp_path, monkeypatch):
    """One MD Firework per temperature on a stored structure, then D(T); the trajectory
    stays in the launch directory, only its path in the database."""
    import os

    from moire_al import structures
    from moire_al.errors import MoireALError
    from moire_al.workflows.builders import md_workflow

    monkeypatch.chdir(tmp_path)
    store = Store.from_launchpad(launchpad)
    (h,) = store.put_structures([structures.monolayer("graphene", n=3)])
    launchpad.add_wf(md_workflow(h, "graphene", "reference", temperatures=(300, 500), steps=80,
                                 options={"sample_every": 1, "traj_every": 10}))
    rapidfire(launchpad, FWorker(category="analysis"), nlaunches=0, max_loops=1)
    assert launchpad.get_fw_ids({"state": "COMPLETED"}, count_only=True) == 3
    docs = list(store.db["analyses"].find({"analysis": "md"}))
    assert sorted(d["temperature_K"] for d in docs) == [300.0, 500.0]
    for d in docs:
        assert d["stable"] and d["result"]["steps_done"] == 80 and d["model_id"] == "reference"
        traj = d["result"]["files"]["trajectory"]
        assert os.path.dirname(traj) == d["launch_dir"] and os.path.getsize(traj) > 0
        assert "positions" not in d["result"]
    summary = store.db["analyses"].find_one({"analysis": "md_temperatures"})
    assert [p["temperature_K"] for p in summary["result"]["points"]] == [300.0, 500.0]
    assert all("D_inplane" in p for p in summary["result"]["points"])
    with pytest.raises(MoireALError, match="unknown MD option"):
        md_workflow(h, "graphene", options={"temperature_K": 5})
