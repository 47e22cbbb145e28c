"""The replay labeller (``dataset``) and pools read from a labelled file, on the committed
CP2K reference set (data/dft)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import ase.io
import numpy as np
import pytest

from moire_al import conventions as conv
from moire_al.errors import LabelError, MoireALError, StructureError
from moire_al.labelling import LabelFailure, LabelRecord, get_labeller
from moire_al.structures.lattice import monolayer
from moire_al.structures.pool import fixed_test_split, pool_from_file

ROOT = Path(__file__).resolve().parent.parent
GRAPHENE = ROOT / "data" / "dft" / "graphene.extxyz"


@pytest.fixture(scope="module")
def dft_slice(tmp_path_factory) -> Path:
    """12 structures of the committed graphene set (every 5th: mono-, bi- and multilayers)."""
    images = ase.io.read(GRAPHENE, ":60:5", format="extxyz")
    path = tmp_path_factory.mktemp("dft") / "slice.extxyz"
    ase.io.write(path, images, format="extxyz")
    return path


def test_committed_sets_are_cp2k_labels_with_d3():
    for name in ("graphene", "hbn"):
        path = ROOT / "data" / "dft" / f"{name}.extxyz"
        images = ase.io.read(path, ":", format="extxyz")
        assert images, path
        for at in images:
            assert at.info["REF_labeller"] == "cp2k" and at.info["REF_d3"] is True
            assert np.isfinite(at.arrays["REF_forces"]).all()
            assert at.info["label_key"] == conv.label_key(at, "cp2k", get_labeller("cp2k").settings)
        assert len({conv.structure_hash(a) for a in images}) == len(images)


def test_replay_hit_returns_the_stored_label_under_its_original_name(dft_slice):
    lab = get_labeller("dataset", {"path": str(dft_slice)})
    src = ase.io.read(dft_slice, "3", format="extxyz")
    (cand,) = [a for a in pool_from_file(dft_slice) if a.info["hash"] == conv.structure_hash(src)]
    assert "REF_energy" not in cand.info and "REF_forces" not in cand.arrays
    rec = lab.label(cand, None)
    assert isinstance(rec, LabelRecord) and rec.replayed
    assert rec.labeller == "cp2k" and rec.settings == get_labeller("cp2k").settings
    assert rec.key == src.info["label_key"]  # the same label as the one CP2K computed
    assert rec.energy == src.info["REF_energy"]
    np.testing.assert_array_equal(rec.forces, src.arrays["REF_forces"])
    out = rec.apply_to(cand)
    assert out.info["REF_labeller"] == "cp2k" and out.info["label_replayed_from"] == "slice.extxyz"
    assert "replayed cp2k labels" in lab.description and "DFT" not in lab.description


def test_replay_miss_is_a_clear_failure(dft_slice):
    lab = get_labeller("dataset", {"path": str(dft_slice)})
    out = lab.label(monolayer("graphene", n=5), None)
    assert isinstance(out, LabelFailure)
    assert out.error_type == "NotInDataset" and "slice.extxyz" in out.message


@pytest.mark.parametrize("damage, words", [
    ("truncate", "not a readable extxyz"),
    ("nan", "non-finite label"),
    ("unlabelled", "has no label"),
    ("missing", "cannot read"),
])
def test_replay_of_a_broken_file_is_one_line(dft_slice, tmp_path, damage, words):
    bad = tmp_path / "bad.extxyz"
    text = dft_slice.read_text()
    if damage == "truncate":
        bad.write_text(text[: len(text) // 3])
    elif damage == "nan":
        images = ase.io.read(dft_slice, ":", format="extxyz")
        images[2].arrays["REF_forces"][0, 0] = np.nan
        ase.io.write(bad, images, format="extxyz")
    elif damage == "unlabelled":
        ase.io.write(bad, [monolayer("graphene", n=2)], format="extxyz")
    with pytest.raises(LabelError, match=words) as err:
        get_labeller("dataset", {"path": str(bad)})
    assert isinstance(err.value, MoireALError) and "\n" not in str(err.value)


def test_replay_settings_are_checked(dft_slice):
    with pytest.raises(LabelError, match="unknown setting"):
        get_labeller("dataset", {"path": str(dft_slice), "pth": 1})
    with pytest.raises(LabelError, match="need 'path'"):
        get_labeller("dataset", {})


def test_moire_al_label_replays_a_file(dft_slice, tmp_path):
    """`moire-al label --labeller dataset` gives back the file's labels (a miss fails, rc 1)."""
    pool = tmp_path / "pool.xyz"
    ase.io.write(pool, pool_from_file(dft_slice)[:4] + [monolayer("graphene", n=5)], format="extxyz")
    settings = tmp_path / "s.json"
    settings.write_text(json.dumps({"path": str(dft_slice)}))
    out = tmp_path / "out.extxyz"
    r = subprocess.run([sys.executable, "-m", "moire_al.cli", "label", str(pool), "-o", str(out),
                        "--labeller", "dataset", "--settings", str(settings)], capture_output=True, text=True)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "labelled 4 new" in r.stdout and "1 failed" in r.stdout
    got = ase.io.read(out, ":", format="extxyz")
    src = {conv.structure_hash(a): a for a in ase.io.read(dft_slice, ":", format="extxyz")}
    for at in got:
        ref = src[conv.structure_hash(at)]
        assert at.info["REF_energy"] == ref.info["REF_energy"] and at.info["REF_labeller"] == "cp2k"


def test_pool_from_file_strips_labels_and_filters_layers(dft_slice):
    pool = pool_from_file(dft_slice)
    assert len(pool) == 12
    for at in pool:
        assert not [k for k in at.info if k.startswith(("REF_", "label_"))]
        assert "REF_forces" not in at.arrays and at.info["hash"] == conv.structure_hash(at)
    ones = pool_from_file(dft_slice, layers=[1])
    assert ones and all(a.info["n_layers"] == 1 for a in ones) and len(ones) < 12
    with pytest.raises(StructureError, match="no structures left"):
        pool_from_file(dft_slice, layers=[7])


def test_pool_from_a_file_without_layer_data_counts_layers_from_geometry(tmp_path):
    from moire_al.structures.lattice import multilayer

    plain = []
    for stacking in ("A", "AB", "ABC"):
        at = multilayer("graphene", stacking, n=2)
        at = ase.Atoms(at.get_chemical_symbols(), at.positions, cell=at.cell, pbc=True)  # no layer array, no info
        plain.append(at)
    f = tmp_path / "user.xyz"
    ase.io.write(f, plain, format="extxyz")
    pool = pool_from_file(f)
    assert [a.info["n_layers"] for a in pool] == [1, 2, 3]
    assert [a.info["n_layers"] for a in pool_from_file(f, layers=[2, 3])] == [2, 3]


def test_fixed_test_split_ignores_order_and_seed():
    hashes = [f"h{i:03d}" for i in range(40)]
    a = fixed_test_split(hashes, 8)
    assert a == fixed_test_split(list(reversed(hashes)), 8) and len(set(a)) == 8
    assert set(fixed_test_split(hashes[:30], 8)) & set(a)  # a subset keeps most of its split
    assert fixed_test_split(hashes, 0) == []
