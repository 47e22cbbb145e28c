"""Locally twisted cells, disregistry coverings, defects, pools and input validation."""

import json

import numpy as np
import pytest
from ase import Atoms
from ase.neighborlist import neighbor_list

from moire_al.conventions import structure_hash
from moire_al.errors import StructureError
from moire_al.structures import (
    disregistry_covering, locally_twisted, min_intralayer_distance, moire_vectors, multilayer,
    twisted_bilayer,
)
from moire_al.structures.defects import (
    interstitial_interlayer, interstitial_intralayer, stone_wales, vacancy,
)
from moire_al.structures.io import read_structures, validate_structure, write_structures
from moire_al.structures.local import _min_image_offsets, local_lattice_residual
from moire_al.structures.pool import PoolRecipe, make_pool


def _core_angle(atoms, layer, shift, radius):
    """Rotation angle (rad) of the layer's atoms within ``radius`` of the centre, fitted from positions.

    Each atom's offset from the centre is compared with the nearest ideal site of
    the unrotated lattice; the best rigid rotation (Procrustes) is returned.
    """
    from moire_al.structures.lattice import basis_frac, primitive_vectors, rotation

    a, T, C = atoms.info["a"], atoms.cell.array[:2, :2], np.asarray(atoms.info["centre"])
    x = _min_image_offsets(atoms.positions[atoms.arrays["layer"] == layer, :2] - shift, C, T)
    x = x[(np.linalg.norm(x, axis=1) <= radius) & (np.linalg.norm(x, axis=1) > 0.5)]
    guess = np.radians(atoms.info["theta_local_deg"]) / 2 * (-1 if layer % 2 == 0 else 1)
    A = primitive_vectors(a)
    g = np.linalg.solve(A.T, (x @ rotation(-guess).T).T).T  # undo roughly, then snap to ideal sites
    ideal = []
    for gi in g:
        cands = [np.round(gi - b) + b for b in basis_frac()]
        ideal.append(min(cands, key=lambda c: np.linalg.norm((gi - c) @ A)) @ A)
    ideal = np.array(ideal)
    num = np.sum(ideal[:, 0] * x[:, 1] - ideal[:, 1] * x[:, 0])
    den = np.sum(ideal[:, 0] * x[:, 0] + ideal[:, 1] * x[:, 1])
    return np.arctan2(num, den), len(x)


@pytest.mark.parametrize("theta_local,m", [(12.0, 3), (6.5, 3), (20.0, 1), (3.0, 4)])
def test_local_twist_and_shift_recovered(theta_local, m):
    shift = np.array([0.37, -0.21])
    at = locally_twisted("graphene", theta_local, m=m, r=1, shifts=shift)
    r1 = at.info["r1"]
    th0, n0 = _core_angle(at, 0, np.zeros(2), r1)
    th1, n1 = _core_angle(at, 1, shift, r1)
    assert n0 >= 2 and n1 >= 2
    assert abs(th0 - np.radians(-theta_local / 2)) < 1e-6
    assert abs(th1 - np.radians(theta_local / 2)) < 1e-6
    assert abs((th1 - th0) - np.radians(theta_local)) < 1e-6
    # the core of layer 1 sits on the shifted lattice; a wrong shift does not fit
    assert local_lattice_residual(at, 1, theta_local / 2, shift, r1) < 1e-9
    assert local_lattice_residual(at, 1, theta_local / 2, shift + [0.2, 0], r1) > 0.1


def test_outside_r2_parent_untouched_and_periodic():
    parent = twisted_bilayer(m=3, r=1)
    at = locally_twisted("graphene", 12.0, m=3, r=1)
    # the same parent, re-centred: atoms beyond r2 coincide with a parent site (mod the cell)
    T, C = at.cell.array[:2, :2], np.asarray(at.info["centre"])
    x = _min_image_offsets(at.positions[:, :2], C, T)
    far = np.linalg.norm(x, axis=1) > at.info["r2"] + 1e-9
    assert far.sum() > 0
    ref = parent.positions[:, :2] + C  # parent has its AA point at the corner; move it to the centre
    for k in np.where(far)[0]:
        d = np.linalg.norm(_min_image_offsets(ref[parent.arrays["layer"] == at.arrays["layer"][k]],
                                              at.positions[k, :2], T), axis=1)
        assert d.min() < 1e-9
    # periodic: every atom keeps three in-layer neighbours, none closer than in the parent
    i, j, d = neighbor_list("ijd", at, 1.7)
    same = at.arrays["layer"][i] == at.arrays["layer"][j]
    assert np.all(np.bincount(i[same], minlength=len(at)) == 3)
    assert neighbor_list("d", at, 3.0).min() >= neighbor_list("d", parent, 3.0).min() - 0.11


