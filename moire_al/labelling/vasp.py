"""VASP inputs for a cluster (seed 000 settings): the ``vasp-inputs`` labeller.

VASP cannot run here (no binary, no licence, no POTCARs). This labeller writes a
complete run directory and returns a :class:`LabelFailure` with
``error_type="InputsOnly"`` naming that directory; it never invents a label.

Files written (pymatgen ``MPStaticSet``, overridden to seed 000's settings):

- ``INCAR``: PBE (PBE_54 POTCARs), D3(BJ) ``IVDW = 12``, ``ENCUT = 620``,
  ``ISMEAR = 0``, ``SIGMA = 0.05``, ``EDIFF = 1e-6`` (tight), ``ISIF = 2`` (full
  stress tensor in a static run), ``NSW = 0``, ``ISPIN = 1``, ``PREC = Accurate``,
  ``LREAL = .FALSE.``, no WAVECAR/CHGCAR;
- ``KPOINTS``: Γ-centred mesh from the same k spacing as the other labellers
  (:func:`moire_al.labelling.common.kpoint_mesh`: odd, 1 along z);
- ``POSCAR``: species grouped (pymatgen sorts sites); ``moire_al_vasp.json`` keeps
  the permutation back to the structure's atom order, the label key and settings;
- ``POTCAR.spec``: POTCAR symbols, one per line (pymatgen's ``potcar_spec=True``).
  Without ``PMG_VASP_PSP_DIR`` pymatgen cannot build a POTCAR
  (``PmgVaspPspDirError``), so the POTCAR is made on the cluster by ``run_vasp.py``;
- ``run_vasp.py``: builds the POTCAR, runs VASP through custodian (``VaspJob`` +
  standard handlers + ``VasprunXMLValidator``) and writes ``vasp_label.json``
  (energy eV, forces eV/Å in the structure's atom order, Voigt stress eV/Å³ with
  ASE's sign, D3 included).
"""

from __future__ import annotations

import json
import os
import time
import warnings

from moire_al import conventions as conv
from moire_al.errors import SettingsError
from moire_al.labelling.base import LabelFailure, check_structure, structure_name
from moire_al.labelling.common import kpoint_mesh, map_by_position

META, RUNNER = "moire_al_vasp.json", "run_vasp.py"
INPUT_FILES = ("INCAR", "KPOINTS", "POSCAR", "POTCAR.spec", META, RUNNER)

DEFAULTS = {
    "encut": 620,
    "ismear": 0,
    "sigma": 0.05,
    "ediff": 1e-6,
    "ivdw": 12,            # D3(BJ)
    "isif": 2,             # static run with the full stress tensor
    "nelm": 200,
    "kspacing": 0.3,       # Å⁻¹, 2π included (as KSPACING); Γ-centred, odd, 1 along z
    "kpts": None,
    "potcar_functional": "PBE_54",
    "incar": {},           # further INCAR tags (e.g. NCORE/KPAR for the cluster)
}

RUN_VASP = '''\
"""Run VASP through custodian for one moire-al label (written by moire_al.labelling.vasp).

On the cluster, in this directory:
    export PMG_VASP_PSP_DIR=/path/to/potcars   # pymatgen layout (POT_GGA_PAW_PBE_54/...)
    export VASP_CMD="srun vasp_std"             # how VASP is started (default: vasp_std)
    python run_vasp.py
Writes vasp_label.json: energy (eV, free energy, D3(BJ) included), forces (eV/A, in the
order of the original structure), stress (Voigt xx yy zz yz xz xy, eV/A^3, ASE sign).
"""
import json
import os
import shlex

from custodian.custodian import Custodian
from custodian.vasp.handlers import (FrozenJobErrorHandler, MeshSymmetryErrorHandler,
                                     NonConvergingErrorHandler, StdErrHandler,
                                     UnconvergedErrorHandler, VaspErrorHandler)
from custodian.vasp.jobs import VaspJob
from custodian.vasp.validators import VasprunXMLValidator

os.chdir(os.path.dirname(os.path.abspath(__file__)))
meta = json.load(open("moire_al_vasp.json"))
if not os.path.exists("POTCAR"):
    from pymatgen.io.vasp.inputs import Potcar

    symbols = open("POTCAR.spec").read().split()
    Potcar(symbols, functional=meta["potcar_functional"]).write_file("POTCAR")

handlers = [VaspErrorHandler(), MeshSymmetryErrorHandler(), UnconvergedErrorHandler(),
            NonConvergingErrorHandler(), FrozenJobErrorHandler(), StdErrHandler()]
job = VaspJob(shlex.split(os.environ.get("VASP_CMD", "vasp_std")), final=True, auto_npar=False)
Custodian(handlers, [job], validators=[VasprunXMLValidator()], max_errors=5).run()

from pymatgen.io.vasp.outputs import Vasprun

step = Vasprun("vasprun.xml", parse_dos=False, parse_eigen=False,
               parse_potcar_file=False).ionic_steps[-1]
perm = meta["poscar_index_of_atom"]            # POSCAR site of each original atom
forces = [list(map(float, step["forces"][j])) for j in perm]
s = step["stress"]                              # kBar, VASP sign (positive = compressive)
gpa_to_ev_a3 = 1 / 160.21766208
voigt = [s[0][0], s[1][1], s[2][2], s[1][2], s[0][2], s[0][1]]
label = {"key": meta["key"], "structure_hash": meta["structure_hash"],
         "energy": float(step["e_fr_energy"]), "forces": forces,
         "stress": [-0.1 * x * gpa_to_ev_a3 for x in voigt], "d3_included": True,
         "code": "vasp", "settings": meta["settings"]}
with open("vasp_label.json", "w") as fh:
    json.dump(label, fh, indent=1)
print("wrote vasp_label.json")
'''


