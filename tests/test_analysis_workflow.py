"""Analyses as Fireworks (category 'analysis'), results stored with the model id."""

from fireworks import FWorker
from fireworks.core.rocket_launcher import rapidfire

from moire_al.store.mongo import Store
from moire_al.workflows.analysis import analysis_workflow


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
