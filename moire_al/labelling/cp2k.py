"""CP2K labeller (PBE + D3(BJ), GTH, DZVP-MOLOPT-SR) run through custodian.

Inputs come from ``pymatgen.io.cp2k.sets.StaticSet`` (diagonalisation, Fermi-Dirac
smearing, not spin-polarised), with D3(BJ) as CP2K's built-in pair potential and
an explicit Monkhorst-Pack ``&KPOINTS`` section (odd, Γ-containing mesh from a
k-point density). The run goes through custodian's own ``Cp2kJob`` and CP2K
handlers. Traps handled here:

- ``Cp2kJob.terminate`` runs ``killall cp2k.psmp`` (every CP2K on the host):
  :class:`OwnProcessCp2kJob` ends only the process it started;
- after a custodian correction the input is re-written and atoms 0 and 1 swap in
  ``&COORD``: forces are mapped back by position;
- ``DftSet(kpoints=...)`` writes a reduced explicit list: we write
  ``SCHEME MONKHORST-PACK`` ourselves;
- forces are parsed in Ha/bohr and converted; the stress is in GPa with CP2K's
  sign (positive = compressive) and converted to eV/Å³ with ASE's sign.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import subprocess

import numpy as np
from ase import units
from ase.stress import full_3x3_to_voigt_6_stress

from moire_al.errors import LabelError, SettingsError, StructureError
from moire_al.labelling.base import check_structure, structure_name
from moire_al.labelling.common import (
    finite_floats, kpoint_mesh, label_through_custodian, map_by_position, require_binary,
)

INPUT, OUTPUT, STDERR = "cp2k.inp", "cp2k.out", "std_err.txt"
VALENCE = {"H": 1, "B": 3, "C": 4, "N": 5}

DEFAULTS = {
    "basis": "DZVP-MOLOPT-SR-GTH",
    "basis_file": "BASIS_MOLOPT",
    "potential_file": "GTH_POTENTIALS",
    "cutoff": 280,
    "rel_cutoff": 40,
    "elec_temp": 500,
    "kspacing": 0.3,
    "kpts": None,
    "eps_scf": 1e-6,
    "max_scf": 200,
    "eps_default": 1e-10,
    "d3": True,
}
#: Optional settings, part of a label's key only when set (the keys of every label made
#: without them stay as they were): CP2K's &XC_GRID smoothing of the density and of its
#: derivatives on the real-space grid, e.g. ``{"xc_smooth_rho": "NN10", "xc_deriv":
#: "NN10_SMOOTH"}``. They damp the grid's egg-box error in hBN's forces ~10x, but shift the
#: energy by an amount that changes by up to 40 meV/atom from one cell to another and leave
#: the stress wrong (docs/labelling.md): off by default.
OPTIONAL = {"xc_smooth_rho": ("NONE", "NN10", "NN50", "SPLINE2", "SPLINE3"),
            "xc_deriv": ("PW", "SPLINE2", "SPLINE3", "NN10_SMOOTH", "NN50_SMOOTH", "SPLINE2_SMOOTH",
                         "SPLINE3_SMOOTH")}
#: How a label is run, not what it is: kept out of ``settings`` and so out of the
#: label key (2 ranks or 2 threads give the same label).
RUN_OPTIONS = {
    "omp_threads": 2,
    "ranks": 1,
    "max_corrections": 3,
}
INSTALL_HINT = "apt-get install cp2k cp2k-data (Debian 12), or run scripts/install_dft.sh"


def cp2k_data_dir() -> str:
    for d in (os.environ.get("CP2K_DATA_DIR"), "/usr/share/cp2k/data", "/usr/share/cp2k"):
        if d and os.path.exists(os.path.join(d, "BASIS_MOLOPT")):
            return d
    raise LabelError(f"CP2K data files (BASIS_MOLOPT, GTH_POTENTIALS) not found; {INSTALL_HINT}")


def _has_entry(path: str, element: str, name: str) -> bool:
    pat = re.compile(rf"^\s*{element}\s+.*\b{re.escape(name)}\b")
    with open(path) as fh:
        return any(pat.match(line) for line in fh)


def mpi_env(omp_threads: int) -> dict:
    """Environment of one CP2K run: its OpenMP threads, and OpenMPI allowed as root."""
    env = {"OMP_NUM_THREADS": str(omp_threads)}
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        env |= {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
    return env


@contextlib.contextmanager
def _environ(extra: dict):
    """Set ``extra`` in os.environ for the block (a child started inside inherits it)."""
    old = {k: os.environ.get(k) for k in extra}
    os.environ.update(extra)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _own_job_class():
    from custodian.cp2k.jobs import Cp2kJob

    class OwnProcessCp2kJob(Cp2kJob):
        """``Cp2kJob`` whose ``terminate`` ends only its own process (not ``killall``)."""

        _process = None
        env: dict = {}

        def run(self, directory="./"):
            # CP2K's environment (threads) for this process only, not the whole worker
            with _environ(self.env):
                self._process = super().run(directory)
            return self._process

        def terminate(self, directory="./"):
            p = self._process
            if p is not None and p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()

    return OwnProcessCp2kJob


class Cp2kLabeller:
    """PBE + D3(BJ) labels from CP2K through custodian (the default local DFT labeller).

    Settings (defaults in ``DEFAULTS``): ``basis``, ``cutoff``/``rel_cutoff`` (Ry),
    ``elec_temp`` (K), ``kspacing`` (Å⁻¹, 2π included) or explicit ``kpts``,
    ``eps_scf``, ``max_scf``, ``d3``. Run options (``RUN_OPTIONS``, not in the label
    key): ``omp_threads``, ``ranks``, ``max_corrections``.
    """

    name = "cp2k"
    code = "cp2k"

    def __init__(self, settings: dict | None = None):
        settings = dict(settings or {})
        unknown = set(settings) - set(DEFAULTS) - set(RUN_OPTIONS) - set(OPTIONAL)
        if unknown:
            raise SettingsError(f"cp2k labeller: unknown setting(s) {sorted(unknown)}")
        self.run_options = {k: settings.pop(k, v) for k, v in RUN_OPTIONS.items()}
        if int(self.run_options["ranks"]) < 1 or int(self.run_options["omp_threads"]) < 1:
            raise SettingsError("cp2k labeller: ranks and omp_threads must be >= 1")
        for k, allowed in OPTIONAL.items():
            if k in settings:
                v = str(settings[k]).upper()
                if v not in allowed:
                    raise SettingsError(f"cp2k labeller: {k} must be one of {', '.join(allowed)}, got {settings[k]!r}")
                settings[k] = v
        s = dict(DEFAULTS)
        s.update(settings)
        self.settings = s

    # ------------------------------------------------------------ inputs
    def check(self, atoms, name=""):
        check_structure(atoms, name)
        data = cp2k_data_dir()
        s = self.settings
        for el in sorted(set(atoms.get_chemical_symbols())):
            if el not in VALENCE or not _has_entry(os.path.join(data, s["basis_file"]), el, s["basis"]):
                raise StructureError(
                    f"structure {name}: element {el} has no {s['basis']} basis in "
                    f"{s['basis_file']} ({data}); choose another basis"
                )
            if not _has_entry(os.path.join(data, s["potential_file"]), el,
                              f"GTH-PBE-q{VALENCE[el]}"):
                raise StructureError(f"structure {name}: no GTH-PBE pseudopotential for {el}")
        return kpoint_mesh(atoms, s["kspacing"], s["kpts"], name)

    def write_input(self, atoms, workdir, mesh) -> str:
        import warnings

        from pymatgen.io.ase import AseAtomsAdaptor
        from pymatgen.io.cp2k.inputs import Keyword, Section
        from pymatgen.io.cp2k.sets import StaticSet

        s = self.settings
        structure = AseAtomsAdaptor.get_structure(atoms)
        bp = {el: {"basis": s["basis"], "potential": f"GTH-PBE-q{VALENCE[el]}"}
              for el in structure.symbol_set}
        bp["basis_filenames"] = [s["basis_file"]]
        bp["potential_filename"] = s["potential_file"]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cin = StaticSet(
                structure=structure, basis_and_potential=bp, xc_functionals=["PBE"],
                ot=False, smearing=True, spin_polarized=False, elec_temp=s["elec_temp"],
                cutoff=s["cutoff"], rel_cutoff=s["rel_cutoff"], eps_scf=s["eps_scf"],
                max_scf=s["max_scf"], print_dos=False, print_pdos=False,
                print_mo_cubes=False, print_v_hartree=False, print_e_density=False,
                project_name="label",
            )
        dft = cin["FORCE_EVAL"]["DFT"]
        dft["QS"]["EPS_DEFAULT"] = Keyword("EPS_DEFAULT", s["eps_default"])
        dft["SCF"]["MAX_SCF"] = Keyword("MAX_SCF", s["max_scf"])
        if s["d3"]:
            pair = Section("PAIR_POTENTIAL", keywords={
                "TYPE": Keyword("TYPE", "DFTD3(BJ)"),
                "PARAMETER_FILE_NAME": Keyword("PARAMETER_FILE_NAME", "dftd3.dat"),
                "REFERENCE_FUNCTIONAL": Keyword("REFERENCE_FUNCTIONAL", "PBE"),
            })
            vdw = Section("VDW_POTENTIAL", keywords={
                "DISPERSION_FUNCTIONAL": Keyword("DISPERSION_FUNCTIONAL", "PAIR_POTENTIAL")},
                subsections={"PAIR_POTENTIAL": pair})
            dft["XC"].insert(vdw)
        grid = {k: v for k, v in (("XC_SMOOTH_RHO", s.get("xc_smooth_rho")), ("XC_DERIV", s.get("xc_deriv"))) if v}
        if grid:
            dft["XC"].insert(Section("XC_GRID", keywords={k: Keyword(k, v) for k, v in grid.items()}))
        if mesh != [1, 1, 1]:
            dft.insert(Section("KPOINTS", keywords={
                "SCHEME": Keyword("SCHEME", "MONKHORST-PACK", *mesh),
                "FULL_GRID": Keyword("FULL_GRID", False),
            }))
        path = os.path.join(workdir, INPUT)
        cin.write_file(INPUT, output_dir=workdir, make_dir_if_not_present=True)
        return path

    @property
    def smoothed(self) -> bool:
        """True when the XC grid smoothing is on. Its labels carry no stress: CP2K's
        analytical stress leaves the smoothing out (measured on flat hexagonal cells, where
        symmetry makes σ_xx = σ_yy and σ_xy = 0: with NN10 σ_xx − σ_yy ≈ 1e-3 eV/Å³ and
        σ_xy ≈ −1e-3, and a monolayer in vacuum gets σ_zz ≈ +2e-3; without it they are
        ≤ 1e-5), while its forces are the derivative of its energy (binding curve: −dE/dd
        equals the layer force to 0.001 eV/Å, against 0.012 without smoothing)."""
        return any(self.settings.get(k) not in (None, "NONE", "PW") for k in OPTIONAL)

    # ------------------------------------------------------------ running
    def label(self, atoms, workdir):
        name = structure_name(atoms)
        mesh = self.check(atoms, name)  # StructureError for bad input
        exe = require_binary(["cp2k.psmp", "cp2k.ssmp", "cp2k"], "CP2K", INSTALL_HINT)

        def compute(wd):
            self.write_input(atoms, wd, mesh)
            self._run(exe, wd)
            energy, forces, stress = parse_cp2k(wd, atoms)
            if self.smoothed:
                stress = None     # CP2K's stress misses the smoothing's part (see `smoothed`)
            return energy, forces, stress, cp2k_version(exe)
        return label_through_custodian(atoms, self, workdir, compute)

    def _run(self, exe, workdir) -> None:
        from custodian import Custodian
        from custodian.cp2k.handlers import AbortHandler, StdErrHandler, UnconvergedScfErrorHandler

        s = self.run_options
        cmd = [exe]
        if int(s["ranks"]) > 1:
            cmd = [require_binary(["mpiexec"], "mpiexec", "apt-get install openmpi-bin"),
                   "-n", str(s["ranks"]), exe]
        job = _own_job_class()(cmd, input_file=INPUT, output_file=OUTPUT, stderr_file=STDERR)
        job.env = mpi_env(int(s["omp_threads"]))
        handlers = [StdErrHandler(std_err=STDERR), AbortHandler(INPUT, OUTPUT),
                    UnconvergedScfErrorHandler(INPUT, OUTPUT)]
        n = int(s["max_corrections"])
        c = Custodian(handlers, [job], max_errors=n, max_errors_per_job=n,
                      polling_time_step=1, monitor_freq=5, directory=workdir, gzipped_output=False)
        # Some custodian handlers read files relative to the cwd, not ``directory``.
        try:
            with contextlib.chdir(workdir):
                c.run()
        finally:
            self._last_log = getattr(c, "run_log", [])


@functools.lru_cache(maxsize=None)
def cp2k_version(exe) -> str:
    try:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30).stdout
        m = re.search(r"CP2K version (\S+)", out)
        return m.group(1) if m else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _read_coords(path) -> np.ndarray:
    text = open(path).read()
    m = re.search(r"&COORD\s*\n(.*?)&END COORD", text, re.S | re.I)
    if not m:
        raise LabelError(f"no &COORD in {path}")
    rows = [ln.split() for ln in m.group(1).splitlines() if ln.strip() and not ln.strip().startswith("!")]
    return np.array([finite_floats(r[1:4], "coordinate") for r in rows])


def parse_cp2k(workdir, atoms):
    """(energy eV, forces eV/Å in ``atoms`` order, Voigt stress eV/Å³ ASE sign)."""
    out = open(os.path.join(workdir, OUTPUT)).read()
    if "SCF run NOT converged" in out:
        raise LabelError("CP2K SCF not converged")
    m = re.findall(r"ENERGY\| Total FORCE_EVAL \( QS \) energy \[a\.u\.\]:\s+(\S+)", out)
    if not m:
        raise LabelError("CP2K output has no total energy (run did not finish)")
    energy = finite_floats([m[-1]], "energy")[0] * units.Hartree
    blocks = out.split("ATOMIC FORCES in [a.u.]")
    if len(blocks) < 2:
        raise LabelError("CP2K output has no forces")
    rows = []
    for ln in blocks[-1].splitlines()[3:]:
        if ln.strip().startswith("SUM OF ATOMIC FORCES") or not ln.strip():
            break
        rows.append(finite_floats(ln.split()[3:6], "force"))
    f_cp2k = np.array(rows) * units.Hartree / units.Bohr
    if f_cp2k.shape != (len(atoms), 3):
        raise LabelError(f"CP2K printed {len(f_cp2k)} forces for {len(atoms)} atoms")
    perm = map_by_position(atoms, _read_coords(os.path.join(workdir, INPUT)))
    forces = f_cp2k[perm]
    parts = out.split("STRESS| Analytical stress tensor [GPa]")
    if len(parts) < 2:
        raise LabelError("CP2K output has no stress tensor")
    num = r"([-+]?\d[-+.\dEeDd]*)"
    st = re.findall(rf"STRESS\|\s+([xyz])\s+{num}\s+{num}\s+{num}", parts[-1])[:3]
    if [r[0] for r in st] != ["x", "y", "z"]:
        raise LabelError("cannot parse the CP2K stress tensor")
    s3 = np.array([finite_floats(r[1:], "stress") for r in st])
    s3 = -s3 * units.GPa  # CP2K: positive = compressive; ASE: positive = tensile
    stress = full_3x3_to_voigt_6_stress(s3)
    return energy, forces, stress
