"""Small ASE-only structure generators for tests and benchmarks of the model.

(The project's real generators live in ``moire_al.structures``; these exist so the
model package can be tested and benchmarked on its own.)
"""

from __future__ import annotations

import numpy as np
from ase import Atoms


def layer(material: str = "graphene", n: int = 3, a: float | None = None, m: int | None = None) -> Atoms:
    """An n x m (default n x n) hexagonal monolayer, 2 atoms per primitive cell, z = 0."""
    a = a or (2.46 if material == "graphene" else 2.504)
    cell = np.array([[a, 0, 0], [a / 2, a * np.sqrt(3) / 2, 0], [0, 0, 20.0]])
    frac = np.array([[1 / 3, 1 / 3, 0], [2 / 3, 2 / 3, 0]])
    sym = "CC" if material == "graphene" else "BN"
    at = Atoms(sym, scaled_positions=frac, cell=cell, pbc=True)
    return at * (n, m or n, 1)


def stacked(material="graphene", n_layers=2, n=3, d=3.4, shifts=None, a=None, vacuum=16.0,
            rattle=0.0, seed=0, strain=0.0, m=None) -> Atoms:
    """n_layers layers, separation d (Å, scalar or list), in-plane shifts (Å, (n_layers, 2))."""
    rng = np.random.default_rng(seed)
    base = layer(material, n, a, m)
    ds = np.broadcast_to(np.asarray(d, float), (max(n_layers - 1, 1),))
    out = None
    z = 0.0
    for k in range(n_layers):
        lay = base.copy()
        if shifts is not None:
            lay.positions[:, :2] += np.asarray(shifts)[k]
        lay.positions[:, 2] = z
        if k < n_layers - 1:
            z += ds[k]
        out = lay if out is None else out + lay
    out.arrays["layer"] = np.repeat(np.arange(n_layers), len(base))
    cell = out.cell.array.copy()
    cell[2, 2] = z + vacuum
    out.set_cell(cell)
    out.positions[:, 2] += vacuum / 2 - z / 2
    if strain:
        out.set_cell(out.cell.array * np.array([[1 + strain] * 3, [1 + strain] * 3, [1, 1, 1]]),
                     scale_atoms=True)
    if rattle:
        out.positions += rng.normal(0.0, rattle, out.positions.shape)
    out.wrap()
    out.info["n_layers"] = n_layers
    out.info["material"] = material
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
    from moire_al.conventions import REF_D3, REF_ENERGY, REF_FORCES, REF_STRESS

    out = []
    for at in atoms_list:
        at = at.copy()
        at.calc = calc
        try:
            e, f = at.get_potential_energy(), at.get_forces()
        except Exception:
            if skip_failures:
                continue
            raise
        try:
            s = at.get_stress()
        except Exception:
            s = None
        at.calc = None
        at.info[REF_ENERGY] = float(e)
        at.arrays[REF_FORCES] = np.array(f)
        if s is not None:
            at.info[REF_STRESS] = np.array(s)
        at.info[REF_D3] = bool(d3_included)
        out.append(at)
    return out
