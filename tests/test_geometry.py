"""Shared geometry: layers found the same way everywhere, also across the cell boundary."""

from __future__ import annotations

import numpy as np
import pytest

from moire_al.errors import StructureError
from moire_al.structures import multilayer


def bilayer_across_the_boundary():
    """An AB bilayer whose bottom layer straddles z = 0: half of it is wrapped to the top."""
    at = multilayer("graphene", "AB", distances=3.4, n=3, vacuum=16.0)
    truth = at.arrays.pop("layer").copy()
    at.positions[:, 2] -= at.positions[truth == 0, 2].mean()  # bottom layer at z = 0
    at.positions[truth == 0, 2] += np.where(np.arange((truth == 0).sum()) % 2, 0.05, -0.05)
    at.wrap()
    assert (at.positions[truth == 0, 2] > 10).any() and (at.positions[truth == 0, 2] < 1).any()
    return at, truth


def test_layers_across_the_cell_boundary_agree_in_labelling_and_analysis():
    from moire_al.analysis.common import layers_of
    from moire_al.labelling.reference import find_layers

    at, truth = bilayer_across_the_boundary()
    for found in (layers_of(at), find_layers(at)):
        assert len(np.unique(found)) == 2
        assert (found == truth).all() or (found == 1 - truth).all()


def test_one_overlap_check_for_files_and_labellers(tmp_path):
    from ase.io import write

    from moire_al.labelling import get_labeller
    from moire_al.structures import read_structures

    at = multilayer("graphene", "AB", n=2)
    at.positions[1] = at.positions[0] + [0.6, 0, 0]
    write(tmp_path / "a.xyz", at)
    read_structures(tmp_path / "a.xyz")  # 0.6 Å passes the file check (0.5 Å) ...
    with pytest.raises(StructureError, match=r"atoms 0 and 1 overlap \(0.600 Å apart, < 0.7 Å\)"):
        get_labeller("reference").label(at, None)  # ... but no labeller takes it (0.7 Å)
    at.positions[1] = at.positions[0] + [0.4, 0, 0]
    write(tmp_path / "b.xyz", at)
    with pytest.raises(StructureError, match=r"atoms 0 and 1 overlap \(0.400 Å apart, < 0.5 Å\)"):
        read_structures(tmp_path / "b.xyz")


def test_layer_count_from_info_or_geometry():
    from moire_al.geometry import layer_count

    at, _ = bilayer_across_the_boundary()
    assert layer_count(at) == 2
    tri = multilayer("graphene", "ABA", distances=3.4, n=2)
    tri.arrays.pop("layer")
    tri.info.pop("n_layers", None)
    assert layer_count(tri) == 3
    tri.info["n_layers"] = 5           # what the structure says of itself wins
    assert layer_count(tri) == 5
