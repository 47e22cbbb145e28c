"""Timing of structure generation: default (small) pool and the large twisted cells.

Run: .venv/bin/python benchmarks/structures.py

Goals (they were wall-clock assertions in tests/test_structures_*.py; tests assert no
timings): a 1.05° twisted bilayer (11,908 atoms) in < 2 s, and the whole
``moire-al build twisted --angle 1.05`` command (interpreter start, imports, writing the
file) in < 10 s. Baseline from the same run: ASE's ``make_supercell`` of the 2-atom
graphene cell to a flat layer with about as many atoms (no twist, no commensurability
search). Ends with one JSON line of all figures.
"""

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from ase.build import make_supercell

from moire_al.structures import monolayer, twisted_bilayer
from moire_al.structures.pool import PoolRecipe, make_pool

GOAL_TWISTED_S = 2.0
GOAL_CLI_S = 10.0


def main() -> None:
    figures = {}
    for material in ("graphene", "hbn"):
        t = time.perf_counter()
        pool = make_pool(material, PoolRecipe.small(), seed=0)
        dt = time.perf_counter() - t
        figures[f"pool_{material}_s"] = round(dt, 3)
        print(f"default pool {material:8s}: {len(pool):3d} structures, {sum(len(a) for a in pool):5d} atoms, "
              f"max {max(len(a) for a in pool)} atoms/structure, {dt:.2f} s")
    for angle in (1.0845, 1.05):
        t = time.perf_counter()
        at = twisted_bilayer("graphene", angle=angle)
        dt = time.perf_counter() - t
        figures[f"twisted_{angle}_s"] = round(dt, 3)
        figures[f"twisted_{angle}_atoms"] = len(at)
        print(f"twisted bilayer {at.info['theta_deg']:.4f} deg: {len(at)} atoms in {dt:.3f} s")
    n = int(round(np.sqrt(figures["twisted_1.05_atoms"] / 2)))
    t = time.perf_counter()
    flat = make_supercell(monolayer("graphene"), np.diag([n, n, 1]))
    base = time.perf_counter() - t
    figures["baseline_ase_supercell_s"] = round(base, 3)
    figures["baseline_ase_supercell_atoms"] = len(flat)
    print(f"baseline: ASE make_supercell {n}x{n} graphene, {len(flat)} atoms in {base:.3f} s")
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        subprocess.run([str(Path(sys.executable).with_name("moire-al")), "build", "twisted", "--material",
                        "graphene", "--angle", "1.05", "-o", str(Path(tmp) / "tbg.xyz")], check=True,
                       capture_output=True)
        figures["cli_build_1.05_s"] = round(time.perf_counter() - t, 3)
    ok_t = figures["twisted_1.05_s"] < GOAL_TWISTED_S
    ok_c = figures["cli_build_1.05_s"] < GOAL_CLI_S
    figures["goal_twisted_met"], figures["goal_cli_met"] = ok_t, ok_c
    print(f"goal: 1.05 deg bilayer < {GOAL_TWISTED_S} s: {figures['twisted_1.05_s']:.2f} s "
          f"({'met' if ok_t else 'MISSED'}); `moire-al build twisted --angle 1.05` < {GOAL_CLI_S} s: "
          f"{figures['cli_build_1.05_s']:.2f} s ({'met' if ok_c else 'MISSED'})")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
