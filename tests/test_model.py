"""Physics and behaviour of moire_al.models (linear ACE + BLR + committee).

Small bases throughout (JIT compile time dominates); the coupling cache and the
JAX compilation cache live in temporary directories.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import pytest

_TMP = tempfile.mkdtemp(prefix="moire-al-model-tests-")
atexit.register(shutil.rmtree, _TMP, True)
os.environ.setdefault("ACEJAX_COUPLING_CACHE", os.path.join(_TMP, "coupling"))
os.environ.setdefault("MOIRE_AL_JAX_CACHE", os.path.join(_TMP, "jax"))

from moire_al.conventions import REF_D3, REF_ENERGY, REF_FORCES, REF_STRESS  # noqa: E402
from moire_al.errors import ModelError  # noqa: E402
import synthetic as S  # noqa: E402
from moire_al.models.ace import ACEModel  # noqa: E402
from moire_al.models.basis import ACEBasis  # noqa: E402
from moire_al.models.blr import BayesianLinearRegression  # noqa: E402

SMALL = dict(order=2, totaldegree=6)          # 23 functions for C, cheap to compile


@pytest.fixture(scope="module")
def cbasis():
    return ACEBasis([6], rcut=5.5, **SMALL)


@pytest.fixture(scope="module")
def true_coef(cbasis):
    """A smooth 'true' linear model in the small carbon basis."""
    rng = np.random.default_rng(42)
    return rng.normal(size=cbasis.L) / np.maximum(cbasis.gamma, 1.0) * 0.5


def _label_linear(basis, coef, atoms_list, e0=-7.0, noise_f=0.0, seed=0, d3=False):
    rng = np.random.default_rng(seed)
    out = []
    for at in atoms_list:
        at = at.copy()
        E, F, Sv = basis.evaluate(at, coef)
        at.info[REF_ENERGY] = float(E[0]) + e0 * len(at)
        at.arrays[REF_FORCES] = F[0] + noise_f * rng.standard_normal(F[0].shape)
        at.info[REF_STRESS] = Sv[0]
        if d3:
            from moire_al.models.d3 import d3_results

            e3, f3, s3 = d3_results(at)
            at.info[REF_ENERGY] += e3
            at.arrays[REF_FORCES] = at.arrays[REF_FORCES] + f3
            at.info[REF_STRESS] = at.info[REF_STRESS] + s3
        at.info[REF_D3] = d3
        out.append(at)
    return out


def _bilayer(seed=0, n=3, rattle=0.08, d=3.4):
    rng = np.random.default_rng(seed)
    return S.stacked("graphene", 2, n, d=d, shifts=[[0, 0], rng.uniform(0, 2.4, 2)], rattle=rattle, seed=seed)


# ---------------------------------------------------------------- symmetry and derivatives
def _rotation(seed):
    from scipy.spatial.transform import Rotation

    return Rotation.random(random_state=seed).as_matrix()


def test_invariance_rotation_translation_permutation(cbasis):
    rng = np.random.default_rng(1)
    C = rng.normal(size=(cbasis.L, 2))
    at = _bilayer(3)
    E, F, Sv = cbasis.evaluate(at, C)
    assert np.abs(F).max() > 1e-2                 # non-trivial forces

    R = _rotation(7)
    rot = at.copy()
    rot.set_cell(at.cell.array @ R.T)
    rot.positions = at.positions @ R.T
    Er, Fr, _ = cbasis.evaluate(rot, C)
    assert np.allclose(Er, E, rtol=0, atol=1e-8 * max(1.0, np.abs(E).max()))
    assert np.allclose(Fr, F @ R.T, atol=1e-8)

    tr = at.copy()
    tr.positions += [0.37, -1.2, 0.9]
    Et, Ft, _ = cbasis.evaluate(tr, C)
    assert np.allclose(Et, E, atol=1e-8) and np.allclose(Ft, F, atol=1e-8)

    perm = rng.permutation(len(at))
    pa = at[perm]
    Ep, Fp, _ = cbasis.evaluate(pa, C)
    assert np.allclose(Ep, E, atol=1e-8) and np.allclose(Fp, F[:, perm], atol=1e-8)


def test_invariance_two_species():
    b = ACEBasis([5, 7], rcut=5.5, **SMALL)
    C = np.random.default_rng(2).normal(size=b.L)
    at = S.stacked("hbn", 2, 3, d=3.3, shifts=[[0, 0], [0.6, 0.3]], rattle=0.08, seed=5)
    E, F, _ = b.evaluate(at, C)
    R = _rotation(11)
    rot = at.copy()
    rot.set_cell(at.cell.array @ R.T)
    rot.positions = at.positions @ R.T
    Er, Fr, _ = b.evaluate(rot, C)
    assert abs(Er[0] - E[0]) < 1e-8 * max(1, abs(E[0]))
    assert np.allclose(Fr[0], F[0] @ R.T, atol=1e-8)
    # swapping B and N changes the energy (species are distinguished)
    sw = at.copy()
    sw.numbers = np.where(at.numbers == 5, 7, 5)
    assert abs(b.evaluate(sw, C)[0][0] - E[0]) > 1e-6


def test_forces_and_stress_are_energy_gradients(cbasis):
    C = np.random.default_rng(3).normal(size=cbasis.L)
    at = _bilayer(4)
    E, F, Sv = cbasis.evaluate(at, C)
    h = 1e-5
    for i, a in [(0, 0), (5, 1), (11, 2), (30, 2)]:
        p, m = at.copy(), at.copy()
        p.positions[i, a] += h
        m.positions[i, a] -= h
        fd = -(cbasis.evaluate(p, C)[0][0] - cbasis.evaluate(m, C)[0][0]) / (2 * h)
        assert abs(fd - F[0, i, a]) < 1e-6, (i, a, fd, F[0, i, a])
    eps = 1e-6
    vol = at.get_volume()
    voigt = [(0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1)]
    for k, (a, b) in enumerate(voigt):
        vals = []
        for sgn in (1, -1):
            de = np.eye(3)
            de[a, b] += sgn * eps / (2 if a != b else 1)
            de[b, a] += sgn * eps / 2 if a != b else 0
            x = at.copy()
            x.set_cell(at.cell.array @ de, scale_atoms=True)
            vals.append(cbasis.evaluate(x, C)[0][0])
        fd = (vals[0] - vals[1]) / (2 * eps) / vol
        assert abs(fd - Sv[0, k]) < 1e-8, (k, fd, Sv[0, k])


def test_design_rows_match_evaluation(cbasis):
    C = np.random.default_rng(4).normal(size=(cbasis.L, 3))
    at = _bilayer(5)
    E, F, Sv = cbasis.evaluate(at, C)
    PE, PF, PS = cbasis.structure_rows(at)
    assert np.allclose(PE @ C, E, atol=1e-9)
    assert np.allclose((PF @ C).reshape(len(at), 3, 3).transpose(2, 0, 1), F, atol=1e-9)
    assert np.allclose(PS @ C, Sv.T, atol=1e-12)


# ---------------------------------------------------------------- Bayesian linear regression
def test_blr_evidence_recovers_noise_and_prior():
    rng = np.random.default_rng(0)
    P, N, sigma = 30, 3000, 0.05
    c = rng.normal(size=P) * 2.0                    # prior precision 1/4
    X = rng.normal(size=(N, P))
    y = X @ c + sigma * rng.standard_normal(N)
    m = BayesianLinearRegression(committee_size=64, seed=1).fit(X, y)
    assert abs(m.noise_std_ / sigma - 1) < 0.05
    assert 0.1 < m.alpha_ < 0.6                     # ~ 1 / var(c) = 0.25, within sampling error of 30 draws
    assert np.abs(m.coef_ - c).max() < 5 * sigma / np.sqrt(N) * 3
    # committee covariance is the posterior covariance
    emp = np.cov(m.sample(4000, seed=3).T)
    assert np.allclose(np.diag(emp), np.diag(m.covariance_), rtol=0.15)
    # weights: rows with weight w have noise sigma/w
    w = np.where(np.arange(N) % 2 == 0, 1.0, 10.0)
    y2 = X @ c + sigma / w * rng.standard_normal(N)
    m2 = BayesianLinearRegression().fit(X, y2, weights=w)
    assert abs(m2.noise_std_ / sigma - 1) < 0.05


def test_blr_normal_equations_equal_arrays_and_bad_input():
    rng = np.random.default_rng(5)
    X, y = rng.normal(size=(200, 8)), rng.normal(size=200)
    g = np.linspace(1, 10, 8)
    a = BayesianLinearRegression().fit(X, y, prior_diag=g)
    b = BayesianLinearRegression().fit_normal(X.T @ X, X.T @ y, float(y @ y), 200, g)
    assert np.allclose(a.coef_, b.coef_) and np.isclose(a.alpha_, b.alpha_)
    y[3] = np.nan
    with pytest.raises(ModelError):
        BayesianLinearRegression().fit(X, y)


# ---------------------------------------------------------------- ACEModel
@pytest.fixture(scope="module")
def linear_data(cbasis, true_coef):
    structs = [_bilayer(s, rattle=0.05 + 0.01 * (s % 5), d=3.2 + 0.05 * (s % 8)) for s in range(40)]
    return _label_linear(cbasis, true_coef, structs, noise_f=0.0)


def test_fit_recovers_known_linear_model(linear_data, true_coef):
    m = ACEModel(d3=False, committee_size=16, **SMALL).fit(linear_data[:30])
    held = linear_data[30:]
    preds = m.predict(held)
    ferr = max(np.abs(p["forces"] - at.arrays[REF_FORCES]).max() for p, at in zip(preds, held))
    eerr = max(abs(p["energy"] - at.info[REF_ENERGY]) / len(at) for p, at in zip(preds, held))
    assert ferr < 1e-4 and eerr < 1e-5
    # coefficients are identified up to directions the data do not constrain (a near-constant
    # site energy trades against E0); the force-relevant ones are recovered
    assert np.abs(m.coef_ - true_coef)[1:].max() < 0.01 * np.abs(true_coef).max()
    rep = m.fit_report_["train"]["all"]
    assert rep["F_eV_per_A"] < 1e-4 and set(m.fit_report_["train"]) == {"2", "all"}


def test_evidence_noise_level_and_committee_behaviour(cbasis, true_coef):
    sigma = 0.05
    structs = [_bilayer(100 + s, rattle=0.06, d=3.3 + 0.04 * (s % 6)) for s in range(36)]
    data = _label_linear(cbasis, true_coef, structs, noise_f=sigma, seed=1)
    big = ACEModel(d3=False, committee_size=32, **SMALL).fit(data[:32])
    assert abs(big.fit_info_["noise_std_force_eV_per_A"] / sigma - 1) < 0.15
    small = ACEModel(d3=False, committee_size=32, **SMALL).fit(data[:3])
    test = [_bilayer(500 + s, rattle=0.06, d=3.35) for s in range(3)]
    s_small = np.mean(small.score(test, kind="abs"))
    s_big = np.mean(big.score(test, kind="abs"))
    assert s_big < 0.6 * s_small, (s_small, s_big)
    compressed = [S.stacked("graphene", 2, 3, d=2.6, shifts=[[0, 0], [0.4, 0.2]], rattle=0.06, seed=s,
                            a=2.46 * 0.93) for s in range(3)]
    s_off = np.mean(big.score(compressed, kind="abs"))
    assert s_off > 2 * s_big, (s_off, s_big)
    # the relative score is the documented ratio
    p = big.predict(test[:1])[0]
    assert np.allclose(p["rel_force_unc"], p["forces_std"] / (np.linalg.norm(p["forces"], axis=1) + 0.2))
    assert np.isclose(big.score(test[:1])[0], p["rel_force_unc"].max())


def test_d3_subtracted_from_labels_and_added_back(cbasis, true_coef, linear_data):
    structs = [at.copy() for at in linear_data[:12]]
    with_d3 = _label_linear(cbasis, true_coef, structs, d3=True)
    m = ACEModel(d3=True, committee_size=8, **SMALL).fit(with_d3)
    p = m.predict(with_d3[:2])
    for pp, at in zip(p, with_d3[:2]):
        assert np.abs(pp["forces"] - at.arrays[REF_FORCES]).max() < 1e-4
        assert np.abs(pp["stress"] - at.info[REF_STRESS]).max() < 1e-6
    # the ACE part learned the D3-free model: without D3 it reproduces the linear labels
    fresh = _bilayer(901)
    plain = _label_linear(cbasis, true_coef, [fresh])[0]
    assert np.abs(m.predict_one(fresh, d3=False)["forces"] - plain.arrays[REF_FORCES]).max() < 1e-4
    from moire_al.models.d3 import d3_results

    e3 = d3_results(with_d3[0])[0]
    assert abs(e3) > 0.1
    assert abs(m.predict_one(with_d3[0], d3=False)["energy"] - (p[0]["energy"] - e3)) < 1e-8


def test_bad_input_names_the_structure(linear_data):
    bad = [at.copy() for at in linear_data[:3]]
    bad[1].arrays[REF_FORCES][2, 0] = np.nan
    with pytest.raises(ModelError, match="#1"):
        ACEModel(d3=False, **SMALL).fit(bad)
    nocell = linear_data[0].copy()
    nocell.set_cell(np.zeros((3, 3)))
    nocell.pbc = False
    with pytest.raises(ModelError, match="cell"):
        ACEModel(d3=False, **SMALL).fit([linear_data[1], nocell])


@pytest.fixture(scope="module")
def fitted(linear_data):
    return ACEModel(d3=True, committee_size=8, **SMALL).fit(linear_data[:20])


def test_unknown_element_is_a_clear_error(fitted):
    hbn = S.stacked("hbn", 1, 3)
    with pytest.raises(ModelError, match="B"):
        fitted.predict([hbn])
    # a calculator reused on other atoms names those (it keeps the formula while the numbers stay)
    from moire_al.models.calculator import ACEModelCalculator

    calc = ACEModelCalculator(fitted, committee=False, evaluator="kernel")
    gr = S.stacked("graphene", 1, 3)
    gr.calc = calc
    gr.get_potential_energy()
    hbn.calc = calc
    with pytest.raises(ModelError, match=f"structure {hbn.get_chemical_formula()}: element"):
        hbn.get_potential_energy()


def test_calculator_in_ase_optimizer(fitted):
    from ase.optimize import BFGS

    at = _bilayer(77, rattle=0.1)
    at.calc = fitted.calculator()
    e0 = at.get_potential_energy()
    assert at.calc.results["energy_std"] >= 0 and at.calc.results["forces_std"].shape == (len(at),)
    s = at.get_stress()
    assert s.shape == (6,)
    BFGS(at, logfile=None).run(fmax=0.05, steps=15)
    assert at.get_potential_energy() < e0
    p = fitted.predict_one(at, committee=False)
    assert np.allclose(p["forces"], at.get_forces(), atol=1e-10)
    # the fast posterior-mean path (ace-jax's JAX evaluator + D3) agrees with the committee path
    from ase.neighborlist import neighbor_list

    from moire_al.models.calculator import ACEModelCalculator

    fast = at.copy()
    fast.calc = ACEModelCalculator(fitted, committee=False, evaluator="jax")
    assert abs(fast.get_potential_energy() - p["energy"]) < 1e-7
    assert np.abs(fast.get_forces() - p["forces"]).max() < 1e-8
    assert np.abs(fast.get_stress() - p["stress"]).max() < 1e-9
    # this synthetic model has no core: BFGS pulled two atoms within 0.5 Å, where the
    # C++ kernel (default evaluator) refuses with the pair named instead of extrapolating
    from moire_al.models import fast as kernel

    assert neighbor_list("d", at, 1.0).min() < 0.5
    if kernel.available():
        k = at.copy()
        k.calc = fitted.calculator(committee=False)
        with pytest.raises(ModelError, match=r"atoms \d+ and \d+ are 0\.\d+ Å apart.*collapsed"):
            k.get_potential_energy()


def test_save_load_in_fresh_process(fitted, tmp_path, linear_data):
    path = tmp_path / "model"
    fitted.save(path)
    assert {"model.json", "coefficients.npz"} <= {p.name for p in path.iterdir()}
    test = linear_data[25:27]
    import ase.io

    ase.io.write(tmp_path / "in.xyz", test)
    ref = fitted.predict(test)
    code = (
        "import sys, numpy as np, ase.io\n"
        "from moire_al.models import ACEModel\n"
        f"m = ACEModel.load({str(path)!r})\n"
        f"p = m.predict(ase.io.read({str(tmp_path / 'in.xyz')!r}, ':'))\n"
        "import json; print(json.dumps([[q['energy'] for q in p], [float(q['forces_std'].max()) for q in p]]))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=200, env=os.environ)
    assert r.returncode == 0, r.stderr[-2000:]
    import json

    energies, fstd = json.loads(r.stdout.strip().splitlines()[-1])
    assert np.allclose(energies, [q["energy"] for q in ref], atol=1e-8)
    assert np.allclose(fstd, [q["forces_std"].max() for q in ref], atol=1e-10)
    meta = json.loads((path / "model.json").read_text())
    assert meta["d3"]["enabled"] is True and meta["training_set_hash"] == fitted.training_hash_
    assert meta["versions"]["ace-jax"] == "0.4.1"
    assert "model.yace" in meta["files"], meta.get("yace_export_error")
    # the exported ace-jax file is the ACE part of the model (no D3)
    from ace_jax import ACECalculator

    x = test[0].copy()
    x.calc = ACECalculator(str(path / "acejax_model.npz"))
    assert abs(x.get_potential_energy() - fitted.predict_one(test[0], d3=False)["energy"]) < 1e-7


def test_cli_fit_and_predict(linear_data, tmp_path, capsys):
    import ase.io

    from moire_al.cli import main

    ase.io.write(tmp_path / "train.xyz", linear_data[:6])
    ase.io.write(tmp_path / "train2.xyz", linear_data[6:10])        # two training files fit together
    ase.io.write(tmp_path / "test.xyz", linear_data[30:33])
    rc = main(["fit", str(tmp_path / "train.xyz"), str(tmp_path / "train2.xyz"), "--test", str(tmp_path / "test.xyz"),
               "-o", str(tmp_path / "m"), "--order", "2", "--totaldegree", "6", "--no-d3", "--committee-size", "8"])
    out = capsys.readouterr().out
    assert rc == 0 and "meV" in out and "test" in out and "10 structures" in out
    assert (tmp_path / "m" / "plots" / "parity_test.png").stat().st_size > 1000
    rc = main(["predict", str(tmp_path / "m"), str(tmp_path / "test.xyz"), "-o", str(tmp_path / "out.xyz")])
    assert rc == 0
    res = ase.io.read(tmp_path / "out.xyz", ":")
    assert len(res) == 3 and res[0].arrays["forces_std"].shape == (len(res[0]),)
    assert "energy_std" in res[0].info and res[0].get_forces().shape == (len(res[0]), 3)
    assert np.abs(res[0].get_forces() - linear_data[30].arrays[REF_FORCES]).max() < 1e-3
    rc = main(["fit", str(tmp_path / "nope.xyz"), "-o", str(tmp_path / "x")])
    assert rc == 1
    rc = main(["fit", str(tmp_path / "train.xyz"), "-o", str(tmp_path / "m30"), "--order", "2", "--totaldegree", "6",
               "--no-d3", "--committee-size", "0", "--multilayer-weight", "30", "--no-plots"])
    assert rc == 0 and ACEModel.load(tmp_path / "m30").multilayer_weight == 30.0
    rc = main(["fit", str(tmp_path / "train.xyz"), "-o", str(tmp_path / "bad"), "--order", "2", "--totaldegree", "6",
               "--no-d3", "--multilayer-weight", "-1", "--no-plots"])
    err = capsys.readouterr().err
    assert rc != 0 and not (tmp_path / "bad").exists()
    assert "multilayer_weight" in err and "Traceback" not in err


def test_julia_backend_detection():
    from moire_al.models.backends import julia_backend_status, select_backend

    st = julia_backend_status(timeout=30)
    if not st.available:
        assert st.reason
        assert select_backend("acepotentials.jl") == "ace-jax"
        pytest.skip(f"ACEpotentials.jl backend unavailable: {st.reason}")
    assert select_backend("acepotentials.jl") == "acepotentials.jl"


def test_score_kinds_agree_with_predict(fitted, linear_data):
    sub = linear_data[20:22]
    p = fitted.predict(sub)                      # D3 included (fitted has d3=True)
    assert np.allclose(fitted.score(sub, d3=True), [q["max_rel_force_unc"] for q in p], rtol=1e-10)
    assert np.allclose(fitted.score(sub, kind="abs"), [q["max_force_std"] for q in p], rtol=1e-10)
    # the default (no D3 in the denominator) differs only slightly
    assert np.allclose(fitted.score(sub), fitted.score(sub, d3=True), rtol=0.2)
    with pytest.raises(ModelError):
        fitted.score(sub, kind="nope")


def test_fit_cli_d3_auto_follows_the_labels():
    """Reference-potential labels already bind the layers: the CLI adds no D3 to them."""
    import argparse

    from ase.build import graphene

    from moire_al.models.cli import _want_d3

    ref, dft = graphene(), graphene()
    ref.info["REF_labeller"] = "reference"
    dft.info["REF_labeller"] = "cp2k"
    auto = argparse.Namespace(d3="auto", no_d3=False)
    assert _want_d3(auto, [ref, ref]) is False
    assert _want_d3(auto, [ref, dft]) is True
    assert _want_d3(argparse.Namespace(d3="on", no_d3=False), [ref]) is True
    assert _want_d3(argparse.Namespace(d3="auto", no_d3=True), [dft]) is False


def test_predict_cli_rejects_overlapping_atoms_in_one_line(tmp_path):
    """A user's file with atoms 0.1 Å apart fails before any model is loaded."""
    import subprocess
    import sys
    from pathlib import Path

    f = tmp_path / "overlap.xyz"
    f.write_text('2\nLattice="2.46 0 0 0 2.46 0 0 0 20" Properties=species:S:1:pos:R:3\n'
                 "C 0 0 0\nC 0.1 0 0\n")
    exe = str(Path(sys.executable).with_name("moire-al"))
    r = subprocess.run([exe, "predict", str(tmp_path / "no-model"), str(f), "-o", str(tmp_path / "o.xyz")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert r.stderr.strip().count("\n") == 0 and "overlap" in r.stderr


# ---------------------------------------------------------------- the compiled CPU kernel
def _kernel_or_skip():
    from moire_al.models import fast

    if not fast.available():
        pytest.skip(f"ace-jax CPU kernel unavailable: {fast.unavailable_reason()}")
    return fast


def test_kernel_evaluator_agrees_with_jax_and_is_a_gradient(fitted):
    fast = _kernel_or_skip()
    at = _bilayer(11, rattle=0.12)
    ref = fitted.predict_one(at, committee=False, d3=False)
    k = at.copy()
    k.calc = fast.FastACECalculator(fitted)
    assert abs(k.get_potential_energy() - ref["energy"]) < 1e-8 * len(at)
    assert np.abs(k.get_forces() - ref["forces"]).max() < 1e-7
    assert np.abs(k.get_stress() - ref["stress"]).max() < 1e-9
    assert k.calc.results["energies"].sum() == pytest.approx(k.get_potential_energy(), abs=1e-9)
    # finite differences through the ghost images: forces and stress
    h = 1e-5
    for i, a in ((0, 0), (len(at) - 1, 2), (5, 1)):
        p, m = k.copy(), k.copy()
        p.positions[i, a] += h
        m.positions[i, a] -= h
        p.calc = fast.FastACECalculator(fitted)
        m.calc = fast.FastACECalculator(fitted)
        fd = -(p.get_potential_energy() - m.get_potential_energy()) / (2 * h)
        assert fd == pytest.approx(k.get_forces()[i, a], abs=1e-6)
    eps = 1e-6
    es = []
    for sgn in (1, -1):
        s = k.copy()
        strain = np.eye(3)
        strain[0, 1] = strain[1, 0] = sgn * eps / 2
        s.set_cell(k.cell.array @ strain, scale_atoms=True)
        s.calc = fast.FastACECalculator(fitted)
        es.append(s.get_potential_energy())
    assert (es[0] - es[1]) / (2 * eps) / k.get_volume() == pytest.approx(k.get_stress()[5], abs=1e-7)


def test_kernel_neighbour_list_reuse_and_rebuild(fitted):
    fast = _kernel_or_skip()
    at = _bilayer(12, rattle=0.05)
    calc = fast.FastACECalculator(fitted, skin=1.0)
    at.calc = calc
    at.get_forces()
    rng = np.random.default_rng(3)
    for step in range(3):                      # small moves: the list is reused ...
        at.positions += rng.normal(0, 0.05, at.positions.shape)
        f = at.get_forces()
        fresh = at.copy()
        fresh.calc = fast.FastACECalculator(fitted)
        assert np.abs(f - fresh.get_forces()).max() < 1e-10   # ... and stays exact
    assert calc.last_stats["rebuilds"] == 1 and calc.last_stats["calls"] == 4
    at.positions[0] += [0.6, 0, 0]             # more than skin / 2: rebuilt
    at.get_forces()
    assert calc.last_stats["rebuilds"] == 2
    at.set_cell(at.cell.array * 1.01, scale_atoms=True)   # a new cell: rebuilt
    at.get_forces()
    assert calc.last_stats["rebuilds"] == 3
    at.positions[1] = np.nan
    with pytest.raises(ModelError, match="not finite"):
        at.get_forces()


def test_model_calculator_uses_the_kernel_and_keeps_d3(fitted):
    _kernel_or_skip()
    at = _bilayer(13, rattle=0.08)
    p = fitted.predict_one(at, committee=False)     # JAX, with D3 (fitted has d3=True)
    a = at.copy()
    a.calc = fitted.calculator(committee=False)
    e = a.get_potential_energy()
    assert a.calc.evaluator == "kernel"
    assert e == pytest.approx(p["energy"], abs=1e-7) and np.abs(a.get_forces() - p["forces"]).max() < 1e-7
    b = at.copy()
    from moire_al.models.calculator import ACEModelCalculator

    b.calc = ACEModelCalculator(fitted, committee=False, evaluator="jax")
    assert b.get_potential_energy() == pytest.approx(e, abs=1e-7) and b.calc.evaluator == "jax"
    with pytest.raises(ModelError, match="evaluator"):
        ACEModelCalculator(fitted, committee=False, evaluator="fortran")


def test_structure_weights_pull_the_fit_and_bad_weights_are_named(cbasis, true_coef):
    """info["fit_weight"] multiplies a structure's rows: a heavily weighted structure whose
    labels disagree with the rest is fitted much more closely than without the weight."""
    structs = [_bilayer(s, rattle=0.06, d=3.3 + 0.02 * s) for s in range(12)]
    data = _label_linear(cbasis, true_coef, structs, noise_f=0.0)
    odd = _label_linear(cbasis, 1.5 * true_coef, [_bilayer(99, rattle=0.06)], noise_f=0.0)[0]
    plain = ACEModel(d3=False, committee_size=0, **SMALL).fit(data + [odd])
    heavy = odd.copy()
    heavy.info["fit_weight"] = 30.0
    weighted = ACEModel(d3=False, committee_size=0, **SMALL).fit(data + [heavy])

    def ferr(m):
        return np.abs(m.predict_one(odd, committee=False)["forces"] - odd.arrays[REF_FORCES]).max()
    assert ferr(weighted) < 0.5 * ferr(plain)
    assert weighted.training_hash_ != plain.training_hash_
    bad = odd.copy()
    bad.info["fit_weight"] = -1
    bad.info["name"] = "weighted-one"
    with pytest.raises(ModelError, match="fit_weight"):
        ACEModel(d3=False, **SMALL).fit(data + [bad])


def test_energy_weight_zero_leaves_a_structures_energy_out(cbasis, true_coef):
    """info["fit_weight_E"] = 0: a label whose energy carries an arbitrary offset (as a
    grid-smoothed CP2K label's does between cells) changes neither the fit nor E0 when its
    energy is left out, while its forces still count; a bad value is named."""
    structs = [_bilayer(s, rattle=0.06, d=3.3 + 0.02 * s) for s in range(12)]
    data = _label_linear(cbasis, true_coef, structs, noise_f=0.0)
    shifted = [a.copy() for a in data[:4]]
    for a in shifted:
        a.info[REF_ENERGY] += 0.04 * len(a)            # 40 meV/atom off, forces right
    ref = ACEModel(d3=False, committee_size=0, **SMALL).fit(data[4:] + data[:4])
    hurt = ACEModel(d3=False, committee_size=0, **SMALL).fit(data[4:] + shifted)
    for a in shifted:
        a.info["fit_weight_E"] = 0.0
    kept = ACEModel(d3=False, committee_size=0, **SMALL).fit(data[4:] + shifted)
    probe = data[0]

    def eerr(m):
        return abs(m.predict_one(probe, committee=False)["energy"] - probe.info[REF_ENERGY]) / len(probe)
    assert eerr(ref) < 1e-4 and eerr(kept) < 1e-4 < 0.1 * eerr(hurt)
    assert kept.training_hash_ != hurt.training_hash_
    # the error tables leave those energies out too (their offset is not a model error), the
    # forces and the structure count stay; no energy at all: no energy error
    from moire_al.models.metrics import format_table, rmse_table

    tab = rmse_table(kept, data[4:] + shifted)["all"]
    assert tab["n_structures"] == 12 and tab["E_meV_per_atom"] < 0.1 and tab["F_eV_per_A"] > 0
    assert rmse_table(hurt, data[4:] + [a.copy() for a in data[:4]])["all"]["E_meV_per_atom"] > 1.0
    none = rmse_table(kept, shifted)
    assert none["all"]["n_structures"] == 4 and none["all"]["E_meV_per_atom"] is None
    assert " - " in format_table({"train": none})
    bad = data[0].copy()
    bad.info["fit_weight_E"] = -1
    with pytest.raises(ModelError, match="fit_weight_E"):
        ACEModel(d3=False, **SMALL).fit(data[1:] + [bad])


def test_multilayer_weight_is_a_fit_weight_on_every_multilayer(cbasis, true_coef):
    """multilayer_weight w weights the rows of structures with >= 2 layers by w, exactly as
    info["fit_weight"] = w on each of them would; monolayers keep weight 1."""
    mono = [S.stacked("graphene", 1, 3, d=3.4, shifts=[[0, 0]], rattle=0.1, seed=s) for s in range(4)]
    bil = [_bilayer(s, rattle=0.06) for s in range(4)]
    data = _label_linear(cbasis, true_coef, mono + bil, noise_f=0.05)
    by_option = ACEModel(d3=False, committee_size=0, multilayer_weight=4.0, **SMALL).fit(data)
    by_info = [a.copy() for a in data]
    for a in by_info[len(mono):]:
        a.info["fit_weight"] = 4.0
    by_hand = ACEModel(d3=False, committee_size=0, multilayer_weight=1.0, **SMALL).fit(by_info)
    plain = ACEModel(d3=False, committee_size=0, multilayer_weight=1.0, **SMALL).fit(data)
    assert np.allclose(by_option.coef_, by_hand.coef_, rtol=1e-10, atol=1e-12)
    assert not np.allclose(by_option.coef_, plain.coef_, rtol=1e-6)
    with pytest.raises(ModelError, match="multilayer_weight"):
        ACEModel.check_params({"multilayer_weight": 0})


def test_kernel_two_species_hbn():
    """B and N: the kernel's species tables agree with the exact evaluation."""
    _kernel_or_skip()
    from moire_al.models.calculator import ACEModelCalculator

    b = ACEBasis([5, 7], rcut=5.5, **SMALL)
    m = ACEModel(d3=False, **SMALL)
    rng = np.random.default_rng(0)
    m.basis_, m.elements_ = b, (5, 7)
    m.coef_ = rng.normal(size=b.L) / np.maximum(b.gamma, 1) * 0.5
    m.committee_, m.E0_ = np.zeros((0, b.L)), np.array([-5.0, -8.0])
    at = S.stacked("hbn", 2, 3, d=3.3, shifts=[[0, 0], [0.7, 0.4]], rattle=0.08, seed=2)
    p = m.predict_one(at, committee=False)
    a = at.copy()
    a.calc = ACEModelCalculator(m, committee=False, evaluator="kernel")
    assert a.get_potential_energy() == pytest.approx(p["energy"], abs=1e-8)
    assert np.abs(a.get_forces() - p["forces"]).max() < 1e-8
    assert np.abs(a.get_stress() - p["stress"]).max() < 1e-10
    # swapping B and N changes the energy: the species are not confused
    sw = at.copy()
    sw.numbers = np.where(at.numbers == 5, 7, 5)
    sw.calc = ACEModelCalculator(m, committee=False, evaluator="kernel")
    assert abs(sw.get_potential_energy() - m.predict_one(sw, committee=False)["energy"]) < 1e-8
    assert abs(sw.get_potential_energy() - p["energy"]) > 1e-3


def test_kernel_slab_without_third_vector_and_cluster(fitted):
    """pbc (T, T, F) with no third cell vector, and a cluster: same energy as the exact path."""
    fast = _kernel_or_skip()
    at = _bilayer(3, rattle=0.05)
    exact = fitted.predict_one(at, committee=False, d3=False)["energy"]
    slab = at.copy()
    slab.pbc = [True, True, False]
    cell = slab.cell.array.copy()
    cell[2] = 0.0
    slab.set_cell(cell)
    slab.calc = fast.FastACECalculator(fitted)
    assert slab.get_potential_energy() == pytest.approx(exact, abs=1e-8)
    cluster = at.copy()
    cluster.pbc = False
    cluster.calc = fast.FastACECalculator(fitted)
    assert cluster.get_potential_energy() == pytest.approx(
        fitted.predict_one(cluster, committee=False, d3=False)["energy"], abs=1e-8)
    assert abs(cluster.get_potential_energy() - exact) > 1e-3     # images really mattered


def test_kernel_catches_a_pair_collapsing_between_list_rebuilds(fitted):
    """Two atoms walking towards each other within the skin (no rebuild) are still caught."""
    fast = _kernel_or_skip()
    from ase.neighborlist import neighbor_list

    at = _bilayer(14, rattle=0.05)
    calc = fast.FastACECalculator(fitted, skin=1.0)
    at.calc = calc
    at.get_forces()
    i, j, D, d = neighbor_list("ijDd", at, 2.0)
    k = int(np.argmin(d))
    step = min(0.49, (d[k] - 0.45) / 2)                # each atom moves < skin / 2
    assert d[k] - 2 * step < 0.5
    at.positions[i[k]] += step * D[k] / d[k]
    at.positions[j[k]] -= step * D[k] / d[k]
    with pytest.raises(ModelError, match=rf"atoms ({i[k]} and {j[k]}|{j[k]} and {i[k]}) are 0\.4"):
        at.get_forces()
    assert calc.last_stats["rebuilds"] == 1