@pytest.mark.parametrize("material", ["graphene", "hbn"])
def test_min_distance_over_supported_range(material):
    for m, th_c in ((1, 21.787), (2, 13.174)):
        for dtheta in np.linspace(-13.5, 13.5, 7):
            at = locally_twisted(material, th_c + dtheta, m=m, r=1)
            assert min_intralayer_distance(at) >= 1.2
            assert len(at) == (28 if m == 1 else 76)
    at = locally_twisted(material, 13.0, supercell=4)
    assert min_intralayer_distance(at) >= 1.2


def test_clear_errors_outside_range():
    with pytest.raises(StructureError, match="too large"):
        locally_twisted("graphene", 0.0, m=1, r=1)  # 21.8° away from the parent
    with pytest.raises(StructureError, match="r1 < r2"):
        locally_twisted("graphene", 20.0, m=1, r=1, r1=2.0, r2=5.0)  # r2 beyond L/2
    with pytest.raises(StructureError, match="intralayer distance"):
        locally_twisted("graphene", 30.0, m=3, r=1, r1=4.0, r2=4.3)  # steep ramp tears bonds


def test_hbn_local_default_is_aa_prime_and_trilayer():
    at = locally_twisted("hbn", 12.0, m=2, r=1)
    assert at.info["stacking"] == "AA'"
    sel0, sel1 = at.arrays["layer"] == 0, at.arrays["layer"] == 1
    c0 = at.positions[sel0][np.argmin(np.linalg.norm(at.positions[sel0, :2] - at.info["centre"], axis=1))]
    c1 = at.positions[sel1][np.argmin(np.linalg.norm(at.positions[sel1, :2] - at.info["centre"], axis=1))]
    z0 = at.numbers[sel0][np.argmin(np.linalg.norm(at.positions[sel0, :2] - at.info["centre"], axis=1))]
    z1 = at.numbers[sel1][np.argmin(np.linalg.norm(at.positions[sel1, :2] - at.info["centre"], axis=1))]
    assert np.allclose(c0[:2], c1[:2]) and {z0, z1} == {5, 7}  # B over N at the centre
    tri = locally_twisted("graphene", 10.0, m=2, r=1, n_layers=3, distances=[3.3, 3.6])
    assert len(tri) == 114 and tri.info["n_layers"] == 3
    for layer, ang in ((0, -5.0), (1, 5.0), (2, -5.0)):
        assert local_lattice_residual(tri, layer, ang, [0, 0], tri.info["r1"]) < 1e-9


def test_covering_property_and_counts():
    a = 2.46
    counts = []
    for theta, r1 in ((2.0, 3.0), (5.0, 3.0), (12.0, 2.0), (30.0, 1.5)):
        s, y = disregistry_covering(theta, r1, a=a, return_positions=True)
        Am = moire_vectors(theta, a)
        # dense probe of the moiré cell; distance to the nearest grid point with periodic images
        u = np.linspace(0, 1, 41)
        probe = np.stack(np.meshgrid(u, u), -1).reshape(-1, 2) @ Am
        imgs = np.array([[i, j] for i in (-1, 0, 1) for j in (-1, 0, 1)]) @ Am
        pts = (y[None] + imgs[:, None]).reshape(-1, 2)
        dist = np.linalg.norm(probe[:, None] - pts[None], axis=2).min(1)
        assert dist.max() <= r1 + 1e-9
        counts.append(len(s))
        assert np.all(np.linalg.norm(s, axis=1) < 2 * a)  # disregistries live in a unit cell
    assert counts == sorted(counts, reverse=True) and counts[0] > counts[-1]


def test_covering_shift_reproduces_moire_position():
    """With the per-layer shifts of grid point y, the core equals the rigid moiré around y."""
    theta, m = 9.0, 3
    at0 = locally_twisted("graphene", theta, m=m, r=1)
    shifts, y = disregistry_covering(theta, at0.info["r1"], layer_shifts=True, return_positions=True)
    k = len(y) // 2
    at = locally_twisted("graphene", theta, m=m, r=1, shifts=shifts[k])
    for layer, ang in ((0, -theta / 2), (1, theta / 2)):
        # the rigid moiré (layers at ∓θ/2 about the origin) translated by −y
        assert local_lattice_residual(at, layer, ang, shifts[k][layer], at.info["r1"], lattice_offset=-y[k]) < 1e-8
    # a different grid point is a different part of the moiré
    assert local_lattice_residual(at, 1, theta / 2, shifts[k][1], at.info["r1"], lattice_offset=-y[k - 1]) > 0.1


