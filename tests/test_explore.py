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
