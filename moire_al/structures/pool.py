"""Candidate pools following the recipe of seed 003 §II.3.2, seeded and reproducible.

Four families, each drawn from its own random stream ``default_rng([seed, family])``
so changing one family's size does not change the others:

1. rattled monolayers: n x n cells (n in ``monolayer_sizes``), each atom displaced
   by N(0, A²) per Cartesian component, A evenly spaced in [0, max_rattle · d_AB];
2. locally twisted bilayers: local angles evenly spread in [0°, max_local_angle];
   the parent is the cell (commensurate ``bilayer_cells`` or the untwisted
   ``bilayer_supercell``) whose θ_c is nearest; disregistries from the r1-covering
   of the local moiré cell (a ``zero_angle_grid``² grid of the unit cell at 0°),
   subsampled to ``max_shifts_per_angle`` when that is set;
3. random tri/quad/pentalayers: per-layer local rotations φ_k^c + U(−δ, δ),
   per-layer shifts uniform in the unit cell, interlayer distances U(2.7, 4.0) Å;
   half unrattled, half rattled with std U(rattle range) · d_AB.

For hBN every locally twisted / multilayer parent uses stacking AA' (B over N at
the centre) unless ``hbn_stacking`` says otherwise.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

import numpy as np

from moire_al.conventions import structure_hash
from moire_al.errors import StructureError
from moire_al.structures.lattice import bond_length, finalize, material_info, monolayer, multilayer
from moire_al.structures.local import (
    default_radii, disregistry_covering, locally_twisted, shift_grid,
)
from moire_al.structures.twisted import commensurate_angle, commensurate_cell, primitive_vectors

_FAMILY = {"monolayer": 1, "bilayer": 2, "multilayer": 3, "separation": 4}
#: stackings of the binding-curve family per material
SEPARATION_STACKINGS = {"graphene": ("AA", "AB", "SP"), "hbn": ("AA'", "AB", "AA")}


@dataclass
class PoolRecipe:
    """Sizes and ranges of a candidate pool (JSON-serialisable; lengths in Å, angles in degrees)."""

    monolayer_sizes: tuple = (1, 2, 3, 4)
    n_rattled_per_size: int = 4
    max_rattle: float = 0.15                 # × d_AB
    n_local_angles: int = 7
    max_local_angle: float = 30.0
    bilayer_cells: tuple = ((1, 1), (2, 1))  # commensurate parents (m, r)
    bilayer_supercell: int | None = 4        # untwisted n x n parent (θ_c = 0); None: not used
    bilayer_distance: float = 3.4
    max_shifts_per_angle: int | None = 4
    zero_angle_grid: int = 3
    n_trilayers: int = 4
    n_quadrilayers: int = 2
    n_pentalayers: int = 2
    multilayer_cells: tuple = ((1, 1),)
    multilayer_supercell: int | None = 3
    multilayer_max_local_dev: float = 4.0    # δ, degrees per layer
    interlayer_range: tuple = (2.7, 4.0)
    multilayer_rattle: tuple = (0.01, 0.05)  # × d_AB
    hbn_stacking: str = "AA'"
    # binding curves: untwisted bilayers of each high-symmetry stacking at interlayer
    # distances from compressed to beyond the model cutoff, so that a fitted model knows
    # where the layers bind and that the energy flattens when they part (without them a
    # linear ACE trained at 3.4 Å extrapolates to a spurious minimum near 4.5 Å)
    separation_range: tuple = (2.8, 7.0)
    n_separations: int = 8
    separation_supercell: int = 2
    separation_rattle: float = 0.02          # × d_AB
    n_separation_random: int = 0             # more: random registry, log-uniform distance

    @classmethod
    def small(cls) -> "PoolRecipe":
        """Demo/test pool: ~50 structures, every one ≤ 100 atoms (21.79°/13.17° and 3x3/4x4 parents)."""
        return cls()

    @classmethod
    def paper(cls) -> "PoolRecipe":
        """Seed-003-sized pool: 4,000 monolayers, 25 local angles with full coverings, 3 × 1,000 multilayers."""
        return cls(n_rattled_per_size=1000, n_local_angles=25, bilayer_cells=((1, 1), (2, 1), (3, 1)),
                   bilayer_supercell=6, max_shifts_per_angle=None, zero_angle_grid=4,
                   n_trilayers=1000, n_quadrilayers=1000, n_pentalayers=1000,
                   multilayer_cells=((1, 1), (2, 1)), multilayer_supercell=4)

    def as_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, d: dict) -> "PoolRecipe":
        names = {f.name for f in dataclasses.fields(cls)}
        for key in d:
            if key not in names:
                raise StructureError(f"unknown PoolRecipe key {key!r} (known: {', '.join(sorted(names))})")
        kw = {}
        for key, val in d.items():
            if key in ("bilayer_cells", "multilayer_cells"):
                val = tuple(tuple(int(x) for x in c) for c in val)
            elif isinstance(val, list):
                val = tuple(val)
            kw[key] = val
        return cls(**kw)


# A rattled candidate keeps every pair at least this fraction of the unrattled
# cell's shortest distance (the bond length) apart: at the seed's largest amplitude
# (0.15 d_AB per coordinate) an unguarded
# draw puts atoms 0.5 Å apart, which no labeller can (or should) compute.
MIN_RATTLE_DIST = 0.7
MAX_RATTLE_TRIES = 200


def _min_distance(atoms) -> float:
    from ase.neighborlist import neighbor_list

    d = neighbor_list("d", atoms, 1.5)
    return float(d.min()) if len(d) else np.inf


def _rattle(atoms, std, rng):
    """Add N(0, std²) to every coordinate; atoms left too close to another are redrawn."""
    from ase.neighborlist import neighbor_list

    if std <= 0:
        return atoms
    d_min = MIN_RATTLE_DIST * _min_distance(atoms)  # unrattled shortest distance = bond length
    start = atoms.positions.copy()
    disp = rng.normal(0.0, std, size=(len(atoms), 3))
    for _ in range(MAX_RATTLE_TRIES):
        atoms.positions = start + disp
        i, j = neighbor_list("ij", atoms, d_min)
        if len(i) == 0:
            break
        bad = np.unique(np.concatenate([i, j]))
        disp[bad] = rng.normal(0.0, std, size=(len(bad), 3))
    else:
        raise StructureError(f"could not rattle a {len(atoms)}-atom cell with std {std:.3f} Å without "
                             f"atoms closer than {MIN_RATTLE_DIST} x the bond length")
    atoms.wrap()
    return atoms


def _parents(cells, supercell):
    out = [(commensurate_angle(m, r), m, r, None) for m, r in cells]
    if supercell is not None:
        out.append((0.0, None, 1, int(supercell)))
    if not out:
        raise StructureError("the recipe lists no parent cells")
    return out


def _cell_length(a, m, r, supercell):
    if supercell is not None:
        return supercell * a
    M1 = commensurate_cell(m, r)[0]
    return float(np.linalg.norm(M1[0] @ primitive_vectors(a)))


def _tag(atoms, material, seed, family, index, generator, extra_params):
    params = json.loads(atoms.info["params"])
    params.update(extra_params)
    info = {k: v for k, v in atoms.info.items()
            if k not in ("generator", "params", "seed", "hash", "material", "n_layers")}
    return finalize(atoms, generator, params, material, seed=seed, pool_family=family, pool_index=int(index), **info)


def _monolayers(material, recipe, seed, rng):
    _, a, _, _ = material_info(material)
    out = []
    amps = np.linspace(0.0, recipe.max_rattle * bond_length(a), int(recipe.n_rattled_per_size))
    for n in recipe.monolayer_sizes:
        for amp in amps:
            at = _rattle(monolayer(material, n=int(n)), amp, rng)
            out.append(_tag(at, material, seed, "monolayer", len(out), "rattled_monolayer",
                            {"rattle_std": amp}))
    return out


def _bilayers(material, recipe, seed, rng):
    _, a, _, _ = material_info(material)
    stacking = recipe.hbn_stacking if material == "hbn" else "AA"
    if int(recipe.n_local_angles) <= 0:
        return []  # no bilayers asked for: no parent cells needed
    parents = _parents(recipe.bilayer_cells, recipe.bilayer_supercell)
    out = []
    for theta in np.linspace(0.0, recipe.max_local_angle, int(recipe.n_local_angles)):
        th_c, m, r, sc = min(parents, key=lambda p: abs(p[0] - theta))
        r1, r2 = default_radii(abs(theta - th_c) / 2, _cell_length(a, m, r, sc))
        if theta < 1e-9:
            shifts = np.stack([np.zeros((recipe.zero_angle_grid ** 2, 2)), shift_grid(recipe.zero_angle_grid, a)], 1)
        else:
            shifts = disregistry_covering(theta, r1, a=a, material=material, layer_shifts=True)
        if recipe.max_shifts_per_angle is not None and len(shifts) > recipe.max_shifts_per_angle:
            keep = np.sort(rng.choice(len(shifts), int(recipe.max_shifts_per_angle), replace=False))
            shifts = shifts[keep]
        for s in shifts:
            at = locally_twisted(material, float(theta), m=m, r=r, supercell=sc, shifts=s, r1=r1, r2=r2,
                                 distances=recipe.bilayer_distance, stacking=stacking)
            out.append(_tag(at, material, seed, "bilayer", len(out), "locally_twisted", {}))
    return out


def _multilayers(material, recipe, seed, rng):
    _, a, _, _ = material_info(material)
    stacking = recipe.hbn_stacking if material == "hbn" else "AA"
    if recipe.n_trilayers + recipe.n_quadrilayers + recipe.n_pentalayers <= 0:
        return []
    parents = _parents(recipe.multilayer_cells, recipe.multilayer_supercell)
    A = primitive_vectors(a)
    out = []
    for n_layers, count in ((3, recipe.n_trilayers), (4, recipe.n_quadrilayers), (5, recipe.n_pentalayers)):
        for k in range(int(count)):
            th_c, m, r, sc = parents[rng.integers(len(parents))]
            sigma = np.array([-1.0 if i % 2 == 0 else 1.0 for i in range(n_layers)])
            dev = recipe.multilayer_max_local_dev
            phis = sigma * th_c / 2 + rng.uniform(-dev, dev, n_layers)
            shifts = rng.uniform(0, 1, (n_layers, 2)) @ A
            shifts[0] = 0.0
            dists = rng.uniform(*recipe.interlayer_range, n_layers - 1)
            rattled = k % 2 == 1
            std = rng.uniform(*recipe.multilayer_rattle) * bond_length(a) if rattled else 0.0
            at = locally_twisted(material, None, m=m, r=r, supercell=sc, shifts=shifts, n_layers=n_layers,
                                 distances=dists, theta_locals=phis, stacking=stacking)
            _rattle(at, std, rng)
            out.append(_tag(at, material, seed, "multilayer", len(out), "random_multilayer",
                            {"rattle_std": std}))
    return out


def make_pool(material: str, recipe: PoolRecipe | None = None, seed: int = 0) -> list:
    """Generate the candidate pool for ``material`` ("graphene" or "hbn").

    Same (material, recipe, seed) → same structures and content hashes. Each
    structure carries generator, params (JSON), seed, hash, n_layers, material,
    pool_family and pool_index in ``info``.
    """
    material, _, _, _ = material_info(material)
    recipe = PoolRecipe.small() if recipe is None else recipe
    if isinstance(recipe, dict):
        recipe = PoolRecipe.from_dict(recipe)
    seed = int(seed)
    pool = []
    for family, func in (("monolayer", _monolayers), ("bilayer", _bilayers), ("multilayer", _multilayers),
                         ("separation", _separations)):
        rng = np.random.default_rng([seed, _FAMILY[family]])
        pool.extend(func(material, recipe, seed, rng))
    for i, at in enumerate(pool):
        at.info["pool_recipe"] = json.dumps(recipe.as_dict(), sort_keys=True, separators=(",", ":"))
    return pool


def _separations(material, recipe, seed, rng):
    """Binding curves: high-symmetry bilayers at geometrically spaced interlayer distances."""
    _, a, _, _ = material_info(material)
    n = int(recipe.n_separations)
    n_random = int(recipe.n_separation_random)
    if n <= 0 and n_random <= 0:
        return []
    lo, hi = (float(x) for x in recipe.separation_range)
    if not 0.0 < lo <= hi:
        raise StructureError(f"separation_range must be 0 < min <= max, got {recipe.separation_range}")
    out = []
    std = float(recipe.separation_rattle) * bond_length(a)
    cases = [(float(d), stacking, None) for d in (np.geomspace(lo, hi, n) if n > 0 else [])
             for stacking in SEPARATION_STACKINGS[material]]
    base = SEPARATION_STACKINGS[material][0]
    for _ in range(max(n_random, 0)):
        d = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
        cases.append((d, base, rng.uniform(0, 1, 2) @ primitive_vectors(a)))
    for d, stacking, shift in cases:
        shifts = None if shift is None else np.array([[0.0, 0.0], shift])
        at = multilayer(material, stacking, distances=d, n=int(recipe.separation_supercell), a=a,
                        shifts=shifts)
        _rattle(at, std, rng)
        extra = {"interlayer_distance": d, "rattle_std": std}
        out.append(_tag(at, material, seed, "separation", len(out), "binding_curve", extra))
    return out


# ------------------------------------------------------------------ pools from a file

#: info keys of a label (and its provenance) that a pool structure must not carry
_LABEL_INFO = ("REF_", "label_")


def pool_from_file(path, layers=None) -> list:
    """Candidates read from a (labelled) structure file, labels stripped.

    Each keeps its provenance (``pool_family``, ``hash`` …); ``layers`` keeps only
    structures with that many layers (e.g. ``[1, 2, 3]`` leaves out the quad/penta
    out-of-distribution split). Bad frames raise :class:`StructureError` naming them.
    """
    from moire_al.geometry import layer_count
    from moire_al.structures.io import read_structures

    out = []
    for at in read_structures(path):
        at = at.copy()
        for key in [k for k in at.info if k.startswith(_LABEL_INFO)]:
            del at.info[key]
        for key in [k for k in at.arrays if k.startswith("REF_")]:
            del at.arrays[key]
        at.calc = None
        if "layer" in at.arrays:
            at.info["n_layers"] = int(len(np.unique(at.arrays["layer"])))
        else:   # a user's file without moire-al's layer data: count the layers from the geometry
            at.info["n_layers"] = layer_count(at)
        at.info.setdefault("pool_family", "file")
        if layers is not None and int(at.info.get("n_layers", 0)) not in {int(n) for n in layers}:
            continue
        at.info["hash"] = structure_hash(at)
        out.append(at)
    if not out:
        raise StructureError(f"{path}: no structures left for the pool"
                             + (f" with {list(layers)} layers" if layers is not None else ""))
    return out


def fixed_test_split(hashes, n_test: int) -> list:
    """A held-out split that depends only on the structures, never on a loop's seed or on
    the file's order: the ``n_test`` hashes first in sha256 order. Every loop (and every
    benchmark) on the same file tests on the same structures."""
    import hashlib

    order = sorted(dict.fromkeys(hashes), key=lambda h: hashlib.sha256(f"test:{h}".encode()).hexdigest())
    return order[:max(int(n_test), 0)]
