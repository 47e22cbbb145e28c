"""Reading, validating and writing structures (extxyz with provenance in ``info``)."""

from __future__ import annotations

import os

import numpy as np

from moire_al.errors import StructureError

ALLOWED_SPECIES = ("C", "B", "N")
MIN_DISTANCE = 0.5  # Å: closer atoms are treated as overlapping


def validate_structure(atoms, name: str = "", allowed=ALLOWED_SPECIES, min_distance: float = MIN_DISTANCE) -> None:
    """Raise :class:`StructureError` (one line) if ``atoms`` is unusable.

    Checks, in order: non-empty, finite positions, species in ``allowed``, a
    3D cell of positive volume (DFT codes need one), and no two atoms (periodic
    images included) closer than ``min_distance`` Å.
    """
    from moire_al.geometry import check_overlaps

    label = f"{name}: " if name else ""
    if len(atoms) == 0:
        raise StructureError(f"{label}structure has no atoms")
    pos = np.asarray(atoms.positions, float)
    bad = np.where(~np.all(np.isfinite(pos), axis=1))[0]
    if len(bad):
        raise StructureError(f"{label}non-finite (NaN/inf) position for atom {bad[0]} ({len(bad)} atom(s) affected)")
    unknown = sorted(set(atoms.get_chemical_symbols()) - set(allowed))
    if unknown:
        raise StructureError(f"{label}unknown species {', '.join(unknown)} (allowed: {', '.join(allowed)})")
    cell = np.asarray(atoms.cell.array, float)
    if not np.all(np.isfinite(cell)) or abs(np.linalg.det(cell)) < 1e-6:
        raise StructureError(f"{label}missing or degenerate cell (need three lattice vectors with non-zero volume)")
    _check_labels(atoms, label)
    try:
        check_overlaps(atoms, min_distance)
    except StructureError as exc:
        raise StructureError(f"{label}{exc}") from None


def _check_labels(atoms, label: str) -> None:
    """REF_ labels a structure carries must be finite: a NaN is a corrupt label, refused."""
    from moire_al.conventions import REF_ENERGY, REF_FORCES, REF_STRESS

    for key, value in ((REF_ENERGY, atoms.info.get(REF_ENERGY)), (REF_STRESS, atoms.info.get(REF_STRESS)),
                       (REF_FORCES, atoms.arrays.get(REF_FORCES))):
        if value is None:
            continue
        try:
            arr = np.asarray(value, dtype=float)
        except (TypeError, ValueError):
            raise StructureError(f"{label}{key} is not numeric") from None
        if not np.all(np.isfinite(arr)):
            raise StructureError(f"{label}{key} contains NaN or inf (a corrupt label)")


def read_structures(path, index=":", allowed=ALLOWED_SPECIES) -> list:
    """Read every frame of ``path`` (any ASE format) and validate each one.

    Raises :class:`StructureError` with one line naming the file and frame.
    """
    import ase.io

    path = os.fspath(path)
    if not os.path.exists(path):
        raise StructureError(f"{path}: no such file")
    try:
        frames = ase.io.read(path, index=index)
    except Exception as exc:  # ASE raises many types for unreadable files
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StructureError(f"{path}: cannot read structure ({msg})") from None
    if not isinstance(frames, list):
        frames = [frames]
    if not frames:
        raise StructureError(f"{path}: file holds no structures")
    for k, atoms in enumerate(frames):
        validate_structure(atoms, f"{path}[{k}]", allowed=allowed)
    return frames


def write_structures(path, atoms_list) -> None:
    """Write structures as extxyz (``info`` and ``arrays`` kept, incl. ``layer`` and provenance)."""
    import ase.io

    if hasattr(atoms_list, "positions"):
        atoms_list = [atoms_list]
    ase.io.write(os.fspath(path), list(atoms_list), format="extxyz")
