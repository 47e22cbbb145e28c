"""Small structures for the model's tests and benchmarks: the project's own builders
(:mod:`moire_al.structures`) plus rattle, strain and labels from a calculator."""

from __future__ import annotations

import numpy as np

from moire_al.conventions import put_label
from moire_al.structures import multilayer


def stacked(material="graphene", n_layers=2, n=3, d=3.4, shifts=None, a=None, vacuum=16.0,
            rattle=0.0, seed=0, strain=0.0, m=None):
    """n_layers AA-stacked layers (n x m cells), separation d (Å, scalar or list), extra
    in-plane shifts (Å, (n_layers, 2)), in-plane strain, Gaussian rattle (Å)."""
    rng = np.random.default_rng(seed)
    d = np.asarray(d, float)
    out = multilayer(material, "AA", distances=d if d.size > 1 else float(d.ravel()[0]), n=(n, m or n), a=a,
                     shifts=None if shifts is None else np.asarray(shifts, float)[:n_layers], n_layers=n_layers,
                     vacuum=vacuum)
    out.info = {"n_layers": n_layers, "material": material}
    if strain:
        out.set_cell(out.cell.array * np.array([[1 + strain] * 3, [1 + strain] * 3, [1, 1, 1]]),
                     scale_atoms=True)
    if rattle:
        out.positions += rng.normal(0.0, rattle, out.positions.shape)
    out.wrap()
    return out


def random_set(material="graphene", count=20, seed=0, n=3, layers=(1, 2), rattle=(0.0, 0.12),
               d=(3.0, 3.9)) -> list:
    """count structures: random layer count, interlayer distance, registry shift and rattle."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(count):
        nl = int(rng.choice(layers))
        a0 = 2.46 if material == "graphene" else 2.504
        shifts = np.vstack([[0, 0], rng.uniform(0, a0, (max(nl - 1, 0), 2))])[:nl]
        out.append(stacked(material, nl, n, d=rng.uniform(*d, size=max(nl - 1, 1)), shifts=shifts,
                           rattle=rng.uniform(*rattle), seed=int(rng.integers(1 << 30)),
                           strain=rng.uniform(-0.02, 0.02)))
    return out


def label(atoms_list, calc, d3_included=False, skip_failures=False) -> list:
    """Copies of the structures with REF_ labels from an ASE calculator."""
    out = []
    for at in atoms_list:
        work = at.copy()
        work.calc = calc
        try:
            e, f = work.get_potential_energy(), work.get_forces()
        except Exception:
            if skip_failures:
                continue
            raise
        try:
            s = work.get_stress()
        except Exception:
            s = None
        out.append(put_label(at, e, f, s, d3_included))
    return out
