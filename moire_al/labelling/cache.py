"""A resumable labelled extxyz: labels by label key, every new one written at once.

``moire-al label`` and the benchmarks keep their labels in one: a rerun reads the file
and labels only what it lacks, so an interrupted CP2K batch (or a benchmark rerun)
never computes a label twice. The file is rewritten atomically after each label.
"""

from __future__ import annotations

import os


def atomic_write(path, images) -> None:
    """Write ``images`` as extxyz to ``path`` through a temporary file (never half-written)."""
    import ase.io

    tmp = f"{path}.tmp.{os.getpid()}"
    ase.io.write(tmp, images, format="extxyz")
    os.replace(tmp, path)


def as_stored(atoms):
    """``atoms`` as an extxyz file holds it (positions and labels at the file's precision).

    A run that computes a label and a run that replays it from the file must go on with
    the same numbers: chaotic MD parts on a difference in the 8th digit."""
    import io

    import ase.io

    buf = io.StringIO()
    ase.io.write(buf, atoms, format="extxyz")
    buf.seek(0)
    return ase.io.read(buf, format="extxyz")


class LabelCache:
    """The labelled structures of ``path`` (extxyz with REF_ keys and ``label_key``)."""

    def __init__(self, path):
        import ase.io

        self.path = str(path)
        self.images = []
        if os.path.exists(self.path) and os.path.getsize(self.path) > 0:
            self.images = ase.io.read(self.path, ":", format="extxyz")
        self.by_key = {at.info.get("label_key"): at for at in self.images}
        self.n_new = 0

    def __contains__(self, key) -> bool:
        return key in self.by_key

    def get(self, key):
        return self.by_key.get(key)

    def add(self, labelled):
        """Add a labelled structure (``LabelRecord.apply_to``'s output), rewrite the file;
        returns it as the file holds it (extxyz precision), so a run that computes a
        label and a rerun that reads it back go on with the same numbers."""
        labelled = as_stored(labelled)
        self.images.append(labelled)
        self.by_key[labelled.info.get("label_key")] = labelled
        self.n_new += 1
        atomic_write(self.path, self.images)
        return labelled

    def label(self, labeller, atoms, workdir):
        """The cached label of ``atoms`` by ``labeller``, else computed (run directory
        under ``workdir``) and added; a :class:`LabelFailure` is returned, not cached."""
        from moire_al import conventions as conv
        from moire_al.labelling.base import LabelFailure, key_of

        key = key_of(labeller, atoms)
        if key in self.by_key:
            return self.by_key[key]
        result = labeller.label(atoms, os.path.join(str(workdir), f"{labeller.name}-{conv.structure_hash(atoms)}"))
        if isinstance(result, LabelFailure):
            return result
        return self.add(result.apply_to(atoms))
