"""User-input errors: one line on stderr, exit code 1, no traceback (errors.py's promise)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ase.io import write

from moire_al.cli import main
from moire_al.errors import MoireALError
from moire_al.structures import monolayer


def one_line_error(capsys, argv, *words):
    capsys.readouterr()
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("moire-al: error:") and "\n" not in err, err
    for w in words:
        assert w in err, err
    return err


@pytest.fixture
def good_xyz(tmp_path):
    path = tmp_path / "good.xyz"
    write(path, monolayer("graphene", n=2), format="extxyz")
    return path


def test_loop_file_missing_or_malformed(tmp_path, capsys):
    one_line_error(capsys, ["loop", str(tmp_path / "missing.yaml")], "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("fws: [1, 2\n  name: x: y\n")
    one_line_error(capsys, ["loop", str(bad)], "bad.yaml")
    notwf = tmp_path / "notwf.yaml"
    notwf.write_text("just: a mapping\n")
    one_line_error(capsys, ["loop", str(notwf)], "notwf.yaml")


def test_label_settings_file_missing_malformed_or_unknown(tmp_path, capsys, good_xyz):
    out = str(tmp_path / "o.xyz")
    base = ["label", str(good_xyz), "-o", out, "--labeller", "reference"]
    one_line_error(capsys, base + ["--settings", str(tmp_path / "missing.json")], "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{material: [")
    one_line_error(capsys, base + ["--settings", str(bad)], "bad.json")
    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps({"bogus": 1}))
    one_line_error(capsys, base + ["--settings", str(unknown)], "bogus")


@pytest.mark.parametrize("name", ["reference", "cp2k", "gpaw", "vasp-inputs"])
def test_unknown_labeller_setting_is_a_moire_al_error(name):
    from moire_al.labelling import get_labeller

    with pytest.raises(MoireALError, match="bogus"):
        get_labeller(name, {"bogus": 1})


def test_unknown_labeller_is_a_moire_al_error():
    from moire_al.labelling import get_labeller

    with pytest.raises(MoireALError, match="nope"):
        get_labeller("nope")


def test_nan_in_input_labels_is_refused_by_label_and_predict(tmp_path, capsys):
    at = monolayer("graphene", n=2)
    forces = np.zeros((len(at), 3))
    forces[1, 2] = np.nan
    at.arrays["REF_forces"] = forces
    at.info["REF_energy"] = -1.0
    path = tmp_path / "nan.xyz"
    write(path, at, format="extxyz")
    one_line_error(capsys, ["label", str(path), "-o", str(tmp_path / "o.xyz"), "--labeller", "reference"],
                   "REF_forces", "nan.xyz")
    one_line_error(capsys, ["predict", str(tmp_path / "no-model"), str(path), "-o", str(tmp_path / "p.xyz")],
                   "REF_forces")


def test_analysis_input_errors_are_moire_al_errors():
    from moire_al.analysis.binding import stacking_bilayer
    from moire_al.analysis.moire import displacements
    from moire_al.analysis.relax import _optimizer as get_optimizer

    with pytest.raises(MoireALError, match="XY"):
        stacking_bilayer("graphene", "XY", 3.4)
    with pytest.raises(MoireALError, match="optimizer"):
        get_optimizer("nope")
    a = monolayer("graphene", n=2)
    with pytest.raises(MoireALError, match="same atoms"):
        displacements(a, a[:-1])
