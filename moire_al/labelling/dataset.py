"""Replay labeller: answers a structure from a labelled file, by structure hash.

``get_labeller("dataset", {"path": "data/dft/graphene.extxyz"})`` reads the file once
(extxyz with ``REF_`` keys, as ``moire-al label`` writes it) and labels a structure by
looking up its :func:`~moire_al.conventions.structure_hash`. Nothing is computed, so a
hyperactive loop on committed DFT labels costs only its fits.

A replayed record keeps the original label: its labeller's name (``cp2k``), its code,
the settings (when the original key's settings hash matches that labeller's defaults;
else only the original key), D3 convention and forces, and says where it came from
(``replayed_from``). Output names it "replayed <labeller> labels", never DFT run here.

A structure the file does not hold is a :class:`LabelFailure` (``NotInDataset``); a file
that cannot be read, holds no labels or a non-finite value is a
:class:`~moire_al.errors.LabelError` when the labeller is made.
"""

from __future__ import annotations

import os

import numpy as np

from moire_al import conventions as conv
from moire_al.errors import LabelError
from moire_al.labelling.base import LabelFailure, LabelRecord, check_structure, structure_name

#: files already read in this process: (path, mtime, size) -> index
_CACHE: dict = {}


def _original_settings(labeller: str, key: str | None) -> dict:
    """The original labeller's settings, when ``key`` was made with its defaults."""
    if not key or labeller in ("", "unknown"):
        return {"label_key": key}
    try:
        from moire_al.labelling import get_labeller

        lab = get_labeller(labeller)
    except Exception:  # noqa: BLE001 - a labeller we cannot make here: keep the key only
        return {"label_key": key}
    if key.endswith("-" + conv.settings_hash(lab.settings)):
        return dict(lab.settings)
    return {"label_key": key}


def read_index(path: str) -> dict:
    """``structure hash -> labelled Atoms`` of a labelled file (cached per file version)."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise LabelError(f"dataset labeller: cannot read {path}: {exc.strerror}") from None
    tag = (path, st.st_mtime_ns, st.st_size)
    if tag in _CACHE:
        return _CACHE[tag]
    import ase.io

    try:
        images = ase.io.read(path, ":", format="extxyz")
    except Exception as exc:  # noqa: BLE001 - any parse error of a user's file is one line
        raise LabelError(f"dataset labeller: {path} is not a readable extxyz file ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else 'no detail'})") from None
    index = {}
    for i, at in enumerate(images):
        if not conv.has_label(at):
            raise LabelError(f"dataset labeller: structure {i} of {path} has no label "
                             f"(REF_energy and REF_forces)")
        e = at.info[conv.REF_ENERGY]
        f = at.arrays[conv.REF_FORCES]
        s = at.info.get(conv.REF_STRESS)
        if not (np.isfinite(e) and np.isfinite(f).all() and (s is None or np.isfinite(s).all())):
            raise LabelError(f"dataset labeller: structure {i} of {path} has a non-finite label")
        index.setdefault(conv.structure_hash(at), at)
    _CACHE.clear()
    _CACHE[tag] = index
    return index


class DatasetLabeller:
    """Labels from a labelled file (replay); settings ``{"path": ...}``."""

    name = "dataset"
    code = "replay"

    def __init__(self, settings: dict | None = None):
        settings = dict(settings or {})
        unknown = set(settings) - {"path"}
        if unknown:
            raise LabelError(f"dataset labeller: unknown setting(s) {sorted(unknown)} (known: path)")
        if not settings.get("path"):
            raise LabelError("dataset labeller: settings need 'path', the labelled file to replay")
        from moire_al.config import resolve_data_path

        self.path = resolve_data_path(str(settings["path"]))
        # a miss's key names the file, not where this checkout lies
        self.settings = {"path": os.path.basename(self.path)}
        self.index = read_index(self.path)
        labellers = {str(at.info.get(conv.REF_LABELLER, "unknown")) for at in self.index.values()}
        self.source_labellers = sorted(labellers)

    @property
    def description(self) -> str:
        """What the labels are, for output: never 'DFT run here'."""
        return f"replayed {'/'.join(self.source_labellers)} labels from {os.path.basename(self.path)}"

    @property
    def d3_included(self) -> bool:
        """True when every replayed label already holds D3(BJ)."""
        return all(bool(at.info.get(conv.REF_D3, False)) for at in self.index.values())

    def key(self, atoms) -> str:
        """The original label's key where the file holds the structure (a replayed label is
        the same label as the one computed), else a key of this labeller."""
        src = self.index.get(conv.structure_hash(atoms))
        if src is not None and src.info.get("label_key"):
            return str(src.info["label_key"])
        return conv.label_key(atoms, self.name, self.settings)

    def label(self, atoms, workdir=None):
        name = structure_name(atoms)
        check_structure(atoms, name)
        h = conv.structure_hash(atoms)
        key = self.key(atoms)
        src = self.index.get(h)
        if src is None:
            return LabelFailure(key=key, structure_hash=h, labeller=self.name, settings=self.settings,
                                error_type="NotInDataset",
                                message=f"structure {name} is not in {self.path} (replay labels only "
                                        "what the file holds)")
        labeller = str(src.info.get(conv.REF_LABELLER, "unknown"))
        original_key = src.info.get("label_key")
        stress = src.info.get(conv.REF_STRESS)
        return LabelRecord(
            key=key, structure_hash=h,
            energy=float(src.info[conv.REF_ENERGY]),
            forces=np.array(src.arrays[conv.REF_FORCES], dtype=float),
            stress=None if stress is None else np.asarray(stress, dtype=float),
            labeller=labeller,
            code=str(src.info.get("label_code_version", labeller)).split(" ")[0],
            code_version=str(src.info.get("label_code_version", "unknown")),
            settings=_original_settings(labeller, original_key),
            d3_included=bool(src.info.get(conv.REF_D3, False)),
            wall_time=0.0, converged=True,
            replayed_from=self.path, original_key=original_key,
        )
