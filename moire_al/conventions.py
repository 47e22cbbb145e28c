"""Conventions shared by every package: label keys on ``Atoms`` and content hashes.

Labelled structures carry their reference data under ``REF_`` keys so they never
mix with a calculator's results when written to / read from extxyz:

- ``atoms.info["REF_energy"]``   total energy, eV
- ``atoms.arrays["REF_forces"]`` forces, eV/Å, shape (N, 3)
- ``atoms.info["REF_stress"]``   stress, eV/Å³, Voigt order (xx, yy, zz, yz, xz, xy),
  ASE sign convention (positive = tensile)
- ``atoms.info["REF_d3"]``       True when the label already contains D3(BJ) dispersion
- ``atoms.info["REF_labeller"]`` name of the code that made the label

A structure's identity is :func:`structure_hash`; a label's identity is
:func:`label_key` (structure + labeller settings), so a structure is never labelled
twice with the same settings.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Mapping

import numpy as np

REF_ENERGY = "REF_energy"
REF_FORCES = "REF_forces"
REF_STRESS = "REF_stress"
REF_D3 = "REF_d3"
REF_LABELLER = "REF_labeller"

# Positions and cells are rounded to this many decimals (Å) before hashing.
HASH_DECIMALS = 5


def _round(x: np.ndarray) -> np.ndarray:
    """Quantise coordinates so a round trip through extxyz keeps the hash.

    extxyz writes positions as ``%.8f``; rounding the raw floats to 5 decimals could
    fall on the other side of a tie than rounding the 8-decimal text read back (seen
    in 2 of 52 pool structures). Going through the same ``%.8f`` text first makes
    both paths identical; +0.0 folds -0.0 into 0.0.
    """
    x = np.asarray(x, dtype=float)
    as_written = np.char.mod("%.8f", x).astype(float)
    return np.round(as_written, HASH_DECIMALS) + 0.0


def structure_hash(atoms) -> str:
    """Content hash of a structure: species, positions, cell and periodicity.

    Independent of ``info``/``arrays`` metadata and of any calculator.
    """
    h = hashlib.sha256()
    h.update(np.asarray(atoms.numbers, dtype=np.int64).tobytes())
    h.update(_round(atoms.positions).tobytes())
    h.update(_round(atoms.cell.array).tobytes())
    h.update(np.asarray(atoms.pbc, dtype=np.int8).tobytes())
    return h.hexdigest()[:24]


def settings_hash(settings: Mapping[str, Any]) -> str:
    """Stable hash of a JSON-serialisable settings mapping."""
    blob = json.dumps(settings, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def label_key(atoms, labeller: str, settings: Mapping[str, Any]) -> str:
    """Identity of one label: structure hash + labeller name + settings hash."""
    return f"{structure_hash(atoms)}-{labeller}-{settings_hash(settings)}"


def has_label(atoms) -> bool:
    return REF_ENERGY in atoms.info and REF_FORCES in atoms.arrays


def put_label(atoms, energy: float, forces, stress=None, d3_included: bool = False, labeller: str = ""):
    """A copy of ``atoms`` (no calculator) carrying a label under the ``REF_`` keys: the
    one place labels are put on structures (label records, the store, the tests)."""
    forces = np.array(forces, dtype=float)
    if forces.shape != (len(atoms), 3):
        from moire_al.errors import LabelError

        raise LabelError(f"a label with forces of shape {forces.shape} for {len(atoms)} atoms")
    out = atoms.copy()
    out.calc = None
    out.info[REF_ENERGY] = float(energy)
    out.arrays[REF_FORCES] = forces
    if stress is not None:
        out.info[REF_STRESS] = np.array(stress, dtype=float)
    else:
        out.info.pop(REF_STRESS, None)
    out.info[REF_D3] = bool(d3_included)
    out.info[REF_LABELLER] = labeller
    return out


def plain(obj: Any, finite_only: bool = False, iso_dates: bool = False) -> Any:
    """``obj`` as plain JSON/BSON data: numpy scalars and arrays to Python numbers and
    lists, tuples and sets to lists, mapping keys to str, anything else to ``str``.

    ``finite_only``: NaN/inf become None (for JSON files). ``iso_dates``: datetimes
    become ISO strings (for JSON); by default they stay datetimes (BSON stores them).
    """
    import datetime as _dt

    if isinstance(obj, dict):
        return {str(k): plain(v, finite_only, iso_dates) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [plain(v, finite_only, iso_dates) for v in obj]
    if isinstance(obj, np.ndarray):
        return plain(obj.tolist(), finite_only, iso_dates)
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and finite_only and not np.isfinite(obj):
        return None
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if isinstance(obj, _dt.datetime):
        return obj.isoformat() if iso_dates else obj
    return str(obj)
