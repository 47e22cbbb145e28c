"""Lattices, stackings and commensurate twisted cells."""

import numpy as np
import pytest
from ase.neighborlist import neighbor_list

from moire_al.conventions import structure_hash
from moire_al.errors import StructureError
from moire_al.structures import (
    commensurate_angle, commensurate_cell, list_commensurate, moire_period, monolayer,
    multilayer, nearest_commensurate, twisted_bilayer, twisted_multilayer,
)

KNOWN = [  # (m, theta_deg, bilayer atoms), r = 1
    (1, 21.787, 28), (2, 13.174, 76), (3, 9.430, 148), (4, 7.341, 244), (5, 6.009, 364),
    (7, 4.408, 676), (10, 3.150, 1324), (30, 1.0845, 11164), (31, 1.0501, 11908),
]


def _nn(atoms, cutoff=1.6):
    i, j, d = neighbor_list("ijd", atoms, cutoff)
    return i, j, d


@pytest.mark.parametrize("material,a,dab", [("graphene", 2.46, 1.4203), ("hbn", 2.504, 1.4457)])
def test_monolayer_bonds_and_cell(material, a, dab):
    at = monolayer(material, n=3)
    assert len(at) == 18 and all(at.pbc)
    i, j, d = _nn(at)
    assert np.allclose(d, dab, atol=1e-4)
    assert np.bincount(i, minlength=len(at)).tolist() == [3] * len(at)  # threefold everywhere
    assert at.cell.volume > 0 and at.cell[2, 2] == pytest.approx(20.0)
    if material == "hbn":  # every bond is B–N
        assert set(zip(at.symbols[i], at.symbols[j])) <= {("B", "N"), ("N", "B")}
    assert monolayer(material, a=2.5).cell.lengths()[0] == pytest.approx(2.5)


def _overhead(at):
    """Lateral distance from each top-layer atom to the nearest bottom-layer atom, and its species."""
    top = at[at.arrays["layer"] == 1]
    bot = at[at.arrays["layer"] == 0]
    T = at.cell.array[:2, :2]
    imgs = np.array([[i, j] for i in (-1, 0, 1) for j in (-1, 0, 1)]) @ T
    pb = (bot.positions[None, :, :2] + imgs[:, None, :]).reshape(-1, 2)
    sb = np.tile(bot.get_chemical_symbols(), len(imgs))
    d = np.linalg.norm(top.positions[:, None, :2] - pb[None], axis=2)
    k = d.argmin(1)
    return d.min(1), sb[k], np.array(top.get_chemical_symbols())


def test_stackings_graphene():
    aa = multilayer("graphene", "AA", 3.6)
    assert np.allclose(_overhead(aa)[0], 0, atol=1e-9)
    ab = multilayer("graphene", "AB", 3.35)
    d = np.sort(_overhead(ab)[0])
    assert np.allclose(d, [0.0, 1.4203], atol=1e-4)  # one atom over an atom, one over a hexagon centre
    assert len(multilayer("graphene", "ABC", [3.35, 3.35])) == 6
    sp = multilayer("graphene", "SP", 3.4)
    assert np.all(_overhead(sp)[0] > 0.3)  # saddle point: no atom on top of another
    custom = multilayer("graphene", "AA", 3.4, shifts=[[0, 0], [0.5, 0.1]])
    assert np.allclose(custom.positions[2:, :2] - aa.positions[2:, :2], [0.5, 0.1], atol=1e-9)
    tri = multilayer("graphene", "AB", [3.3, 3.5])
    assert tri.info["n_layers"] == 3
    assert sorted(set(tri.positions[:, 2] - tri.positions[:, 2].min())) == pytest.approx([0, 3.3, 6.8])
    assert tri.cell[2, 2] == pytest.approx(6.8 + 20.0)


def test_stackings_hbn():
    d, below, above = _overhead(multilayer("hbn", "AA", 3.33))
    assert np.allclose(d, 0, atol=1e-9) and np.all(below == above)  # B over B, N over N
    d, below, above = _overhead(multilayer("hbn", "AA'", 3.33))
    assert np.allclose(d, 0, atol=1e-9) and np.all(below != above)  # B over N, N over B
    d, below, above = _overhead(multilayer("hbn", "AB", 3.33))
    on_top = d < 1e-6
    assert above[on_top].tolist() == ["B"] and below[on_top].tolist() == ["N"]
    d, below, above = _overhead(multilayer("hbn", "BA", 3.33))
    on_top = d < 1e-6
    assert above[on_top].tolist() == ["N"] and below[on_top].tolist() == ["B"]


@pytest.mark.parametrize("m,theta,n", KNOWN)
def test_commensurate_counts_and_angles(m, theta, n):
    assert commensurate_angle(m, 1) == pytest.approx(theta, abs=6e-4)
    M1, M2, n_atoms = commensurate_cell(m, 1)
    assert n_atoms == n and 4 * round(abs(np.linalg.det(M1))) == n and 4 * round(abs(np.linalg.det(M2))) == n


