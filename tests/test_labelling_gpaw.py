"""GPAW labeller through custodian: real GPAW runs (marked dft) + job/handler behaviour."""

import importlib.util
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

import samples
from moire_al.labelling import LabelFailure, LabelRecord, get_labeller

HAVE_GPAW = all(importlib.util.find_spec(m) is not None for m in ("gpaw", "dftd3"))
needs_gpaw = pytest.mark.skipif(
    not HAVE_GPAW,
    reason="GPAW or dftd3 not importable (scripts/install_dft.sh; pip install dftd3)")
needs_mpiexec = pytest.mark.skipif(
    not os.path.exists("/usr/bin/mpiexec"),
    reason="OpenMPI's /usr/bin/mpiexec missing (apt-get install openmpi-bin)")
# Coarse but converged enough for a force / energy consistency check.
FAST_PW = {"mode": "pw", "ecut": 350, "kpts": [3, 3, 1]}
FAST_LCAO = {"mode": "lcao", "kpts": [3, 3, 1]}


def alive(pid) -> bool:
    """Running (a zombie waiting for a reaper counts as ended)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def bilayer(d=3.3):
    return samples.stacked("graphene", "AB", d=d, vacuum=12.0)


# --------------------------------------------------------------- real GPAW runs
@pytest.mark.dft
@needs_gpaw
def test_gpaw_pw_forces_are_minus_energy_gradient(tmp_path):
    at = bilayer()
    top = at.arrays["layer"] == 1
    lab = get_labeller("gpaw", FAST_PW)
    rec = lab.label(at, tmp_path / "0")
    assert isinstance(rec, LabelRecord), getattr(rec, "message", rec)
    assert rec.code == "gpaw" and rec.converged and rec.d3_included and not rec.corrections
    assert np.abs(rec.forces.sum(axis=0)).max() < 1e-3          # no net force
    assert np.abs(rec.forces[:, :2]).max() < 1e-3               # AB: in-plane forces vanish
    # PW gives the stress; hexagonal cell: xx = yy, no shear
    assert rec.stress.shape == (6,) and rec.stress[0] == pytest.approx(rec.stress[1], abs=1e-6)
    assert np.abs(rec.stress[3:]).max() < 1e-6
    # central difference of the same code's energies, top layer moved rigidly along z
    dz = 0.02
    e = {}
    for sgn in (-1, 1):
        moved = at.copy()
        moved.positions[top, 2] += sgn * dz
        r = lab.label(moved, tmp_path / str(sgn))
        assert isinstance(r, LabelRecord), getattr(r, "message", r)
        e[sgn] = r.energy
    f_top = rec.forces[top, 2].sum()
    assert abs(f_top) > 0.05  # 3.3 Å is off equilibrium: a measurable force
    assert -(e[1] - e[-1]) / (2 * dz) == pytest.approx(f_top, rel=0.05)
    # D3(BJ) is inside the label: GPAW + the model's D3 of the same structure
    from moire_al.models.d3 import d3_results

    parts = json.loads((tmp_path / "0" / "d3.json").read_text())
    e3, f3, _ = d3_results(at)
    assert parts["energy_d3"] == pytest.approx(e3, abs=1e-8)
    assert parts["energy_d3"] < -0.1  # dispersion binds the layers
    assert rec.energy == pytest.approx(parts["energy_dft"] + parts["energy_d3"], abs=1e-8)
    gpaw_only = json.loads((tmp_path / "0" / "results.json").read_text())
    np.testing.assert_allclose(rec.forces, np.array(gpaw_only["forces"]) + f3, atol=1e-8)


@pytest.mark.dft
@needs_gpaw
def test_gpaw_scf_failure_is_corrected_by_handler(tmp_path):
    """maxiter 3 cannot converge: the handler lowers beta, widens smearing, raises maxiter."""
    lab = get_labeller("gpaw", FAST_LCAO | {"maxiter": 3})
    rec = lab.label(bilayer(), tmp_path)
    assert isinstance(rec, LabelRecord), getattr(rec, "message", rec)
    assert rec.stress is None  # LCAO: no stress
    assert len(rec.corrections) == 1
    corr = rec.corrections[0]
    assert corr["handler"] == "GpawScfHandler" and corr["errors"] == ["scf_not_converged"]
    changed = {a["key"]: a for a in corr["actions"]}
    assert changed["maxiter"]["old"] == 3 and changed["maxiter"]["new"] >= 100
    assert changed["mixer"]["new"]["beta"] == pytest.approx(0.025)
    assert changed["occupations.width"]["new"] == pytest.approx(0.1)
    params = json.loads((tmp_path / "params.json").read_text())["gpaw"]
    assert params["maxiter"] == changed["maxiter"]["new"]  # the run used the corrected input
    assert rec.settings["maxiter"] == 3                     # the key keeps the requested settings
    assert np.abs(rec.forces.sum(axis=0)).max() < 1e-3


@pytest.mark.dft
@needs_gpaw
def test_gpaw_scf_failure_without_corrections_is_a_failure(tmp_path):
    lab = get_labeller("gpaw", FAST_PW | {"maxiter": 2, "max_corrections": 0})
    out = lab.label(samples.stacked("graphene", "A", vacuum=10.0), tmp_path)
    assert isinstance(out, LabelFailure)
    assert out.error_type == "ScfNotConverged" and "2 iterations" in out.message
    assert out.corrections == []
    assert json.loads((tmp_path / "results.json").read_text())["status"] == "scf_not_converged"


@pytest.mark.dft
@needs_gpaw
def test_gpaw_missing_setups_is_not_correctable(tmp_path):
    at = samples.stacked("graphene", "A", vacuum=10.0)
    at.symbols[0] = "Tc"  # gpaw-data ships no technetium dataset
    out = get_labeller("gpaw", FAST_PW).label(at, tmp_path)
    assert isinstance(out, LabelFailure)
    assert out.error_type == "MissingSetups"
    assert "element Tc" in out.message and "gpaw-data" in out.message
    assert [c["handler"] for c in out.corrections] == ["GpawSetupHandler"]
    assert out.corrections[0]["actions"] is None


@pytest.mark.dft
@needs_gpaw
@needs_mpiexec
def test_gpaw_two_ranks_match_one_rank(tmp_path):
    at = samples.stacked("graphene", "A", vacuum=10.0)
    at.positions[0, 2] += 0.05  # a small out-of-plane force
    one = get_labeller("gpaw", FAST_PW | {"ecut": 300, "ranks": 1}).label(at, tmp_path / "1")
    two = get_labeller("gpaw", FAST_PW | {"ecut": 300, "ranks": 2}).label(at, tmp_path / "2")
    assert isinstance(two, LabelRecord), getattr(two, "message", two)
    assert json.loads((tmp_path / "2" / "results.json").read_text())["ranks"] == 2
    assert two.key == one.key  # parallelisation is not part of the label key
    assert two.energy == pytest.approx(one.energy, abs=1e-5)
    np.testing.assert_allclose(two.forces, one.forces, atol=1e-4)
    assert abs(one.forces[0, 2]) > 0.05


# --------------------------------------------------------------- no GPAW needed
def test_gpaw_settings_are_validated():
    from moire_al.labelling.gpaw import GpawLabeller

    with pytest.raises(ValueError, match="unknown setting"):
        GpawLabeller({"encut": 400})
    with pytest.raises(ValueError, match="mode"):
        GpawLabeller({"mode": "fd"})
    lab = GpawLabeller({"ranks": 2})
    assert "ranks" not in lab.settings and lab.run_options["ranks"] == 2


def test_scf_handler_ladder_stops_at_its_limits(tmp_path):
    from moire_al.labelling.gpaw import GpawLabeller, GpawScfHandler

    lab = GpawLabeller(FAST_PW | {"maxiter": 2})
    (tmp_path / "params.json").write_text(json.dumps(
        {"gpaw": lab.gpaw_parameters([3, 3, 1]), "stress": True}))
    h = GpawScfHandler()
    assert not h.check(tmp_path)  # no results yet
    (tmp_path / "results.json").write_text(json.dumps({"status": "scf_not_converged"}))
    assert h.check(tmp_path)
    betas, widths = [], []
    for _ in range(20):
        d = h.correct(tmp_path)
        if d["actions"] is None:
            break
        g = json.loads((tmp_path / "params.json").read_text())["gpaw"]
        betas.append(g["mixer"]["beta"])
        widths.append(g["occupations"]["width"])
    else:
        pytest.fail("the correction ladder never ends")
    assert betas[:2] == [0.025, 0.0125] and min(betas) == pytest.approx(0.01)
    assert widths[:2] == [0.1, 0.2] and max(widths) == pytest.approx(0.2)
    assert g["maxiter"] == 2000
    (tmp_path / "results.json").write_text(json.dumps({"status": "ok"}))
    assert not h.check(tmp_path)


def test_job_terminate_ends_only_its_own_process_group(tmp_path):
    from moire_al.labelling.gpaw import GpawJob

    bystander = subprocess.Popen(["sleep", "60"])
    child = (tmp_path / "child.pid")
    script = ("import subprocess, time; p = subprocess.Popen(['sleep', '60']); "
              f"open({str(child)!r}, 'w').write(str(p.pid)); time.sleep(60)")
    job = GpawJob([sys.executable, "-c", script])
    try:
        p = job.run(tmp_path)
        for _ in range(100):
            if child.exists() and child.read_text():
                break
            time.sleep(0.05)
        grandchild = int(child.read_text())
        assert os.getpgid(p.pid) == p.pid != os.getpgid(0)  # its own process group
        job.terminate(tmp_path)
        assert p.poll() is not None
        for _ in range(100):  # the grandchild (like mpiexec's ranks) goes too
            if not alive(grandchild):
                break
            time.sleep(0.05)
        else:
            pytest.fail("grandchild still alive")
        assert bystander.poll() is None and alive(bystander.pid)  # others untouched
    finally:
        bystander.kill()
        bystander.wait()