class VaspInputsLabeller:
    """Writes VASP inputs (seed 000 settings) and a custodian runner; labels nothing here.

    ``label`` returns ``LabelFailure(error_type="InputsOnly")`` whose message says where
    the inputs are and how to run them on a cluster.
    """

    name = "vasp-inputs"
    code = "vasp"

    def __init__(self, settings: dict | None = None):
        unknown = set(settings or {}) - set(DEFAULTS)
        if unknown:
            raise SettingsError(f"vasp-inputs labeller: unknown setting(s) {sorted(unknown)}")
        s = dict(DEFAULTS)
        s.update(settings or {})
        s["incar"] = dict(s["incar"] or {})
        self.settings = s

    def incar_settings(self) -> dict:
        s = self.settings
        incar = {
            "ENCUT": s["encut"], "ISMEAR": s["ismear"], "SIGMA": s["sigma"],
            "EDIFF": s["ediff"], "IVDW": s["ivdw"], "ISIF": s["isif"], "NSW": 0,
            "IBRION": -1, "NELM": s["nelm"], "ISPIN": 1, "PREC": "Accurate",
            "LREAL": False, "LWAVE": False, "LCHARG": False, "LORBIT": None,
            "ALGO": "Normal",
        }
        incar.update(s["incar"])
        return incar

    def check(self, atoms) -> list[int]:
        """StructureError for bad input; else the Γ-centred k-mesh."""
        name = structure_name(atoms)
        check_structure(atoms, name)
        return kpoint_mesh(atoms, self.settings["kspacing"], self.settings["kpts"], name)

    def write_inputs(self, atoms, workdir) -> dict:
        from ase import Atoms
        from pymatgen.io.ase import AseAtomsAdaptor
        from pymatgen.io.vasp.inputs import Kpoints, Poscar
        from pymatgen.io.vasp.sets import MPStaticSet

        s = self.settings
        mesh = self.check(atoms)
        os.makedirs(workdir, exist_ok=True)
        clean = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell,
                      pbc=True)
        structure = AseAtomsAdaptor.get_structure(clean)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # MP's notes on POTCARs / ENCUT overrides
            vis = MPStaticSet(
                structure, user_incar_settings=self.incar_settings(),
                user_kpoints_settings=Kpoints.gamma_automatic(tuple(mesh)),
                user_potcar_functional=s["potcar_functional"],
            )
            # potcar_spec: POTCAR.spec (symbols) instead of a POTCAR, which would need
            # PMG_VASP_PSP_DIR and the licensed POTCAR files.
            vis.write_input(workdir, potcar_spec=True)
        poscar = Poscar.from_file(os.path.join(workdir, "POSCAR"))
        perm = map_by_position(atoms, poscar.structure.cart_coords)
        meta = {
            "key": conv.label_key(atoms, self.name, self.settings),
            "structure_hash": conv.structure_hash(atoms),
            "labeller": self.name, "settings": self.settings, "kpoint_mesh": mesh,
            "potcar_functional": s["potcar_functional"],
            "poscar_index_of_atom": [int(j) for j in perm],
        }
        with open(os.path.join(workdir, META), "w") as fh:
            json.dump(meta, fh, indent=1)
        with open(os.path.join(workdir, RUNNER), "w") as fh:
            fh.write(RUN_VASP)
        return meta

    def label(self, atoms, workdir) -> LabelFailure:
        workdir = os.fspath(workdir)
        t0 = time.perf_counter()
        meta = self.write_inputs(atoms, workdir)  # StructureError for bad input
        return LabelFailure(
            key=meta["key"], structure_hash=meta["structure_hash"], labeller=self.name,
            settings=self.settings, error_type="InputsOnly",
            message=(f"VASP cannot run here: inputs written to {workdir} "
                     f"({', '.join(INPUT_FILES)}); on a cluster set PMG_VASP_PSP_DIR and "
                     f"VASP_CMD, then run 'python {RUNNER}' there (writes vasp_label.json)"),
            corrections=[], wall_time=time.perf_counter() - t0, workdir=workdir,
        )


__all__ = ["DEFAULTS", "RUN_VASP", "VaspInputsLabeller"]