def test_twisted_bilayer_physics():
    at = twisted_bilayer("graphene", m=3, r=1, d=3.4)
    assert len(at) == 148 and at.info["theta_deg"] == pytest.approx(9.430, abs=1e-3)
    assert (at.arrays["layer"] == 0).sum() == (at.arrays["layer"] == 1).sum() == 74
    # Every atom is threefold coordinated within its own layer at 1.42 Å (no seams at the cell boundary).
    i, j, d = _nn(at)
    assert np.allclose(d, 2.46 / np.sqrt(3), atol=1e-9)
    assert np.all(at.arrays["layer"][i] == at.arrays["layer"][j])
    assert np.all(np.bincount(i, minlength=len(at)) == 3)
    # Orientation of each layer: bond directions at -θ/2 and +θ/2 (mod 60°).
    D = neighbor_list("D", at, 1.6)
    for layer, sign in ((0, -1), (1, 1)):
        sel = at.arrays["layer"][i] == layer
        ang = np.degrees(np.arctan2(D[sel, 1], D[sel, 0]))
        rel = (ang - 30 - sign * at.info["theta_deg"] / 2) % 60  # unrotated bonds point at 30° + k·60°
        assert np.allclose(np.minimum(rel, 60 - rel), 0, atol=1e-8)
    z = np.unique(np.round(at.positions[:, 2], 8))
    assert np.allclose(np.diff(z), 3.4) and at.info["n_layers"] == 2


def test_moire_period_formula_and_info():
    assert moire_period(1.08, 2.46) == pytest.approx(130.5, abs=0.1)  # 13.05 nm
    at = twisted_bilayer(m=2, r=1)
    th = np.radians(at.info["theta_deg"])
    assert at.info["moire_period"] == pytest.approx(2.46 / (2 * np.sin(th / 2)))
    # For r = 1 the supercell *is* the moiré cell: |T1| equals the moiré period.
    assert np.linalg.norm(at.cell[0]) == pytest.approx(at.info["moire_period"], rel=1e-12)
    assert at.info["m"] == 2 and at.info["r"] == 1 and at.info["material"] == "graphene"
    assert at.info["hash"] == structure_hash(at)


def test_angle_picks_nearest_cell_and_builds_the_large_cell():
    # its speed (goal < 2 s) is measured by benchmarks/structures.py
    assert nearest_commensurate(1.05) == (31, 1) and nearest_commensurate(1.08) == (30, 1)
    at = twisted_bilayer("graphene", angle=1.05)
    assert len(at) == 11908 and at.info["theta_deg"] == pytest.approx(1.0501, abs=1e-4)
    # no duplicated sites: all in-plane positions of a layer distinct
    xy = np.round(at.positions[at.arrays["layer"] == 0, :2], 4)
    assert len(np.unique(xy, axis=0)) == 11908 // 2


def test_r3_family_and_hbn_registry():
    at = twisted_bilayer("hbn", m=1, r=3, stacking="AA'")  # 38.21° = 60° - 21.79°
    assert len(at) == 28 and at.info["theta_deg"] == pytest.approx(38.2132, abs=1e-4)
    assert _nn(at)[2].min() == pytest.approx(2.504 / np.sqrt(3))
    for stacking, same in (("AA", True), ("AA'", False)):
        at = twisted_bilayer("hbn", m=4, r=1, stacking=stacking)
        d, below, above = _overhead(at)
        on_top = d < 1e-6  # the AA point at the cell corner
        assert on_top.sum() >= 1
        assert np.all((below[on_top] == above[on_top]) == same)
        assert at.get_chemical_formula() == "B122N122"


def test_list_commensurate():
    cells = list_commensurate(400, r_values=(1,))
    assert [c[3] for c in cells] == [28, 76, 148, 244, 364]
    allc = list_commensurate(200)
    assert all(n <= 200 for *_, n in allc)
    angles = [c[0] for c in allc]
    assert angles == sorted(angles, reverse=True)
    assert any(abs(t - 38.2132) < 1e-3 for t in angles)  # the r = 3 partner of 21.79°
    for th, m, r, n in allc:
        assert commensurate_cell(m, r)[2] == n
        assert len(twisted_bilayer(m=m, r=r)) == n


def test_alternating_trilayer():
    at = twisted_multilayer("graphene", 3, m=2, r=1, distances=[3.4, 3.5])
    assert len(at) == 114 and at.info["n_layers"] == 3
    l0 = at.positions[at.arrays["layer"] == 0, :2]
    l2 = at.positions[at.arrays["layer"] == 2, :2]
    assert np.allclose(np.sort(l0, axis=0), np.sort(l2, axis=0))  # layers 0 and 2 aligned (±θ alternating)
    assert np.allclose(np.unique(np.round(at.positions[:, 2], 6)) - 10.0, [0, 3.4, 6.9])


def test_bad_input_is_structure_error():
    for call in (lambda: commensurate_angle(2, 4), lambda: commensurate_angle(0, 1),
                 lambda: twisted_bilayer("graphite", m=1), lambda: twisted_bilayer(angle=0),
                 lambda: multilayer("graphene", "ABX", 3.4), lambda: monolayer(n=0)):
        with pytest.raises(StructureError):
            call()


def test_hash_reproducible():
    assert twisted_bilayer(m=5, r=1).info["hash"] == twisted_bilayer(m=5, r=1).info["hash"]
    assert twisted_bilayer(m=5, r=1).info["hash"] != twisted_bilayer(m=5, r=1, d=3.5).info["hash"]
