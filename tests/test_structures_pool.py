"""Candidate pools never contain (near-)overlapping atoms, even at the largest rattle."""

import numpy as np
import pytest
from ase.neighborlist import neighbor_list

from moire_al.structures import make_pool
from moire_al.structures.lattice import bond_length, material_info


@pytest.mark.parametrize("material", ["graphene", "hbn"])
def test_pool_keeps_atoms_apart(material):
    _, a, _, _ = material_info(material)
    d_bond = bond_length(a)
    worst = np.inf
    for seed in (0, 3):
        for atoms in make_pool(material, seed=seed):
            d = neighbor_list("d", atoms, 1.5)
            worst = min(worst, d.min())
    assert worst >= 0.7 * d_bond - 1e-9
    # ... and the largest rattles really are large (the guard did not just shrink them).
    rattled = [at for at in make_pool(material, seed=0) if at.info["generator"] == "rattled_monolayer"]
    assert max(np.abs(at.positions[:, 2] - np.median(at.positions[:, 2])).max() for at in rattled) > 0.3


def test_monolayer_only_pool_needs_no_parent_cells():
    from moire_al.structures import PoolRecipe

    recipe = PoolRecipe.from_dict({"monolayer_sizes": [1, 2], "n_rattled_per_size": 2, "n_local_angles": 0,
                                   "bilayer_cells": [], "bilayer_supercell": None, "n_trilayers": 0,
                                   "n_quadrilayers": 0, "n_pentalayers": 0, "multilayer_cells": [],
                                   "multilayer_supercell": None, "n_separations": 0})
    pool = make_pool("graphene", recipe, seed=0)
    assert len(pool) == 4 and {at.info["n_layers"] for at in pool} == {1}


@pytest.mark.parametrize("material, stackings", [("graphene", {"AA", "AB", "SP"}), ("hbn", {"AA'", "AB", "AA"})])
def test_binding_curves_span_compressed_to_parted_layers(material, stackings):
    """The separation family: every high-symmetry stacking at distances from 2.8 Å to beyond the cutoff."""
    import json

    pool = [a for a in make_pool(material, seed=0) if a.info["pool_family"] == "separation"]
    assert len(pool) == 8 * 3
    assert {a.info["stacking"] for a in pool} == stackings
    for st in stackings:
        d = sorted(json.loads(a.info["params"])["interlayer_distance"] for a in pool if a.info["stacking"] == st)
        assert d[0] == pytest.approx(2.8) and d[-1] == pytest.approx(7.0) and len(d) == 8
    for a in pool:
        d = json.loads(a.info["params"])["interlayer_distance"]
        z = a.positions[:, 2]
        gap = z[a.arrays["layer"] == 1].mean() - z[a.arrays["layer"] == 0].mean()
        assert gap == pytest.approx(d, abs=0.05)
        assert a.info["n_layers"] == 2 and len(a) == 16
