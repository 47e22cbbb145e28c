"""Uncertainty-biased MD exploration (hyperactive learning) and fine-tuning.

A tiny ACE model (order 2, total degree 6, committee of 8) fitted to labels of the
reference potential (LAMMPS REBO + KC-full: the classical baseline, not DFT) of a few
rattled bilayers, so the committee is uncertain enough to explore in tens of steps."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

import numpy as np
import pytest

_TMP = tempfile.mkdtemp(prefix="moire-al-explore-")
atexit.register(shutil.rmtree, _TMP, True)
os.environ.setdefault("ACEJAX_COUPLING_CACHE", os.path.join(_TMP, "coupling"))
os.environ.setdefault("MOIRE_AL_JAX_CACHE", os.path.join(_TMP, "jax"))

from moire_al.analysis.explore import ExploreSettings, explore_one, sigma_e_gradient  # noqa: E402


@pytest.fixture(scope="module")
def gcalc():
    from moire_al.labelling.reference import reference_calculator

    return reference_calculator("graphene")


@pytest.fixture(scope="module")
def tiny(gcalc, tmp_path_factory):
    """(model, model directory, training file): 12 rattled AB/random-registry bilayers."""
    import ase.io

    from moire_al.models import ACEModel
    import synthetic as S

    data = S.label(S.random_set("graphene", 12, seed=3, n=3, layers=(2,), rattle=(0.0, 0.05)), gcalc)
    model = ACEModel(d3=False, order=2, totaldegree=6, committee_size=8).fit(data)
    d = tmp_path_factory.mktemp("tiny")
    model.save(d / "model")
    ase.io.write(d / "train.xyz", data, format="extxyz")
    return model, d / "model", d / "train.xyz"


def _start():
    import synthetic as S

    return S.stacked("graphene", 2, 3, d=3.4)


def test_sigma_e_gradient_equals_finite_differences(tiny):
    model = tiny[0]
    at = _start()
    at.positions += np.random.default_rng(0).normal(0, 0.05, at.positions.shape)
    p = model.predict_one(at, committee=True, stress=False, members=True)
    sigma, grad = sigma_e_gradient(p["energy_members"], p["forces_members"])
    assert sigma == pytest.approx(p["energy_std"], rel=1e-10)
    assert np.abs(grad).max() > 1e-4                    # a gradient worth checking
    h = 1e-4
    for i, a in [(0, 0), (5, 2), (20, 1), (33, 2)]:
        s = []
        for sign in (1, -1):
            x = at.copy()
            x.positions[i, a] += sign * h
            s.append(model.predict_one(x, committee=True, stress=False)["energy_std"])
        fd = (s[0] - s[1]) / (2 * h)
        assert fd == pytest.approx(grad[i, a], abs=1e-6 + 1e-4 * abs(grad[i, a]))


def test_biased_run_reaches_larger_sigma_e_than_unbiased_at_same_seed(tiny):
    model = tiny[0]
    runs = {}
    for tau in (0.0, 0.3):
        s = ExploreSettings(steps=60, tau_rel=tau, ramp_steps=20, tolerance=1e9, seed=1)
        runs[tau] = explore_one(model, _start(), 300.0, s)
    n = min(len(r.energy_std_trace) for r in runs.values())
    assert n >= 40
    unb, bia = (np.array(runs[t].energy_std_trace[:n]) for t in (0.0, 0.3))
    assert unb[0] == pytest.approx(bia[0], rel=1e-6)   # same start, same seed
    assert bia.max() > 1.5 * unb.max(), (bia.max(), unb.max())
    assert all(t == 0.0 for t in runs[0.0].tau_trace) and runs[0.3].tau_trace[-1] > 0
    assert not runs[0.0].triggered and runs[0.0].structure is None


def test_trigger_fires_and_returns_the_structure_with_its_uncertainty(tiny):
    model = tiny[0]
    s = ExploreSettings(steps=300, tau_rel=0.3, ramp_steps=20, tolerance=0.15, seed=1)
    r = explore_one(model, _start(), 300.0, s)
    assert r.triggered and r.reason == "tolerance", (r.reason, r.message)
    assert r.max_rel_force_unc > 0.15
    assert all(v <= 0.15 for v in r.max_rel_force_unc_trace[:-1])   # it stopped at the first crossing
    find = r.structure
    p = model.predict_one(find, committee=True, stress=False)
    assert p["max_rel_force_unc"] == pytest.approx(r.max_rel_force_unc, rel=1e-6)
    assert p["energy_std"] == pytest.approx(find.info["explore_energy_std"], rel=1e-6)
    assert find.info["explore_step"] == r.step and not np.any(find.get_velocities())


def test_explore_cli_writes_the_finds_it_reports(tiny, tmp_path, capsys):
    from moire_al.cli import main
    from moire_al.structures import read_structures, write_structures

    write_structures(tmp_path / "start.xyz", [_start()])
    out = tmp_path / "finds.xyz"
    rc = main(["explore", str(tiny[1]), str(tmp_path / "start.xyz"), "-o", str(out), "--temperatures", "300",
               "--steps", "300", "--tau", "0.3", "--ramp", "20", "--tolerance", "0.15", "--seed", "1",
               "--json", str(tmp_path / "runs.json")])
    text = capsys.readouterr().out
    assert rc == 0 and "wrote 1 find(s) of 1 run(s)" in text
    finds = read_structures(out)
    assert len(finds) == 1 and finds[0].info["explore_max_rel_force_unc"] > 0.15
    rc = main(["explore", str(tiny[1]), str(tmp_path / "start.xyz"), "-o", str(out), "--tolerance", "0"])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and "tolerance" in err


# ------------------------------------------------------------------ fine-tuning
def _strained_task():
    import synthetic as S

    return [S.stacked("graphene", 2, 3, d=3.3 + 0.05 * k, strain=0.05 * (-1) ** k, rattle=0.04, seed=10 + k)
            for k in range(4)]


def _rmse_independent(model_dir, labelled):
    """Force RMSE (eV/Å) and energy RMSE (meV/atom) through the ASE calculator of the saved model."""
    from moire_al.conventions import REF_ENERGY, REF_FORCES
    from moire_al.models import ACEModel

    m = ACEModel.load(model_dir)
    dF, dE = [], []
    for at in labelled:
        x = at.copy()
        x.calc = m.calculator(committee=False)
        dF.append(x.get_forces() - at.arrays[REF_FORCES])
        dE.append((x.get_potential_energy() - at.info[REF_ENERGY]) / len(at))
    return float(np.sqrt(np.mean(np.concatenate(dF) ** 2))), 1000 * float(np.sqrt(np.mean(np.square(dE))))


def test_finetune_lowers_the_task_error_and_prints_what_an_independent_evaluation_finds(tiny, gcalc, tmp_path,
                                                                                      capsys):
    import json

    from moire_al.cli import main
    import synthetic as S
    from moire_al.structures import write_structures

    task = _strained_task()
    write_structures(tmp_path / "task.xyz", task)
    new_dir = tmp_path / "new"
    rc = main(["finetune", str(tiny[1]), str(tmp_path / "task.xyz"), "--labeller", "reference",
               "--train", str(tiny[2]), "-o", str(new_dir)])
    text = capsys.readouterr().out
    assert rc == 0, text
    rep = json.loads((new_dir / "finetune.json").read_text())
    labelled = S.label(task, gcalc)          # the same labels, computed independently
    for when, model_dir in (("before", tiny[1]), ("after", new_dir)):
        F, E = _rmse_independent(model_dir, labelled)
        assert rep[f"task_{when}"]["all"]["F_eV_per_A"] == pytest.approx(F, rel=1e-6, abs=1e-9)
        assert rep[f"task_{when}"]["all"]["E_meV_per_atom"] == pytest.approx(E, rel=1e-5, abs=1e-6)
        assert f"{F:8.4f}" in text and f"{E:9.3f}" in text
    before, after = rep["task_before"]["all"]["F_eV_per_A"], rep["task_after"]["all"]["F_eV_per_A"]
    assert after < 0.8 * before, (before, after)
    assert rep["n_task"] == 4 and rep["n_train"] == 12 and rep["test_set"] == "train"
    assert rep["forgetting_F_ratio"] < 1.5                  # the original set is not forgotten
    assert "forgetting" in text and "not DFT" in text


def test_finetune_refuses_a_training_file_that_is_not_the_models(tiny, tmp_path, capsys):
    import ase.io

    from moire_al.cli import main
    from moire_al.structures import write_structures

    train = ase.io.read(tiny[2], ":")
    write_structures(tmp_path / "train_part.xyz", train[:-1])
    write_structures(tmp_path / "task.xyz", _strained_task()[:1])
    rc = main(["finetune", str(tiny[1]), str(tmp_path / "task.xyz"), "--labeller", "reference",
               "--train", str(tmp_path / "train_part.xyz"), "-o", str(tmp_path / "new")])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and "not the one the model was fitted to" in err
    assert not (tmp_path / "new").exists()


# ------------------------------------------------------------------ fine-tuning as Fireworks
def _run(lp, category=None):
    from fireworks import FWorker
    from fireworks.core.rocket_launcher import rapidfire

    rapidfire(lp, FWorker(category=category) if category else FWorker(), nlaunches=0, sleep_time=0, max_loops=1)


def test_finetune_workflow_labels_refits_and_stores_errors_an_independent_evaluation_finds(
        tiny, gcalc, launchpad, launchpad_file, tmp_path, monkeypatch, capsys):
    from moire_al.cli import main
    from moire_al.store.mongo import Store
    import synthetic as S
    from moire_al.structures import write_structures

    monkeypatch.chdir(tmp_path)
    task = _strained_task()
    write_structures(tmp_path / "task.xyz", task)
    rc = main(["finetune", str(tiny[1]), str(tmp_path / "task.xyz"), "--labeller", "reference", "--train",
               str(tiny[2]), "--workflow", "--id", "ft1", "-l", str(launchpad_file)])
    assert rc == 0 and "added fine-tuning ft1: 4 task structures" in capsys.readouterr().out
    assert launchpad.get_fw_ids(count_only=True) == 5           # 4 labels + the refit
    _run(launchpad, "fit")                                       # the refit waits for its labels
    assert launchpad.get_fw_ids({"state": "COMPLETED"}, count_only=True) == 0
    _run(launchpad, "dft")
    assert launchpad.get_fw_ids({"state": "COMPLETED"}, count_only=True) == 4
    _run(launchpad, "fit")
    assert launchpad.get_fw_ids({"state": "COMPLETED"}, count_only=True) == 5
    store = Store.from_launchpad(launchpad)
    doc = store.get_finetune("ft1")
    assert doc.n_task == 4 and doc.n_failed == 0 and doc.n_train == 12 and doc.test_set == "train"
    assert store.labels.count_documents({"loop_id": "ft1", "round": 0}) == 4   # task labels, once each
    assert "not DFT" in doc.labels
    labelled = S.label(task, gcalc)
    for when, model_id in (("before", "ft1-base"), ("after", "ft1-model")):
        F, E = _rmse_independent(store.get_model_dir(model_id, tmp_path / when), labelled)
        table = getattr(doc, f"task_{when}")["all"]
        assert table["F_eV_per_A"] == pytest.approx(F, rel=1e-6, abs=1e-9)
        assert table["E_meV_per_atom"] == pytest.approx(E, rel=1e-5, abs=1e-6)
    assert doc.task_after["all"]["F_eV_per_A"] < 0.8 * doc.task_before["all"]["F_eV_per_A"]
    assert doc.forgetting_F_ratio < 1.5
    capsys.readouterr()
    assert main(["status", "-l", str(launchpad_file)]) == 0
    assert (f"task F RMSE {doc.task_before['all']['F_eV_per_A']:.4f} -> {doc.task_after['all']['F_eV_per_A']:.4f}"
            in capsys.readouterr().out)
    # the refit equals the one `moire-al finetune` makes here and now
    rc = main(["finetune", str(tiny[1]), str(tmp_path / "task.xyz"), "--labeller", "reference", "--train",
               str(tiny[2]), "-o", str(tmp_path / "here")])
    assert rc == 0
    import json

    here = json.loads((tmp_path / "here" / "finetune.json").read_text())
    assert here["task_after"]["all"]["F_eV_per_A"] == pytest.approx(doc.task_after["all"]["F_eV_per_A"], rel=1e-9)


def test_finetune_workflow_records_a_failed_label_and_resume_refits_with_it(tiny, launchpad, launchpad_file,
                                                                            tmp_path, monkeypatch, capsys):
    from moire_al.cli import main
    from moire_al.conventions import structure_hash
    from moire_al.store.mongo import Store
    from moire_al.structures import write_structures
    from moire_al.workflows.manage import resume

    monkeypatch.chdir(tmp_path)
    task = _strained_task()
    write_structures(tmp_path / "task.xyz", task)
    victim = structure_hash(task[1])
    monkeypatch.setenv("MOIRE_AL_TEST_FAIL_ON", victim)
    rc = main(["finetune", str(tiny[1]), str(tmp_path / "task.xyz"), "--labeller", "faulty-reference",
               "--train", str(tiny[2]), "--workflow", "--id", "ft2", "-l", str(launchpad_file)])
    assert rc == 0, capsys.readouterr().err
    _run(launchpad)
    store = Store.from_launchpad(launchpad)
    fizzled = launchpad.get_fw_ids({"state": "FIZZLED"})
    assert len(fizzled) == 1 and launchpad.get_fw_by_id(fizzled[0]).spec["_tasks"][0]["hashes"] == [victim]
    doc = store.get_finetune("ft2")
    assert doc.n_task == 3 and doc.n_failed == 1 and doc.failed_keys[0].startswith(victim)
    failure = store.failures.find_one({"structure_hash": victim})
    assert failure["loop_id"] == "ft2" and failure["resolved"] is False and failure["error_type"] == "InjectedFault"
    monkeypatch.delenv("MOIRE_AL_TEST_FAIL_ON")
    out = resume(launchpad, "ft2")
    assert out["rerun"] == fizzled and out["detached"] == []
    _run(launchpad)
    assert launchpad.get_fw_ids({"state": "FIZZLED"}) == []
    doc = store.get_finetune("ft2")
    assert doc.n_task == 4 and doc.n_failed == 0        # the refit reran with the recovered label
    assert store.labels.count_documents({"loop_id": "ft2"}) == 4 + 12   # task + replayed training labels
    assert store.failures.find_one({"structure_hash": victim})["resolved"] is True


def test_finetune_workflow_input_errors_are_one_line_and_store_nothing(tiny, launchpad, launchpad_file, tmp_path,
                                                                      capsys):
    from moire_al.cli import main
    from moire_al.structures import write_structures

    write_structures(tmp_path / "task.xyz", _strained_task()[:1])
    base = ["finetune", str(tiny[1]), str(tmp_path / "task.xyz"), "--train", str(tiny[2]), "-l", str(launchpad_file)]
    for extra, msg in ((["--labeller", "nope", "--workflow"], "labeller"),
                       (["--labeller", "reference", "--workflow", "-o", str(tmp_path / "x")], "drop -o"),
                       (["--labeller", "reference"], "-o NEW_MODEL is required")):
        rc = main(base + extra)
        err = capsys.readouterr().err
        assert rc == 1 and err.count("\n") == 1 and msg in err, err
    assert launchpad.get_fw_ids(count_only=True) == 0
    assert launchpad.db["finetunes"].count_documents({}) == 0 and launchpad.db["models"].count_documents({}) == 0


def test_neb_finetune_workflow_labels_the_images_refits_and_runs_the_neb_again(gcalc, launchpad, tmp_path,
                                                                               monkeypatch):
    """Seed 003's example on a 27-atom vacancy cell (21.8° bilayer) with the reference
    potential (not DFT) as the labeller and a base model fitted on its labels of a few
    rattled bilayers and vacancy cells, replayed from a file."""
    from moire_al.store.mongo import Store
    from moire_al.workflows.builders import neb_finetune_workflow

    monkeypatch.chdir(tmp_path)
    train, s = _neb_case(gcalc, tmp_path)
    launchpad.add_wf(neb_finetune_workflow(s))
    _run(launchpad)
    assert launchpad.get_fw_ids({"state": "COMPLETED"}, count_only=True) == 1 + 3 + 1 + 1   # NEB, 3 labels, refit, NEB
    store = Store.from_launchpad(launchpad)
    doc = store.get_finetune("nf")
    assert doc.model_id == "nf-base" and doc.new_model_id == "nf-model" and doc.n_task == 3 and doc.n_failed == 0
    assert doc.n_train == len(train)
    images = store.get_structures(doc.task)
    assert [im.info["neb_image"] for im in images] == [0, 1, 2] and all(len(im) == 27 for im in images)
    e = []
    for im in images:                               # the labels' own barrier, computed independently
        im.calc = gcalc
        e.append(im.get_potential_energy())
    assert doc.barrier_labels == pytest.approx(max(e) - e[0], abs=1e-6)
    assert doc.barrier_before == pytest.approx(doc.neb_before["barrier"]) and np.isfinite(doc.barrier_after)
    assert doc.task_after["all"]["F_eV_per_A"] < 0.8 * doc.task_before["all"]["F_eV_per_A"]
    stages = {d["stage"]: d["model_id"] for d in store.get_analyses(analysis="neb_vacancy", finetune_id="nf")}
    assert stages == {"before": "nf-base", "after": "nf-model"}
    # a rerun of the first step adds no second branch
    first = launchpad.get_fw_ids({"spec._moire.stage": "before"})
    launchpad.rerun_fw(first[0])
    n = launchpad.get_fw_ids(count_only=True)
    _run(launchpad)
    assert launchpad.get_fw_ids(count_only=True) == n


def _neb_case(gcalc, tmp_path, **settings):
    """The 27-atom vacancy case of these tests: (train file's structures, settings)."""
    import ase.io

    from moire_al.analysis.neb import vacancy_endpoints
    from moire_al.structures import twisted_bilayer
    from moire_al.workflows.settings import NebFinetuneSettings
    import synthetic as S

    vac = []
    for k in range(6):
        a = vacancy_endpoints(twisted_bilayer("graphene", m=1))[k % 2]
        a.positions += np.random.default_rng(k).normal(0, 0.05, a.positions.shape)
        vac.append(a)
    train = S.label(S.random_set("graphene", 8, seed=3, n=3, layers=(2,), rattle=(0.0, 0.05)) + vac, gcalc)
    ase.io.write(tmp_path / "train.xyz", train, format="extxyz")
    return train, NebFinetuneSettings(m=1, labeller="reference", train_file=str(tmp_path / "train.xyz"),
                                      model={"order": 2, "totaldegree": 6, "committee_size": 8},
                                      neb={"n_images": 1, "fmax": 0.1, "steps": 20, "relax_fmax": 0.1},
                                      finetune_id="nf", **settings)


def test_neb_finetune_rounds_label_each_new_path_and_check_the_model_before(gcalc, launchpad, tmp_path,
                                                                            monkeypatch):
    """rounds = 2: round 1 labels the path of round 0's fine-tuned model (its labels check
    that model's barrier), refits from that model on the union, runs the NEB again."""
    from moire_al.store.mongo import Store
    from moire_al.workflows.builders import neb_finetune_workflow

    monkeypatch.chdir(tmp_path)
    train, s = _neb_case(gcalc, tmp_path, rounds=2, barrier_tol=0.0)
    launchpad.add_wf(neb_finetune_workflow(s))
    _run(launchpad)
    assert launchpad.get_fw_ids({"state": "COMPLETED"}, count_only=True) == 6 + 3 + 1 + 1
    store = Store.from_launchpad(launchpad)
    r0, r1 = store.get_finetune("nf"), store.get_finetune("nf-r1")
    assert r0.round == 0 and r0.next_finetune_id == "nf-r1" and r0.converged is False
    assert r1.round == 1 and r1.model_id == "nf-model" and r1.new_model_id == "nf-r1-model"
    assert r1.task == r0.path_after and r1.barrier_before == pytest.approx(r0.barrier_after)
    assert r1.n_train == len(train) + r0.n_task                    # round 0's task labels join the training set
    e = []
    for im in store.get_structures(r1.task):                      # the labels along round 0's after path
        im.calc = gcalc
        e.append(im.get_potential_energy())
    assert r1.barrier_labels == pytest.approx(max(e) - e[0], abs=1e-6)
    assert r1.converged == (abs(r1.barrier_before - r1.barrier_labels) <= 0.0) and r1.next_finetune_id is None
    assert np.isfinite(r1.barrier_after) and len(r1.path_after) == 3


def test_neb_finetune_stops_when_the_model_matches_its_labels(gcalc, launchpad, tmp_path, monkeypatch):
    from moire_al.store.mongo import Store
    from moire_al.workflows.builders import neb_finetune_workflow

    monkeypatch.chdir(tmp_path)
    _, s = _neb_case(gcalc, tmp_path, rounds=3, barrier_tol=100.0)
    launchpad.add_wf(neb_finetune_workflow(s))
    _run(launchpad)
    assert launchpad.get_fw_ids({"state": "COMPLETED"}, count_only=True) == 6    # one round: converged
    doc = Store.from_launchpad(launchpad).get_finetune("nf")
    assert doc.converged is True and doc.next_finetune_id is None
    assert launchpad.db["finetunes"].count_documents({}) == 1


def test_neb_finetune_parameters_are_checked(launchpad, launchpad_file, capsys):
    from moire_al.cli import main
    from moire_al.errors import SettingsError
    from moire_al.workflows.builders import workflow_files_dir
    from moire_al.workflows.settings import NebFinetuneSettings

    ready = str(workflow_files_dir() / "graphene_neb_finetune_cp2k.yaml")
    assert main(["loop", ready, "-l", str(launchpad_file), "--set", "m=0"]) == 1
    assert "'m'" in capsys.readouterr().err and launchpad.get_fw_ids(count_only=True) == 0
    assert main(["loop", ready, "-l", str(launchpad_file)]) == 0
    (fw_id,) = launchpad.get_fw_ids()
    assert launchpad.get_fw_by_id(fw_id).spec["_tasks"][0]["params"]["labeller"] == "cp2k"
    # --set overrides the file's values in the stored Firework (and keeps the others)
    assert main(["loop", ready, "-l", str(launchpad_file), "--set", "m=3", "--set",
                 'labeller_settings={"omp_threads": 1}']) == 0
    params = launchpad.get_fw_by_id(max(launchpad.get_fw_ids())).spec["_tasks"][0]["params"]
    assert params["m"] == 3 and params["labeller_settings"] == {"omp_threads": 1} and params["r"] == 1

    with pytest.raises(SettingsError, match="'neb'"):
        NebFinetuneSettings.from_dict({"neb": {"images": 3}})
    with pytest.raises(SettingsError, match="unknown NEB fine-tuning parameter"):
        NebFinetuneSettings.from_dict({"cell": 2})
    with pytest.raises(SettingsError, match="'m'"):
        NebFinetuneSettings.from_dict({"m": 0})
    with pytest.raises(SettingsError, match="'rounds'"):
        NebFinetuneSettings.from_dict({"rounds": 0})
    with pytest.raises(SettingsError, match="'barrier_tol'"):
        NebFinetuneSettings.from_dict({"barrier_tol": "small"})
