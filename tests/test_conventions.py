"""Content hashes: the identities of structures and labels."""

import ase.io
import numpy as np

from moire_al.conventions import label_key, structure_hash
from moire_al.structures import make_pool, twisted_bilayer


def test_hash_survives_extxyz_round_trip(tmp_path):
    pool = make_pool("graphene", seed=3) + make_pool("hbn", seed=3)
    f = tmp_path / "pool.xyz"
    ase.io.write(f, pool, format="extxyz")
    back = ase.io.read(f, ":")
    assert [structure_hash(a) for a in pool] == [structure_hash(b) for b in back]


def test_hash_sees_geometry_species_and_cell_not_metadata():
    a = twisted_bilayer("graphene", m=1, r=1)
    h = structure_hash(a)
    b = a.copy()
    b.info["note"] = "metadata does not matter"
    assert structure_hash(b) == h
    b.positions[3, 2] += 1e-3
    assert structure_hash(b) != h
    c = a.copy()
    c.numbers[0] = 5
    assert structure_hash(c) != h
    d = a.copy()
    d.cell[2, 2] += 0.1
    assert structure_hash(d) != h
    e = a.copy()
    e.positions += np.where(e.positions == 0.0, -0.0, 0.0)  # signed zeros hash alike
    assert structure_hash(e) == h


def test_label_key_depends_on_settings():
    a = twisted_bilayer("graphene", m=1, r=1)
    k1 = label_key(a, "cp2k", {"cutoff": 280})
    assert k1 == label_key(a, "cp2k", {"cutoff": 280})
    assert k1 != label_key(a, "cp2k", {"cutoff": 400})
    assert k1 != label_key(a, "gpaw", {"cutoff": 280})
    assert k1.startswith(structure_hash(a))
