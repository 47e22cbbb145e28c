"""Input checks: every problem names the structure it was found in."""

from __future__ import annotations

import numpy as np

from moire_al.conventions import REF_ENERGY, REF_FORCES, REF_STRESS
from moire_al.errors import ModelError


def structure_name(atoms, index=None) -> str:
    """A short, human-readable name: index, formula and hash/generator when known."""
    parts = []
    if index is not None:
        parts.append(f"#{index}")
    parts.append(atoms.get_chemical_formula())
    for key in ("hash", "name", "generator"):
        if key in atoms.info:
            parts.append(f"{key}={atoms.info[key]}")
            break
    return " ".join(parts)


def _elements_ok(atoms, name, elements):
    if elements is None:
        return
    from ase.data import chemical_symbols

    missing = sorted(set(int(z) for z in atoms.numbers) - set(int(z) for z in elements))
    if missing:
        have = ",".join(chemical_symbols[z] for z in elements)
        raise ModelError(f"structure {name}: element(s) {','.join(chemical_symbols[z] for z in missing)} "
                         f"not in the model (elements: {have})")


def validate_unlabelled(atoms, name, elements=None) -> None:
    if isinstance(name, int):
        name = structure_name(atoms, name)
    if len(atoms) == 0:
        raise ModelError(f"structure {name}: no atoms")
    if not np.all(np.isfinite(atoms.positions)):
        raise ModelError(f"structure {name}: non-finite positions")
    if atoms.cell.rank < 3 or abs(np.linalg.det(atoms.cell.array)) < 1e-6:
        raise ModelError(f"structure {name}: no (or a degenerate) cell; the model needs a 3D cell "
                         "(periodic in-plane, vacuum along z)")
    _elements_ok(atoms, name, elements)


def validate_labelled(atoms, index, elements=None) -> None:
    name = structure_name(atoms, index)
    validate_unlabelled(atoms, name, elements)
    if REF_ENERGY not in atoms.info or REF_FORCES not in atoms.arrays:
        raise ModelError(f"structure {name}: missing labels ({REF_ENERGY} / {REF_FORCES})")
    e = atoms.info[REF_ENERGY]
    try:
        e = float(e)
    except (TypeError, ValueError):
        raise ModelError(f"structure {name}: {REF_ENERGY} is not a number: {e!r}") from None
    if not np.isfinite(e):
        raise ModelError(f"structure {name}: {REF_ENERGY} is NaN/inf")
    f = np.asarray(atoms.arrays[REF_FORCES], float)
    if f.shape != (len(atoms), 3):
        raise ModelError(f"structure {name}: {REF_FORCES} has shape {f.shape}, expected ({len(atoms)}, 3)")
    if not np.all(np.isfinite(f)):
        bad = np.nonzero(~np.isfinite(f).all(1))[0]
        raise ModelError(f"structure {name}: {REF_FORCES} has NaN/inf on atom(s) {bad[:5].tolist()}")
    if REF_STRESS in atoms.info:
        s = np.asarray(atoms.info[REF_STRESS], float).reshape(-1)
        if s.shape != (6,) or not np.all(np.isfinite(s)):
            raise ModelError(f"structure {name}: {REF_STRESS} must be 6 finite Voigt components, got {s}")
