"""moire_al.labelling: turn structures into reference labels.

Labellers (see :func:`get_labeller`):

- ``"reference"``: classical reference potential in LAMMPS (KC-full + REBO for
  graphene, ILP + Tersoff for hBN). Fast; for tests and benchmarks; *not DFT*.
- ``"cp2k"``: CP2K (PBE + D3(BJ), GTH, SR-MOLOPT basis) through custodian.
- ``"gpaw"``: GPAW (PBE + D3(BJ), LCAO or PW) through custodian; a cross-check.
- ``"vasp-inputs"``: writes VASP inputs (seed 000 settings) for a cluster.
- ``"dataset"``: replays labels from a labelled file by structure hash (``{"path": ...}``);
  computes nothing, keeps the original labeller's name.

More labellers (a site's own code, the tests' fault-injecting one) are added with
:func:`register_labeller`, from modules named in ``MOIRE_AL_LABELLER_PLUGINS`` so that
worker processes (rlaunch) have them too.

Heavy imports (LAMMPS, pymatgen, custodian) happen inside the labellers.
"""

import importlib

from moire_al.labelling.base import Labeller, LabelFailure, LabelRecord

LABELLERS = ("reference", "cp2k", "gpaw", "vasp-inputs", "dataset")

_REGISTERED: dict = {}
_PLUGINS_LOADED: set = set()


def register_labeller(name: str, factory) -> None:
    """Add a labeller: ``factory(settings: dict | None) -> Labeller`` under ``name``.

    A built-in name cannot be replaced (its labels would change meaning)."""
    from moire_al.errors import SettingsError

    if name in LABELLERS or name == "vasp":
        raise SettingsError(f"labeller name {name!r} is built in")
    _REGISTERED[name] = factory


def _load_plugins() -> None:
    from moire_al.config import environment
    from moire_al.errors import SettingsError

    for mod in environment().labeller_plugins:
        if mod in _PLUGINS_LOADED:
            continue
        try:
            importlib.import_module(mod)
        except ImportError as exc:
            raise SettingsError(f"MOIRE_AL_LABELLER_PLUGINS: cannot import {mod!r}: {exc}") from None
        _PLUGINS_LOADED.add(mod)


def labeller_names() -> tuple:
    """Every labeller name: the built-in ones, then the registered ones."""
    _load_plugins()
    return LABELLERS + tuple(sorted(_REGISTERED))


def get_labeller(name: str, settings: dict | None = None) -> Labeller:
    """A labeller by name: ``"reference" | "cp2k" | "gpaw" | "vasp-inputs" | "dataset"``
    or a registered one (:func:`register_labeller`)."""
    if name not in LABELLERS and name != "vasp":
        _load_plugins()
        if name in _REGISTERED:
            return _REGISTERED[name](settings)
    if name == "dataset":
        from moire_al.labelling.dataset import DatasetLabeller

        return DatasetLabeller(settings)
    if name == "reference":
        from moire_al.labelling.reference import ReferenceLabeller

        return ReferenceLabeller(settings)
    if name == "cp2k":
        from moire_al.labelling.cp2k import Cp2kLabeller

        return Cp2kLabeller(settings)
    if name in ("gpaw", "vasp-inputs", "vasp"):
        import importlib.util

        mod = "moire_al.labelling." + ("gpaw" if name == "gpaw" else "vasp")
        if importlib.util.find_spec(mod) is None:
            from moire_al.errors import LabelError

            raise LabelError(f"the {name!r} labeller is not implemented yet (issue 7)")
    if name == "gpaw":
        from moire_al.labelling.gpaw import GpawLabeller

        return GpawLabeller(settings)
    if name in ("vasp-inputs", "vasp"):
        from moire_al.labelling.vasp import VaspInputsLabeller

        return VaspInputsLabeller(settings)
    from moire_al.errors import SettingsError

    raise SettingsError(f"unknown labeller {name!r}; choose one of {', '.join(labeller_names())}")


def reference_calculator(material=None):
    """ASE calculator for the reference potential (LAMMPS KC+REBO / ILP+Tersoff)."""
    from moire_al.labelling.reference import reference_calculator as _rc

    return _rc(material)


__all__ = [
    "LABELLERS", "LabelFailure", "LabelRecord", "Labeller", "get_labeller", "labeller_names",
    "reference_calculator", "register_labeller",
]
