"""Small structures for the labelling tests and benchmarks, from moire_al.structures.

Cells follow the project's conventions: periodic in x, y and z with vacuum along z,
``arrays["layer"]``, ``info["material"]``.
"""

from __future__ import annotations

from moire_al.structures import multilayer, twisted_multilayer


def stacked(material: str = "graphene", stacking: str = "AB", d: float = 3.4, n: int = 1,
            n_layers: int | None = None, vacuum: float = 20.0):
    """Untwisted stack: ``stacking`` is a string of A/B/C per layer ("A", "AB", "ABA", "AA'")."""
    if n_layers is None:
        n_layers = 2 if stacking.upper() in ("AA'",) else sum(c in "ABC" for c in stacking.upper())
    at = multilayer(material, stacking, distances=d, n=n, n_layers=n_layers, vacuum=vacuum)
    at.info["generator"] = f"stacked_{stacking}"
    return at


def twisted_21_79(material: str = "graphene", d: float = 3.4, n_layers: int = 2, vacuum: float = 20.0):
    """The 21.79° twisted stack (m=1, r=1): 14 atoms per layer, AA-aligned at the origin
    (AA' for hBN); layers alternate -θ/2, +θ/2, ... (28 atoms for a bilayer)."""
    return twisted_multilayer(material, n_layers, m=1, r=1, distances=d,
                              stacking="AA'" if material == "hbn" else "AA", vacuum=vacuum)
