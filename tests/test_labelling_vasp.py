"""vasp-inputs labeller: seed 000 INCAR/KPOINTS, POSCAR round trip, POTCAR.spec, runner."""

import json
import py_compile

import numpy as np
import pytest
from ase.io import read

from moire_al import conventions as conv
from moire_al.errors import StructureError
import samples
from moire_al.labelling import LabelFailure, get_labeller
from moire_al.labelling.common import kpoint_mesh


def incar(path):
    out = {}
    for line in (path / "INCAR").read_text().splitlines():
        if "=" in line:
            k, v = (x.strip() for x in line.split("=", 1))
            out[k] = v
    return out


@pytest.fixture
def hbn_twisted():
    return samples.twisted_21_79("hbn", n_layers=2)


def test_vasp_inputs_reproduce_seed_settings(tmp_path, monkeypatch, hbn_twisted):
    monkeypatch.delenv("PMG_VASP_PSP_DIR", raising=False)  # no POTCARs here
    at = hbn_twisted
    lab = get_labeller("vasp-inputs")
    out = lab.label(at, tmp_path)
    assert isinstance(out, LabelFailure) and out.error_type == "InputsOnly"
    assert str(tmp_path) in out.message and "run_vasp.py" in out.message
    assert out.key == conv.label_key(at, "vasp-inputs", lab.settings)
    tags = incar(tmp_path)
    assert float(tags["ENCUT"]) == 620 and tags["IVDW"] == "12"
    assert tags["ISMEAR"] == "0" and float(tags["SIGMA"]) == 0.05
    assert float(tags["EDIFF"]) <= 1e-6 and tags["ISIF"] == "2" and tags["NSW"] == "0"
    assert tags["ISPIN"] == "1" and tags["PREC"] == "Accurate"
    assert "GGA" not in tags or tags["GGA"] in ("PE", "Pe")  # PBE from the POTCARs
    assert "LDAU" not in tags and "MAGMOM" not in tags
    lines = (tmp_path / "KPOINTS").read_text().splitlines()
    assert lines[2].strip().lower().startswith("g")  # Γ-centred
    mesh = [int(x) for x in lines[3].split()]
    assert mesh == kpoint_mesh(at, 0.3) and mesh[2] == 1 and all(m % 2 for m in mesh)
    assert not (tmp_path / "POTCAR").exists()
    assert (tmp_path / "POTCAR.spec").read_text().split() == ["B", "N"]


def test_kpoint_mesh_follows_the_spacing(tmp_path):
    at = samples.stacked("graphene", "AB")  # |b| = 2.95 Å⁻¹
    get_labeller("vasp-inputs", {"kspacing": 0.3}).label(at, tmp_path / "a")
    get_labeller("vasp-inputs", {"kspacing": 0.6}).label(at, tmp_path / "b")
    mesh = [(tmp_path / d / "KPOINTS").read_text().splitlines()[3].split() for d in "ab"]
    assert mesh == [["11", "11", "1"], ["5", "5", "1"]]


def test_poscar_round_trips_the_structure(tmp_path, hbn_twisted):
    at = hbn_twisted
    get_labeller("vasp-inputs").label(at, tmp_path)
    back = read(tmp_path / "POSCAR", format="vasp")
    np.testing.assert_allclose(back.cell.array, at.cell.array, atol=1e-8)
    meta = json.loads((tmp_path / "moire_al_vasp.json").read_text())
    perm = meta["poscar_index_of_atom"]
    assert sorted(perm) == list(range(len(at)))
    # POSCAR groups species; the stored permutation restores the structure's order
    assert back.get_chemical_symbols() == sorted(at.get_chemical_symbols())
    restored = back[perm]
    assert restored.get_chemical_symbols() == at.get_chemical_symbols()
    d = restored.get_scaled_positions() - at.get_scaled_positions()
    d -= np.round(d)
    assert np.abs(d @ at.cell.array).max() < 1e-6
    assert meta["structure_hash"] == conv.structure_hash(at)


def test_runner_is_a_custodian_vaspjob_recipe(tmp_path):
    get_labeller("vasp-inputs").label(samples.stacked("graphene", "AB"), tmp_path)
    runner = tmp_path / "run_vasp.py"
    py_compile.compile(str(runner), doraise=True)
    text = runner.read_text()
    for name in ("VaspJob", "VaspErrorHandler", "UnconvergedErrorHandler",
                 "VasprunXMLValidator", "POTCAR.spec", "vasp_label.json"):
        assert name in text


def test_settings_and_bad_input(tmp_path):
    with pytest.raises(ValueError, match="unknown setting"):
        get_labeller("vasp-inputs", {"ENCUT": 500})
    at = samples.stacked("graphene", "AB")
    at.positions[1] = at.positions[0] + 0.1
    with pytest.raises(StructureError):
        get_labeller("vasp-inputs").label(at, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_extra_incar_tags(tmp_path):
    lab = get_labeller("vasp-inputs", {"encut": 700, "incar": {"NCORE": 4}})
    lab.label(samples.stacked("hbn", "AB"), tmp_path)
    tags = incar(tmp_path)
    assert float(tags["ENCUT"]) == 700 and tags["NCORE"] == "4"
