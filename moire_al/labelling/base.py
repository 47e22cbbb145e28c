"""Label records, failure records and the :class:`Labeller` protocol.

A labeller turns one structure into a :class:`LabelRecord` (energy, forces,
stress + provenance) or a :class:`LabelFailure` (a structured account of a DFT
fault). Bad *input* raises :class:`~moire_al.errors.StructureError` instead.

Records are plain data: :meth:`LabelRecord.as_dict` gives JSON/BSON-friendly
lists, floats and strings (the store keeps them in MongoDB). Every number is
validated when a record is built, so a NaN can never slip into a label.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Protocol, runtime_checkable

import numpy as np

from moire_al import conventions as conv
from moire_al.errors import LabelError, StructureError
from moire_al.conventions import plain


def _finite_array(name: str, value, shape=None) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=float)
    except (TypeError, ValueError) as exc:
        raise LabelError(f"{name} is not numeric: {exc}") from exc
    if shape is not None and arr.shape != shape:
        raise LabelError(f"{name} has shape {arr.shape}, expected {shape}")
    if not np.isfinite(arr).all():
        raise LabelError(f"{name} contains NaN or inf")
    return arr


def _finite(name: str, value) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError) as exc:
        raise LabelError(f"{name} is not a number: {value!r}") from exc
    if not math.isfinite(x):
        raise LabelError(f"{name} is not finite: {x}")
    return x


def jsonable(obj):
    """Settings/corrections as plain JSON/BSON (see :func:`moire_al.conventions.plain`)."""
    return plain(obj)


@dataclass
class LabelRecord:
    """One label: energy (eV), forces (eV/Å, N×3), stress (Voigt, eV/Å³, ASE sign)."""

    key: str
    structure_hash: str
    energy: float
    forces: np.ndarray
    stress: np.ndarray | None
    labeller: str
    code: str
    code_version: str
    settings: dict
    d3_included: bool
    wall_time: float
    converged: bool = True
    corrections: list = field(default_factory=list)
    workdir: str | None = None
    #: set when the label was replayed from a labelled file (``dataset`` labeller), not computed
    replayed_from: str | None = None
    original_key: str | None = None

    @property
    def replayed(self) -> bool:
        return self.replayed_from is not None

    def __post_init__(self):
        self.energy = _finite("energy", self.energy)
        f = _finite_array("forces", self.forces)
        if f.ndim != 2 or f.shape[1] != 3:
            raise LabelError(f"forces have shape {f.shape}, expected (N, 3)")
        self.forces = f
        if self.stress is not None:
            s = _finite_array("stress", self.stress)
            if s.shape == (3, 3):
                from ase.stress import full_3x3_to_voigt_6_stress

                s = full_3x3_to_voigt_6_stress(s)
            if s.shape != (6,):
                raise LabelError(f"stress has shape {s.shape}, expected (6,) Voigt")
            self.stress = s
        self.wall_time = _finite("wall_time", self.wall_time)
        self.d3_included = bool(self.d3_included)
        self.converged = bool(self.converged)
        self.settings = jsonable(dict(self.settings or {}))
        self.corrections = jsonable(list(self.corrections or []))

    def as_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["forces"] = self.forces.tolist()
        d["stress"] = None if self.stress is None else self.stress.tolist()
        d["record_type"] = "label"
        return jsonable(d)

    @classmethod
    def from_dict(cls, d: dict) -> "LabelRecord":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def apply_to(self, atoms):
        """A copy of ``atoms`` carrying this label under the ``REF_`` keys."""
        if len(atoms) != len(self.forces):
            raise LabelError(
                f"label {self.key} has {len(self.forces)} forces, structure has {len(atoms)} atoms"
            )
        out = conv.put_label(atoms, self.energy, self.forces, self.stress, self.d3_included, self.labeller)
        out.info["label_key"] = self.key
        out.info["label_wall_s"] = round(float(self.wall_time), 2)
        out.info["label_code_version"] = f"{self.code} {self.code_version}"
        if self.replayed:
            out.info["label_replayed_from"] = os.path.basename(self.replayed_from)
        return out


@dataclass
class LabelFailure:
    """A label that could not be made: what went wrong and what was tried."""

    key: str
    structure_hash: str
    labeller: str
    settings: dict
    error_type: str
    message: str
    corrections: list = field(default_factory=list)
    wall_time: float = 0.0
    workdir: str | None = None

    def __post_init__(self):
        self.settings = jsonable(dict(self.settings or {}))
        self.corrections = jsonable(list(self.corrections or []))
        self.wall_time = float(self.wall_time) if math.isfinite(float(self.wall_time)) else 0.0

    def as_dict(self) -> dict:
        d = jsonable(asdict(self))
        d["record_type"] = "failure"
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "LabelFailure":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@runtime_checkable
class Labeller(Protocol):
    """Anything that labels one structure.

    ``label`` never raises for a fault of the DFT code (it returns a
    :class:`LabelFailure`); it raises :class:`StructureError` for bad input.
    """

    name: str
    settings: dict

    def label(self, atoms, workdir) -> LabelRecord | LabelFailure: ...


# --------------------------------------------------------------- input checks
def check_structure(atoms, name: str = "", min_dist: float = 0.7, elements=None) -> None:
    """Reject structures no labeller can handle, with one clear line.

    Checks: non-empty, finite positions, a 3-D periodic cell of non-zero volume,
    no two atoms closer than ``min_dist`` Å, species within ``elements``.
    """
    from moire_al.geometry import check_overlaps

    where = f"structure {name}: " if name else "structure: "
    if len(atoms) == 0:
        raise StructureError(where + "has no atoms")
    if not np.isfinite(atoms.positions).all():
        raise StructureError(where + "positions contain NaN or inf")
    if not np.all(atoms.pbc):
        raise StructureError(where + "cell must be periodic in x, y and z (vacuum along z)")
    if abs(atoms.cell.volume) < 1e-6:
        raise StructureError(where + "cell has zero volume")
    if elements is not None:
        bad = sorted(set(atoms.get_chemical_symbols()) - set(elements))
        if bad:
            raise StructureError(where + f"unsupported element(s) {', '.join(bad)}")
    try:
        check_overlaps(atoms, min_dist)
    except StructureError as exc:
        raise StructureError(where + str(exc)) from None


def key_of(labeller, atoms) -> str:
    """The label key ``labeller`` gives ``atoms``: :func:`conventions.label_key` of its name
    and settings, unless the labeller says otherwise (a replayed label keeps its original
    key, so replayed and live labels of the same settings are one label)."""
    own = getattr(labeller, "key", None)
    return own(atoms) if callable(own) else conv.label_key(atoms, labeller.name, labeller.settings)


def structure_name(atoms) -> str:
    return str(atoms.info.get("name") or atoms.info.get("hash") or conv.structure_hash(atoms))


def make_workdir(base, atoms, labeller: str) -> str:
    path = os.path.join(os.fspath(base), f"{labeller}-{conv.structure_hash(atoms)}")
    os.makedirs(path, exist_ok=True)
    return path


class Timer:
    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.elapsed = time.perf_counter() - self.t0

    @property
    def now(self) -> float:
        return time.perf_counter() - self.t0


def record_from_results(
    atoms, labeller, energy, forces, stress, *, code, code_version, d3_included,
    wall_time, converged=True, corrections=(), workdir=None,
) -> LabelRecord:
    return LabelRecord(
        key=key_of(labeller, atoms),
        structure_hash=conv.structure_hash(atoms),
        energy=energy,
        forces=forces,
        stress=stress,
        labeller=labeller.name,
        code=code,
        code_version=code_version,
        settings=labeller.settings,
        d3_included=d3_included,
        wall_time=wall_time,
        converged=converged,
        corrections=list(corrections),
        workdir=None if workdir is None else os.fspath(workdir),
    )


def failure_from_exception(atoms, labeller, exc, *, corrections=(), wall_time=0.0,
                           workdir=None) -> LabelFailure:
    return LabelFailure(
        key=key_of(labeller, atoms),
        structure_hash=conv.structure_hash(atoms),
        labeller=labeller.name,
        settings=labeller.settings,
        error_type=type(exc).__name__,
        message=str(exc)[:2000],
        corrections=list(corrections),
        wall_time=wall_time,
        workdir=None if workdir is None else os.fspath(workdir),
    )
