"""moire_al.labelling: turn structures into reference labels.

Labellers (see :func:`get_labeller`):

- ``"reference"``: classical reference potential in LAMMPS (KC-full + REBO for
  graphene, ILP + Tersoff for hBN). Fast; for tests and benchmarks; *not DFT*.
- ``"cp2k"``: CP2K (PBE + D3(BJ), GTH, SR-MOLOPT basis) through custodian.
- ``"gpaw"``: GPAW (PBE + D3(BJ), LCAO or PW) through custodian; a cross-check.
- ``"vasp-inputs"``: writes VASP inputs (seed 000 settings) for a cluster.
- ``"dataset"``: replays labels from a labelled file by structure hash (``{"path": ...}``);
  computes nothing, keeps the original labeller's name.

Heavy imports (LAMMPS, pymatgen, custodian) happen inside the labellers.
"""

from moire_al.labelling.base import Labeller, LabelFailure, LabelRecord

LABELLERS = ("reference", "cp2k", "gpaw", "vasp-inputs", "dataset")


def get_labeller(name: str, settings: dict | None = None) -> Labeller:
    """A labeller by name: ``"reference" | "cp2k" | "gpaw" | "vasp-inputs" | "dataset"``."""
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
    raise ValueError(f"unknown labeller {name!r}; choose one of {', '.join(LABELLERS)}")


def reference_calculator(material=None):
    """ASE calculator for the reference potential (LAMMPS KC+REBO / ILP+Tersoff)."""
    from moire_al.labelling.reference import reference_calculator as _rc

    return _rc(material)


__all__ = [
    "LABELLERS", "LabelFailure", "LabelRecord", "Labeller", "get_labeller",
    "reference_calculator",
]