def test_defects():
    base = multilayer("graphene", "AB", 3.35, n=4)
    v = vacancy(base, layer=1)
    assert len(v) == 63 and (v.arrays["layer"] == 1).sum() == 31 and v.info["generator"] == "vacancy"
    assert json.loads(v.info["params"])["parent_hash"] == base.info["hash"]
    sw = stone_wales(base, layer=0)
    moved = np.where(np.linalg.norm(sw.positions - base.positions, axis=1) > 1e-6)[0]
    assert len(moved) == 2
    b_old = base.positions[moved[1], :2] - base.positions[moved[0], :2]
    b_new = sw.positions[moved[1], :2] - sw.positions[moved[0], :2]
    assert abs(np.dot(b_old, b_new)) < 1e-9 and np.linalg.norm(b_new) == pytest.approx(np.linalg.norm(b_old))
    ii = interstitial_intralayer(base, layer=0)
    assert len(ii) == 65 and ii.arrays["layer"][-1] == 0 and ii.positions[-1, 2] == pytest.approx(base.positions[0, 2])
    assert neighbor_list("d", ii, 1.3).size == 0  # no atom closer than 1.3 Å
    ie = interstitial_interlayer(base, layer=0)
    assert ie.positions[-1, 2] == pytest.approx(base.positions[0, 2] + 3.35 / 2)
    for d in (v, sw, ii, ie):
        validate_structure(d)
        assert d.info["hash"] == structure_hash(d) != base.info["hash"]
    with pytest.raises(StructureError):
        interstitial_interlayer(base, layer=1)
    with pytest.raises(StructureError):
        vacancy(base, layer=0, site=int(np.where(base.arrays["layer"] == 1)[0][0]))


def test_pool_small_reproducible_and_bounded(tmp_path):
    for material in ("graphene", "hbn"):
        pool = make_pool(material, PoolRecipe.small(), seed=7)
        assert 60 <= len(pool) <= 100 and max(len(a) for a in pool) <= 100
        gens = {a.info["generator"] for a in pool}
        assert gens == {"rattled_monolayer", "locally_twisted", "random_multilayer", "binding_curve"}
        assert {a.info["n_layers"] for a in pool} == {1, 2, 3, 4, 5}
        hashes = [a.info["hash"] for a in pool]
        assert len(set(hashes)) == len(hashes)
        assert hashes == [a.info["hash"] for a in make_pool(material, PoolRecipe.small(), seed=7)]
        assert hashes != [a.info["hash"] for a in make_pool(material, PoolRecipe.small(), seed=8)]
        for at in pool:
            assert at.info["hash"] == structure_hash(at) and at.info["material"] == material
            assert at.info["seed"] == 7 and json.loads(at.info["params"])
        if material == "hbn":
            assert all(a.info["stacking"] == "AA'" for a in pool
                       if a.info["generator"] in ("locally_twisted", "random_multilayer"))
    # local angles spread over [0, 30] and multilayer distances within [2.7, 4.0]
    angles = sorted({round(a.info["theta_local_deg"], 6) for a in pool if a.info["generator"] == "locally_twisted"})
    assert angles[0] == 0 and angles[-1] == 30 and len(angles) == 7
    for at in (a for a in pool if a.info["generator"] == "random_multilayer"):
        d = json.loads(at.info["params"])["distances"]
        assert all(2.7 <= x <= 4.0 for x in d)
    path = tmp_path / "pool.xyz"
    write_structures(path, pool)
    back = read_structures(path)
    # provenance survives the file; positions to the file's precision (1e-8 Å)
    assert [a.info["hash"] for a in back] == [a.info["hash"] for a in pool]
    assert all(np.allclose(a.positions, b.positions, atol=1e-7) for a, b in zip(back, pool))
    assert np.array_equal(back[5].arrays["layer"], pool[5].arrays["layer"])


def test_pool_recipe_json():
    r = PoolRecipe.paper()
    d = json.loads(json.dumps(r.as_dict()))
    assert PoolRecipe.from_dict(d) == r
    with pytest.raises(StructureError, match="n_trilayer"):
        PoolRecipe.from_dict({"n_trilayer": 3})


def test_validation_rejects_bad_input(tmp_path):
    good = twisted_bilayer(m=1)
    validate_structure(good)
    nocell = Atoms("C2", positions=[[0, 0, 0], [1.4, 0, 0]])
    close = good.copy()
    close.positions[1] = close.positions[0] + [0.3, 0, 0]
    nan = good.copy()
    nan.positions[3, 0] = np.nan
    alien = good.copy()
    alien.symbols[0] = "Si"
    for atoms, msg in ((nocell, "cell"), (close, "overlap"), (nan, "NaN"), (alien, "Si")):
        with pytest.raises(StructureError, match=msg) as err:
            validate_structure(atoms, "x")
        assert "\n" not in str(err.value)
    path = tmp_path / "bad.xyz"
    write_structures(path, [good, close])
    with pytest.raises(StructureError, match=r"bad.xyz\[1\]"):
        read_structures(path)
    with pytest.raises(StructureError, match="no such file"):
        read_structures(tmp_path / "missing.xyz")
