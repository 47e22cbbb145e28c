"""The hyperactive loop through FireWorks on the real job database server.

Labels come from the reference potential (fast, not DFT); the model is the real
ACE + BLR committee with a small basis. Fault tests: a failing label, a worker
killed mid-label, the database restarted between rounds, a finished step rerun,
a bad parameter.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import faulty_labeller
import pytest
import yaml
from fireworks import FWorker, Workflow
from fireworks.core.rocket_launcher import launch_rocket, rapidfire

from moire_al.store.mongo import Store
from moire_al.workflows.builders import (
    READY_LOOPS, hyperactive_loop, ready_workflows, workflow_file_dict, workflow_files_dir,
)
from moire_al.workflows.manage import resume, status_table
from moire_al.workflows.settings import LoopSettings, SettingsError

WORKER = FWorker(name="test", category=["dft", "fit", "analysis"])
FAIL_ENV = faulty_labeller.FAIL_ON_ENV
SLEEP_ENV = faulty_labeller.SLEEP_ENV

# About 17 candidates of <= 56 atoms: rattled 1x1/2x2 monolayers, locally twisted
# bilayers in the 28-atom 21.79° and untwisted 2x2 cells, two trilayers.
TINY_POOL = {
    "monolayer_sizes": [1, 2], "n_rattled_per_size": 5, "n_local_angles": 3,
    "bilayer_cells": [[1, 1]], "bilayer_supercell": 2, "max_shifts_per_angle": 2,
    "zero_angle_grid": 1, "n_trilayers": 2, "n_quadrilayers": 0, "n_pentalayers": 0,
    "multilayer_cells": [[1, 1]], "multilayer_supercell": None,
}
TINY_MODEL = {"order": 2, "totaldegree": 6, "rcut": 5.0, "committee_size": 8}


def tiny_settings(**kw) -> LoopSettings:
    base = dict(material="graphene", pool=TINY_POOL, model=TINY_MODEL, n_initial=4, n_test=3,
                batch_size=3, max_rounds=3, threshold=1e-9, seed=1, labeller=faulty_labeller.NAME)
    return LoopSettings(**{**base, **kw})


def add_loop(lp, settings, loop_id="L") -> int:
    ids = lp.add_wf(hyperactive_loop(settings, loop_id=loop_id))
    return min(ids.values())


def run_all(lp):
    rapidfire(lp, WORKER, nlaunches=0, sleep_time=0, max_loops=1)


def fit_fws(lp, loop_id="L"):
    return list(lp.fireworks.find({"spec._moire.loop_id": loop_id, "spec._moire.step": "fit"},
                                  {"fw_id": 1, "state": 1, "spec._moire.round": 1}))


def assert_labelled_once(store, loop_id="L"):
    """Every selected or test structure has exactly one label and was labelled once."""
    members = list(store.members.find({"loop_id": loop_id,
                                       "$or": [{"selected_round": {"$ne": None}}, {"role": "test"}]}))
    assert members
    for m in members:
        assert m.get("label_runs", 0) >= 1, m
    n_labels = store.labels.count_documents({"loop_id": loop_id})
    assert n_labels == len(members)
    assert len(store.labels.distinct("key", {"loop_id": loop_id})) == n_labels
    return members


# ---------------------------------------------------------------- parameters and files


def test_unknown_parameter_is_named():
    with pytest.raises(SettingsError, match="batch_sise"):
        LoopSettings.from_dict({"batch_sise": 5})
    with pytest.raises(SettingsError, match="'threshold'"):
        LoopSettings(threshold=-1)


def test_yaml_workflow_files_agree_with_builder():
    ready = ready_workflows()
    assert set(READY_LOOPS) < set(ready)
    assert {p.stem for p in workflow_files_dir().glob("*.yaml")} == set(ready)
    for stem, wf in ready.items():
        path = workflow_files_dir() / f"{stem}.yaml"
        assert yaml.safe_load(path.read_text()) == workflow_file_dict(wf), \
            f"{path} differs from the builder: run moire_al.workflows.builders.write_workflow_files()"


def test_bad_parameter_fizzles_first_firework_naming_it(launchpad, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    d = workflow_file_dict(hyperactive_loop(tiny_settings()))
    d["fws"][0]["spec"]["_tasks"][0]["params"]["batch_sise"] = 5
    wf_id = min(launchpad.add_wf(Workflow.from_dict(d)).values())
    launch_rocket(launchpad, WORKER)
    fw = launchpad.get_fw_by_id(wf_id)
    assert fw.state == "FIZZLED"
    trace = fw.launches[-1].action.stored_data["_exception"]["_stacktrace"]
    assert "batch_sise" in trace


def test_loop_add_cli_rejects_bad_yaml(tmp_path, launchpad_file, bin_dir):
    d = workflow_file_dict(hyperactive_loop(tiny_settings()))
    d["fws"][0]["spec"]["_tasks"][0]["params"]["threshhold"] = 0.1
    f = tmp_path / "bad.yaml"
    f.write_text(yaml.safe_dump(d))
    r = subprocess.run([str(bin_dir / "moire-al"), "loop", str(f), "-l", str(launchpad_file)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "threshhold" in r.stderr


# ---------------------------------------------------------------- the loop


def test_loop_runs_rounds_and_labels_each_structure_once(launchpad, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = tiny_settings()
    add_loop(launchpad, settings)
    run_all(launchpad)
    store = Store.from_launchpad(launchpad)
    rounds = store.get_rounds("L")
    assert [r.round for r in rounds] == [0, 1, 2]
    assert [r.n_train for r in rounds] == [4, 7, 10]
    for r in rounds:
        assert r.n_failed == 0 and r.n_test == 3
        assert 0 < r.rmse["F"] < 5 and r.rmse["E_meV_atom"] >= 0
        assert r.max_sigma_f >= r.median_sigma_f > 0
        assert len(r.sigma_f) == r.n_pool
        assert len(r.parity["F_ref"]) == len(r.parity["F_pred"]) > 0
    # The batch chosen in round r is what round r+1 trained on, and it was the most uncertain.
    assert len(rounds[0].selected) == 3 and rounds[-1].selected == []
    assert rounds[-1].stop_reason == "max_rounds" and rounds[-1].n_pool > 0
    # The batch is the top of the relative-uncertainty ranking; the stopping quantity
    # (max force std, eV/Å) is what sigma_f holds.
    r0 = rounds[0]
    pool0 = sorted(zip(r0.rel_unc, range(len(r0.rel_unc))), reverse=True)
    assert min(u for u, _ in pool0[:3]) >= max((u for u, _ in pool0[3:]), default=0)
    assert r0.max_sigma_f == max(r0.sigma_f) and len(r0.rel_unc) == r0.n_pool
    assert store.loops.find_one({"loop_id": "L"})["state"] == "COMPLETED"
    members = assert_labelled_once(store)
    assert all(m["label_runs"] == 1 for m in members)
    assert len(members) == 10 + 3
    assert {d["state"] for d in launchpad.fireworks.find({})} == {"COMPLETED"}
    assert "max_rounds" in status_table(store, "L")
    # Models of every round are in GridFS and load in this process.
    from moire_al.models import ACEModel

    model = ACEModel.load(store.get_model_dir(rounds[-1].model_id, tmp_path / "m"))
    assert model.score(store.get_structures(store.member_hashes("L", role="test"))).shape == (3,)


def test_stops_when_pool_is_used_up(launchpad, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    add_loop(launchpad, tiny_settings(batch_size=50, max_rounds=5))
    run_all(launchpad)
    rounds = Store.from_launchpad(launchpad).get_rounds("L")
    assert [r.stop_reason for r in rounds] == [None, "pool_exhausted"]
    assert rounds[1].n_pool == 0 and not rounds[1].converged


def test_converges_when_threshold_reached(launchpad, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    add_loop(launchpad, tiny_settings(threshold=1e6, max_rounds=5))
    run_all(launchpad)
    rounds = Store.from_launchpad(launchpad).get_rounds("L")
    assert len(rounds) == 1 and rounds[0].converged and rounds[0].stop_reason == "converged"


def test_failed_label_fizzles_alone_and_resume_lands_it_once(launchpad, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    add_loop(launchpad, tiny_settings(max_rounds=2))
    launch_rocket(launchpad, WORKER)  # init: pool + initial selection
    store = Store.from_launchpad(launchpad)
    victim = store.member_hashes("L", role="pool", selected=True, upto_round=0)[0]
    monkeypatch.setenv(FAIL_ENV, victim)
    run_all(launchpad)
    fizzled = launchpad.get_fw_ids({"state": "FIZZLED"})
    assert len(fizzled) == 1
    assert launchpad.get_fw_by_id(fizzled[0]).spec["_tasks"][0]["hashes"] == [victim]
    rounds = store.get_rounds("L")
    assert [r.n_failed for r in rounds] == [1, 1] and rounds[0].n_train == 3
    assert len(rounds[0].failed_keys) == 1 and rounds[0].failed_keys[0].startswith(victim)
    assert store.loops.find_one({"loop_id": "L"})["state"] == "COMPLETED"
    n_completed = launchpad.get_fw_ids({"state": "COMPLETED"}, count_only=True)

    monkeypatch.delenv(FAIL_ENV)
    out = resume(launchpad, "L")
    assert out["rerun"] == fizzled and out["refit_loops"] == ["L"]
    # Only the fizzled Firework was rerun: nothing that completed was reset.
    assert launchpad.get_fw_ids({"state": "COMPLETED"}, count_only=True) == n_completed
    run_all(launchpad)
    assert launchpad.get_fw_ids({"state": "FIZZLED"}) == []
    members = assert_labelled_once(store)
    runs = {m["hash"]: m["label_runs"] for m in members}
    assert runs[victim] == 2 and all(v == 1 for h, v in runs.items() if h != victim)
    final = store.get_rounds("L")[-1]
    assert final.round == 2 and final.n_failed == 0
    assert final.n_train == rounds[-1].n_train + 1  # the refit picked the label up
    assert final.n_new == 1  # ... and counts it as new
    assert store.failures.find_one({"key": rounds[0].failed_keys[0]})["resolved"] is True


def test_worker_killed_mid_label_is_recovered_without_duplicates(launchpad, launchpad_file, tmp_path,
                                                                 monkeypatch, bin_dir):
    monkeypatch.chdir(tmp_path)
    add_loop(launchpad, tiny_settings(max_rounds=1))
    launch_rocket(launchpad, WORKER)  # init
    fworker = tmp_path / "fw.yaml"
    fworker.write_text(yaml.safe_dump({"name": "victim", "category": "dft", "query": "{}"}))
    proc = subprocess.Popen([str(bin_dir / "rlaunch"), "-l", str(launchpad_file), "-w", str(fworker), "singleshot"],
                            cwd=tmp_path, env={**os.environ, SLEEP_ENV: "60"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 60
        while not launchpad.get_fw_ids({"state": "RUNNING"}) and time.time() < deadline:
            time.sleep(0.2)
        running = launchpad.get_fw_ids({"state": "RUNNING"})
        assert len(running) == 1
        time.sleep(1.0)  # inside the labeller's sleep
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert launchpad.get_fw_by_id(running[0]).state == "RUNNING"  # nobody told the database
    lost_launches, lost_fws, _ = launchpad.detect_lostruns(expiration_secs=0, rerun=True)
    assert lost_fws == running
    run_all(launchpad)
    store = Store.from_launchpad(launchpad)
    assert {d["state"] for d in launchpad.fireworks.find({})} == {"COMPLETED"}
    assert_labelled_once(store)
    assert store.get_rounds("L")[-1].n_train == 4


def test_loop_continues_after_database_restart(launchpad, db_server, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    add_loop(launchpad, tiny_settings(max_rounds=2))
    store = Store.from_launchpad(launchpad)
    while not store.get_rounds("L") or not store.get_rounds("L")[0].finished_fit:
        assert launch_rocket(launchpad, WORKER)
    db_server.restart()
    run_all(launchpad)
    rounds = store.get_rounds("L")
    assert [r.round for r in rounds] == [0, 1] and rounds[-1].stop_reason == "max_rounds"
    assert_labelled_once(store)


def test_rerun_of_finished_fit_does_not_duplicate_branch(launchpad, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    add_loop(launchpad, tiny_settings(max_rounds=2))
    run_all(launchpad)
    n_fws = launchpad.fireworks.count_documents({})
    store = Store.from_launchpad(launchpad)
    labels_before = store.labels.count_documents({})
    fit0 = [d["fw_id"] for d in fit_fws(launchpad) if d["spec"]["_moire"]["round"] == 0]
    launchpad.rerun_fw(fit0[0])  # as `lpad rerun_fws -i <id>` does: reruns its descendants too
    run_all(launchpad)
    assert launchpad.fireworks.count_documents({}) == n_fws
    assert sorted(d["spec"]["_moire"]["round"] for d in fit_fws(launchpad)) == [0, 1]
    assert {d["state"] for d in launchpad.fireworks.find({})} == {"COMPLETED"}
    assert store.labels.count_documents({}) == labels_before
    members = assert_labelled_once(store)
    assert all(m["label_runs"] == 1 for m in members)
    # The refitted models replaced their files: no orphaned tar.gz in GridFS.
    files = list(store.db["model_files.files"].find({}, {"metadata.model_id": 1}))
    assert sorted(f["metadata"]["model_id"] for f in files) == ["L-r0", "L-r1"]
    assert {m["file_id"] for m in store.models.find({})} == {f["_id"] for f in files}


def test_resume_after_whole_round_failed_refits_and_finishes(launchpad, tmp_path, monkeypatch):
    """Every label of round 0 fizzles, so the fit fizzles too; resume must rerun both."""
    monkeypatch.chdir(tmp_path)
    add_loop(launchpad, tiny_settings(max_rounds=1))
    monkeypatch.setenv(FAIL_ENV, "*")
    run_all(launchpad)
    store = Store.from_launchpad(launchpad)
    assert [d["state"] for d in fit_fws(launchpad)] == ["FIZZLED"]
    assert store.labels.count_documents({"loop_id": "L"}) == 0
    assert store.loops.find_one({"loop_id": "L"})["state"] == "RUNNING"

    monkeypatch.delenv(FAIL_ENV)
    out = resume(launchpad, "L")
    assert len(out["rerun"]) == 4 + 3
    run_all(launchpad)
    assert {d["state"] for d in launchpad.fireworks.find({})} == {"COMPLETED"}
    assert [d["state"] for d in fit_fws(launchpad)] == ["COMPLETED"]
    rounds = store.get_rounds("L")
    assert [r.round for r in rounds] == [0] and rounds[0].n_train == 4
    assert rounds[0].n_failed == 0 and rounds[0].n_new == 4 + 3
    assert store.loops.find_one({"loop_id": "L"})["state"] == "COMPLETED"
    assert_labelled_once(store)


def test_worker_rides_out_database_outage_longer_than_ten_seconds(launchpad, db_server, tmp_path,
                                                                   monkeypatch, bin_dir):
    """The server is SIGKILLed while a worker labels and stays away 15 s: the worker
    waits (saying so), the label lands once, the Firework completes, no traceback."""
    from moire_al import config

    monkeypatch.chdir(tmp_path)
    add_loop(launchpad, tiny_settings(max_rounds=1))
    launch_rocket(launchpad, WORKER)  # init
    lp_file = tmp_path / "launchpad.yaml"  # what users get (launchpad.yaml, the demo's file)
    lp_file.write_text(yaml.safe_dump(config.launchpad_dict(db_server.uri, launchpad.name)))
    repo_lp = yaml.safe_load((workflow_files_dir().parent / "launchpad.yaml").read_text())
    assert repo_lp["mongoclient_kwargs"] == \
        config.launchpad_dict(wait_s=config.DEFAULT_DB_WAIT_S)["mongoclient_kwargs"]
    fworker = tmp_path / "fw.yaml"
    fworker.write_text(yaml.safe_dump({"name": "patient", "category": "dft", "query": "{}"}))
    proc = subprocess.Popen([str(bin_dir / "rlaunch"), "-l", str(lp_file), "-w", str(fworker), "singleshot"],
                            cwd=tmp_path, env={**os.environ, SLEEP_ENV: "4"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        store = Store.from_launchpad(launchpad)
        deadline = time.time() + 60
        # label_runs is counted just before the labeller starts (and sleeps 4 s)
        while not store.members.find_one({"label_runs": 1}) and time.time() < deadline:
            time.sleep(0.1)
        running = launchpad.get_fw_ids({"state": "RUNNING"})
        assert len(running) == 1
        db_server.kill()  # inside the labeller's sleep: the label is written while the server is away
        time.sleep(15)
        db_server.start()
        out, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, out
    assert "Traceback" not in out, out
    assert "job database unreachable" in out, out
    assert launchpad.get_fw_by_id(running[0]).state == "COMPLETED"
    h = launchpad.get_fw_by_id(running[0]).spec["_tasks"][0]["hashes"][0]
    assert store.labels.count_documents({"structure_hash": h}) == 1


@pytest.mark.parametrize("key, value, named", [
    ("labeller_settings", {"bogus": 1}, "bogus"),
    ("model", {"bogus": 1}, "bogus"),
    ("model", {"order": "three"}, "order"),
    ("pool", {"bogus": 1}, "bogus"),
    ("n_test", True, "True"),
    ("threshold", True, "True"),
])
def test_bad_nested_parameter_is_named(key, value, named):
    with pytest.raises(SettingsError, match=f"'{key}'.*{named}"):
        LoopSettings.from_dict({key: value})


def test_loop_add_cli_rejects_bad_nested_parameters_before_storing_anything(launchpad, launchpad_file,
                                                                            tmp_path, bin_dir):
    d = workflow_file_dict(hyperactive_loop(tiny_settings()))
    d["fws"][0]["spec"]["_tasks"][0]["params"]["labeller_settings"] = {"bogus": 1}
    f = tmp_path / "bad.yaml"
    f.write_text(yaml.safe_dump(d))
    for args in ([str(f)], ["--set", 'pool={"bogus": 1}'], ["--set", 'model={"bogus": 1}']):
        r = subprocess.run([str(bin_dir / "moire-al"), "loop", *args, "-l", str(launchpad_file)],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 1 and "bogus" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert launchpad.fireworks.count_documents({}) == 0


def test_bad_pool_added_with_lpad_fizzles_init_and_stores_no_loop(launchpad, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    d = workflow_file_dict(hyperactive_loop(tiny_settings()))
    d["fws"][0]["spec"]["_tasks"][0]["params"]["pool"] = {"bogus": 1}
    wf_id = min(launchpad.add_wf(Workflow.from_dict(d)).values())
    launch_rocket(launchpad, WORKER)
    assert launchpad.get_fw_by_id(wf_id).state == "FIZZLED"
    store = Store.from_launchpad(launchpad)
    assert store.loops.count_documents({}) == 0 and store.members.count_documents({}) == 0
    # `moire-al status` shows the fizzled init and why, instead of "no loops"
    from moire_al.workflows.manage import init_problems

    (problem,) = init_problems(launchpad)
    assert problem["fw_id"] == wf_id and problem["state"] == "FIZZLED" and "bogus" in problem["error"]


def test_status_resume_report_of_unknown_loop_fail(launchpad, launchpad_file, tmp_path, capsys):
    from moire_al.cli import main

    add_loop(launchpad, tiny_settings())
    for argv in (["status", "--loop", "nope"], ["resume", "--loop", "nope"], ["report", "nope"]):
        capsys.readouterr()
        assert main([*argv, "-l", str(launchpad_file)]) == 1, argv
        err = capsys.readouterr().err
        assert "nope" in err and "\n" not in err.strip(), err
    capsys.readouterr()
    assert main(["status", "-l", str(launchpad_file)]) == 0
    out = capsys.readouterr().out
    assert "not started" in out and "READY" in out, out  # the init Firework waits for a worker


# ---------------------------------------------------------------- the loop on DFT labels


def _dft_slice(tmp_path, n=16):
    """A small labelled file: every 4th structure of the committed CP2K graphene set."""
    from pathlib import Path

    import ase.io

    src = Path(__file__).resolve().parent.parent / "data" / "dft" / "graphene.extxyz"
    images = [a for a in ase.io.read(src, ":", format="extxyz") if len(a) <= 40][::4][:n]
    path = tmp_path / "dft.extxyz"
    ase.io.write(path, images, format="extxyz")
    return path, images


def test_loop_on_replayed_dft_labels(launchpad, tmp_path, monkeypatch):
    """A pool read from a labelled file, labelled by replay: labels keep the CP2K name and key,
    say they were replayed, and the held-out split is the file's fixed one."""
    from moire_al import conventions as conv
    from moire_al.structures.pool import fixed_test_split

    monkeypatch.chdir(tmp_path)
    path, images = _dft_slice(tmp_path)
    settings = tiny_settings(pool={"file": str(path)}, labeller="dataset",
                             labeller_settings={"path": str(path)}, max_rounds=2)
    add_loop(launchpad, settings)
    run_all(launchpad)
    store = Store.from_launchpad(launchpad)
    rounds = store.get_rounds("L")
    assert [r.n_train for r in rounds] == [4, 7]
    assert all(0 < r.rmse["F"] < 5 for r in rounds)
    hashes = [conv.structure_hash(a) for a in images]
    assert set(store.member_hashes("L", role="test")) == set(fixed_test_split(hashes, 3))
    by_hash = {conv.structure_hash(a): a for a in images}
    labels = list(store.labels.find({"loop_id": "L"}))
    assert len(labels) == 4 + 3 + 3
    for lab in labels:
        src = by_hash[lab["structure_hash"]]
        assert lab["labeller"] == "cp2k" and lab["replayed_from"] == str(path)
        assert lab["key"] == src.info["label_key"] and lab["energy"] == src.info["REF_energy"]
    assert store.loops.find_one({"loop_id": "L"})["state"] == "COMPLETED"
    table = status_table(store, "L")
    assert "replayed CP2K labels from dft.extxyz" in table and "not in this run" in table


