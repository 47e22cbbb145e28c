"""Timing of structure generation: default (small) pool and the large twisted cells.

Run: .venv/bin/python benchmarks/structures.py
"""

import time

from moire_al.structures import twisted_bilayer
from moire_al.structures.pool import PoolRecipe, make_pool


def main() -> None:
    for material in ("graphene", "hbn"):
        t = time.perf_counter()
        pool = make_pool(material, PoolRecipe.small(), seed=0)
        dt = time.perf_counter() - t
        print(f"default pool {material:8s}: {len(pool):3d} structures, {sum(len(a) for a in pool):5d} atoms, "
              f"max {max(len(a) for a in pool)} atoms/structure, {dt:.2f} s")
    for angle in (1.0845, 1.05):
        t = time.perf_counter()
        at = twisted_bilayer("graphene", angle=angle)
        print(f"twisted bilayer {at.info['theta_deg']:.4f} deg: {len(at)} atoms in {time.perf_counter() - t:.3f} s")


if __name__ == "__main__":
    main()
