"""The model against real DFT: a small fit on a slice of the committed CP2K set
(data/dft/graphene.extxyz) must predict its held-out slice within a measured bound."""

from __future__ import annotations

from pathlib import Path

import ase.io
import pytest

from moire_al.conventions import structure_hash
from moire_al.models import ACEModel
from moire_al.models.metrics import rmse_table
from moire_al.structures.pool import fixed_test_split

GRAPHENE = Path(__file__).resolve().parent.parent / "data" / "dft" / "graphene.extxyz"
#: measured 0.066 eV/Å (order 3, degree 10, 28 train / 8 test bilayers); bound with margin
BILAYER_F_RMSE_BOUND = 0.10


def _bilayer_slice():
    """The 36 bilayers of <= 40 atoms from the shared starting set (a fixed slice: the
    set grows, this part of it does not), split by the fixed held-out rule."""
    data = [a for a in ase.io.read(GRAPHENE, ":", format="extxyz")
            if a.info.get("label_source") and int(a.info["n_layers"]) == 2 and len(a) <= 40]
    hashes = [structure_hash(a) for a in data]
    test = set(fixed_test_split(hashes, 8))
    return ([a for a, h in zip(data, hashes) if h not in test], [a for a, h in zip(data, hashes) if h in test])


@pytest.mark.slow
def test_fit_on_dft_bilayers_predicts_held_out_bilayers():
    train, test = _bilayer_slice()
    assert (len(train), len(test)) == (28, 8)
    model = ACEModel(order=3, totaldegree=10, d3=True, committee_size=4).fit(train)
    table = rmse_table(model, test)["all"]
    assert table["F_eV_per_A"] < BILAYER_F_RMSE_BOUND, table
    # D3 is part of the model: without it the interlayer forces are far off
    no_d3 = rmse_table(model, test, [model.predict_one(a, committee=False, stress=False, d3=False)
                                     for a in test])["all"]
    assert no_d3["F_outofplane_eV_per_A"] > table["F_outofplane_eV_per_A"]