def test_pool_file_parameters_are_checked_before_anything_runs(tmp_path):
    with pytest.raises(SettingsError, match="'pool'.*takes only"):
        LoopSettings(pool={"file": "x.extxyz", "seed": 3})
    with pytest.raises(SettingsError, match="'layers'"):
        LoopSettings(pool={"file": "x.extxyz", "layers": "1,2"})


def test_demo_learning_verdict():
    from moire_al.workflows.demo import demo_settings, learning_verdict

    assert learning_verdict([0.4, 0.3, 0.31, 0.19])[0]
    assert not learning_verdict([0.4, 0.3, 0.33, 0.19])[0]      # a rise of 10 %
    assert not learning_verdict([0.4, 0.3, 0.25, 0.21])[0]      # not halved
    assert not learning_verdict([0.4])[0]
    s = demo_settings("graphene", "dataset", 4, 10)
    assert s.labeller == "dataset" and s.pool_file == "data/dft/graphene.extxyz"
    assert demo_settings("graphene", "cp2k", 4, 10).pool == s.pool  # the same loop, live


# ---------------------------------------------------------------- the explore step (issue 16)


def test_explore_step_finds_join_the_candidates_once_and_are_scored(launchpad, tmp_path, monkeypatch):
    """Round 1 has an explore Firework (category fit, a parent of the fit); its finds are
    stored once, join the pool unselected and are among the candidates round 1 scores."""
    from moire_al.workflows import loop

    monkeypatch.chdir(tmp_path)
    settings = tiny_settings(max_rounds=2, explore={"n_starts": 2, "temperatures_K": [300.0], "steps": 20,
                                                    "tau_rel": 0.3, "ramp_steps": 5, "tolerance": 1e-6})
    add_loop(launchpad, settings)
    run_all(launchpad)
    store = Store.from_launchpad(launchpad)
    rounds = store.get_rounds("L")
    assert [r.round for r in rounds] == [0, 1]
    fws = list(launchpad.fireworks.find({"spec._moire.step": "explore"}))
    assert [(f["spec"]["_moire"]["round"], f["spec"]["_category"], f["state"]) for f in fws] == \
        [(1, "fit", "COMPLETED")]
    fit1 = launchpad.fireworks.find_one({"spec._moire.step": "fit", "spec._moire.round": 1})
    assert fit1["fw_id"] in launchpad.get_wf_by_fw_id(fit1["fw_id"]).links[fws[0]["fw_id"]]
    out = launchpad.get_fw_by_id(fws[0]["fw_id"]).launches[-1].action.stored_data
    # tolerance ~0: a run finds at step 1 unless the MD stops first (a 2-atom start overheats)
    assert out["n_runs"] == 2 and out["n_finds"] >= 1 and len(out["new"]) == out["n_finds"]
    new = out["new"]
    for h in new:
        m = store.members.find_one({"loop_id": "L", "hash": h})
        assert m["role"] == "pool" and m["selected_round"] is None
        assert store.structures.count_documents({"hash": h}) == 1
    finds = store.get_structures(new)
    assert all(f.info["explore_round"] == 1 and f.info["explore_step"] == 1 for f in finds)
    # scored in round 1: its pool is round 0's minus the 3 selected plus the finds
    assert rounds[1].n_pool == rounds[0].n_pool - 3 + len(new)
    scored = dict(zip(store.member_hashes("L", role="pool", selected=False), rounds[1].rel_unc))
    assert all(scored[h] > 0 for h in new)
    # a rerun of the step stores nothing twice and adds no member
    n_s, n_m = store.structures.count_documents({}), store.members.count_documents({"loop_id": "L"})
    again = loop.explore_round(store, settings, "L", 1)
    assert sorted(again["finds"]) == sorted(new) and again["new"] == []
    assert store.structures.count_documents({}) == n_s
    assert store.members.count_documents({"loop_id": "L"}) == n_m


def test_explore_parameters_are_checked():
    with pytest.raises(SettingsError, match="explore.*tolerance"):
        tiny_settings(explore={"tolerance": 0})
    with pytest.raises(SettingsError, match="explore.*taus"):
        tiny_settings(explore={"taus": 1})
