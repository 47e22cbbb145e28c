"""GPAW labeller (PBE + D3(BJ), LCAO or plane waves) run through custodian.

The labeller writes three files into its run directory and lets custodian run them:

- ``structure.json``: the structure (numbers, positions, cell, pbc only);
- ``params.json``: the GPAW keyword arguments (mode, xc, k-mesh, smearing, mixer,
  maxiter, convergence) plus ``stress`` (requested in PW mode only);
- ``run.py``: a small script (:data:`RUN_SCRIPT`) that runs GPAW on them and writes
  ``results.json`` (rank 0, atomically): ``status`` = ``"ok"`` (energy, forces,
  stress), ``"scf_not_converged"`` (GPAW raised ``KohnShamConvergenceError``; exit
  code 3), ``"missing_setup"`` (no PAW dataset / basis file for an element; exit
  code 4) or ``"error"`` (anything else, with the traceback; exit code 1).

:class:`GpawJob` starts ``run.py`` (``python run.py`` for one rank, else
``/usr/bin/mpiexec -n N gpaw python run.py``) in its own process group and ends only
that group. Handlers: :class:`GpawScfHandler` (SCF not converged → smaller Pulay
``beta``, longer history, wider smearing, more iterations, at most
``max_corrections`` times) and :class:`GpawSetupHandler` (missing PAW setups → not
correctable: the failure names the element and says to install ``gpaw-data``).

D3(BJ): GPAW has no native D3(BJ) without the ``dftd3`` executable, so the labeller
adds two-body D3(BJ) from ``moire_al.models.d3`` (the package's one D3, also what the
model subtracts and adds)
to GPAW's energy, forces and (PW) stress and records ``d3_included=True``; the two
parts are kept in ``d3.json`` in the run directory.

Stress: plane-wave mode only. GPAW's LCAO mode has no stress, so LCAO labels carry
``stress=None`` (the model then fits no virial for them).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
from functools import lru_cache

import numpy as np
from custodian.custodian import ErrorHandler, Job

from moire_al.errors import LabelError, SettingsError
from moire_al.labelling.base import check_structure, structure_name
from moire_al.labelling.common import kpoint_mesh, label_through_custodian

STRUCTURE, PARAMS, SCRIPT, RESULTS = "structure.json", "params.json", "run.py", "results.json"
OUTPUT, STDERR, TXT, D3_FILE = "gpaw.out", "gpaw.err", "gpaw.txt", "d3.json"
EXIT_SCF, EXIT_SETUP = 3, 4

DEFAULTS = {
    "mode": "pw",            # "pw" | "lcao"
    "ecut": 500.0,           # eV, plane-wave cutoff (PW mode)
    "basis": "dzp",          # LCAO basis (also the initial guess in PW mode)
    "kspacing": 0.3,         # Å⁻¹, 2π included (as CP2K / VASP KSPACING)
    "kpts": None,            # explicit mesh instead of kspacing
    "smearing": 0.05,        # eV, Fermi-Dirac width
    "xc": "PBE",
    "d3": True,              # add two-body D3(BJ) (moire_al.models.d3)
    "maxiter": 300,
    "mixer": {"name": "pulay", "beta": 0.05, "nmaxold": 5, "weight": 50.0},
    "scf_energy": 1e-6,      # eV per valence electron
    "scf_density": 1e-5,     # electrons per valence electron
    "max_corrections": 3,
}
# How to run, not what to compute: accepted as settings but kept out of
# ``labeller.settings`` so the label key does not depend on the parallelisation.
RUN_OPTIONS = {
    "ranks": 1,              # MPI ranks (> 1: /usr/bin/mpiexec -n ranks gpaw python run.py)
    "omp_threads": 1,
    "mpiexec": "/usr/bin/mpiexec",
}
MODES = ("pw", "lcao")
INSTALL_HINT = "run scripts/install_dft.sh (GPAW 26.7.0 built against OpenMPI + gpaw-data)"
SETUP_HINT = ("install the PAW setups and basis sets: pip install gpaw-data (PyPI, no "
              "download at run time; scripts/install_dft.sh does it), or point "
              "GPAW_SETUP_PATH at a directory holding them")

# Limits of the SCF correction ladder.
BETA_MIN, NMAXOLD_MAX, WIDTH_MAX, MAXITER_MIN, MAXITER_MAX = 0.01, 10, 0.2, 100, 2000

RUN_SCRIPT = '''\
"""GPAW single point written by moire_al.labelling.gpaw; run: python run.py
(or mpiexec -n N gpaw python run.py). Reads structure.json + params.json, writes
results.json (status ok | scf_not_converged | missing_setup | error)."""
import json
import os
import re
import sys
import traceback

from ase.io import read
from gpaw import GPAW, KohnShamConvergenceError, __version__
from gpaw.mpi import world

params = json.load(open("params.json"))
atoms = read("structure.json")
out = {"gpaw_version": __version__, "ranks": world.size}
code = 0
try:
    atoms.calc = GPAW(txt="gpaw.txt", **params["gpaw"])
    out["energy"] = float(atoms.get_potential_energy())
    out["forces"] = atoms.get_forces().tolist()
    out["stress"] = atoms.get_stress(voigt=True).tolist() if params["stress"] else None
    out["status"] = "ok"
except KohnShamConvergenceError as exc:
    out.update(status="scf_not_converged", code=EXIT_SCF,
               message=f"SCF not converged in {params['gpaw']['maxiter']} iterations "
                       f"({type(exc).__name__})")
except FileNotFoundError as exc:
    m = re.search(r'Could not find required (PAW dataset|basis set) file "([^"]+)"', str(exc))
    if not m:
        raise
    out.update(status="missing_setup", code=EXIT_SETUP, kind=m.group(1), file=m.group(2),
               element=m.group(2).split(".")[0],
               message=str(exc).strip().splitlines()[0])
except Exception as exc:
    out.update(status="error", code=1, message=f"{type(exc).__name__}: {exc}",
               traceback=traceback.format_exc()[-4000:])
if world.rank == 0:
    with open("results.json.tmp", "w") as fh:
        json.dump(out, fh)
    os.replace("results.json.tmp", "results.json")
sys.exit(out.get("code", 0))
'''.replace("EXIT_SCF", str(EXIT_SCF)).replace("EXIT_SETUP", str(EXIT_SETUP))


# ------------------------------------------------------------------ helpers
def read_results(directory) -> dict | None:
    path = os.path.join(directory, RESULTS)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return {"status": "error", "message": f"{RESULTS} is unreadable"}


def missing_setup_message(res: dict) -> str:
    from gpaw import setup_paths

    return (f"GPAW has no {res.get('kind', 'PAW dataset')} for element "
            f"{res.get('element', '?')} (file {res.get('file', '?')!r} not found in "
            f"{', '.join(map(str, setup_paths)) or 'no setup path'}); {SETUP_HINT}")


@lru_cache(maxsize=4)
def _is_openmpi(mpiexec: str) -> bool:
    try:
        out = subprocess.run([mpiexec, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return "Open MPI" in out.stdout + out.stderr or "OpenRTE" in out.stdout + out.stderr


def _tail(path, n=2000) -> str:
    try:
        with open(path, errors="replace") as fh:
            return fh.read()[-n:].strip()
    except OSError:
        return ""


# ------------------------------------------------------------------ custodian
class GpawJob(Job):
    """Runs ``cmd`` (e.g. ``python run.py``) in the run directory, in its own session.

    ``terminate`` signals that process group only (never other GPAW runs on the host).
    ``results.json`` from a previous attempt is removed before each start.
    """

    def __init__(self, cmd, env=None, output_file=OUTPUT, stderr_file=STDERR):
        self.cmd = list(cmd)
        self.env = dict(env or {})
        self.output_file = output_file
        self.stderr_file = stderr_file
        self._process = None

    def setup(self, directory="./"):
        for f in (SCRIPT, STRUCTURE, PARAMS):
            if not os.path.exists(os.path.join(directory, f)):
                raise LabelError(f"GPAW run directory {directory} lacks {f}")

    def run(self, directory="./"):
        for f in (RESULTS, RESULTS + ".tmp"):
            path = os.path.join(directory, f)
            if os.path.exists(path):
                os.remove(path)
        env = {**os.environ, **self.env}
        with open(os.path.join(directory, self.output_file), "ab") as out, \
                open(os.path.join(directory, self.stderr_file), "ab") as err:
            self._process = subprocess.Popen(self.cmd, cwd=directory, env=env, stdout=out,
                                             stderr=err, start_new_session=True)
        return self._process

    def postprocess(self, directory="./"):
        res = read_results(directory)
        if res is None or res.get("status") != "ok":
            raise LabelError(f"GPAW finished without results ({RESULTS}: {res})")

    def terminate(self, directory="./"):
        p = self._process
        if p is None or p.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
            try:
                os.killpg(p.pid, sig)  # the session we started: our own process group
            except ProcessLookupError:
                return
            try:
                p.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue


class GpawScfHandler(ErrorHandler):
    """SCF not converged: smaller Pulay beta, longer history, wider smearing, more iterations."""

    is_monitor = False
    raise_on_max = True

    def __init__(self, max_num_corrections=3):
        self.max_num_corrections = max_num_corrections

    def check(self, directory="./"):
        res = read_results(directory)
        return bool(res) and res.get("status") == "scf_not_converged"

    def correct(self, directory="./"):
        path = os.path.join(directory, PARAMS)
        with open(path) as fh:
            params = json.load(fh)
        g = params["gpaw"]
        actions = []

        def change(key, old, new):
            if old != new:
                actions.append({"key": key, "old": old, "new": new})

        mixer = dict(g.get("mixer") or {})
        new_mixer = {"name": "pulay",
                     "beta": round(max(BETA_MIN, 0.5 * float(mixer.get("beta", 0.05))), 4),
                     "nmaxold": min(NMAXOLD_MAX, int(mixer.get("nmaxold", 5)) + 3),
                     "weight": float(mixer.get("weight", 50.0))}
        change("mixer", mixer, new_mixer)
        g["mixer"] = new_mixer
        occ = dict(g["occupations"])
        width = min(WIDTH_MAX, round(2 * float(occ["width"]), 4))
        change("occupations.width", occ["width"], width)
        g["occupations"] = {**occ, "width": width}
        maxiter = min(MAXITER_MAX, max(MAXITER_MIN, 2 * int(g["maxiter"])))
        change("maxiter", g["maxiter"], maxiter)
        g["maxiter"] = maxiter
        if not actions:  # everything at its limit: give up
            return {"errors": ["scf_not_converged"], "actions": None}
        with open(path + ".tmp", "w") as fh:
            json.dump(params, fh, indent=1)
        os.replace(path + ".tmp", path)
        return {"errors": ["scf_not_converged"], "actions": actions}


class GpawSetupHandler(ErrorHandler):
    """Missing PAW dataset / basis file for an element: not correctable."""

    is_monitor = False

    def __init__(self):
        pass

    def check(self, directory="./"):
        res = read_results(directory)
        return bool(res) and res.get("status") == "missing_setup"

    def correct(self, directory="./"):
        res = read_results(directory) or {}
        return {"errors": ["missing_setup", missing_setup_message(res)], "actions": None}


# ------------------------------------------------------------------ labeller
class GpawLabeller:
    """PBE + D3(BJ) labels from GPAW (LCAO or PW) through custodian; a cross-check of CP2K.

    Settings (defaults in ``DEFAULTS``): ``mode`` (``"pw"``/``"lcao"``), ``ecut`` (eV,
    PW), ``basis`` (LCAO), ``kspacing`` (Å⁻¹, 2π included) or explicit ``kpts``,
    ``smearing`` (Fermi-Dirac width, eV), ``xc``, ``d3``, ``maxiter``, ``mixer``
    (GPAW mixer dict), ``scf_energy``/``scf_density``, ``max_corrections``,
    ``ranks``, ``omp_threads``, ``mpiexec``.
    """

    name = "gpaw"
    code = "gpaw"

    def __init__(self, settings: dict | None = None):
        settings = dict(settings or {})
        unknown = set(settings) - set(DEFAULTS) - set(RUN_OPTIONS)
        if unknown:
            raise SettingsError(f"gpaw labeller: unknown setting(s) {sorted(unknown)}")
        self.run_options = {k: settings.pop(k, v) for k, v in RUN_OPTIONS.items()}
        s = dict(DEFAULTS)
        s.update(settings)
        s["mode"] = str(s["mode"]).lower()
        if s["mode"] not in MODES:
            raise SettingsError(f"gpaw labeller: mode must be one of {MODES}, got {s['mode']!r}")
        if int(self.run_options["ranks"]) < 1 or int(s["max_corrections"]) < 0:
            raise SettingsError("gpaw labeller: ranks must be >= 1 and max_corrections >= 0")
        self.settings = s

    # ------------------------------------------------------------ inputs
    def check(self, atoms, name=""):
        check_structure(atoms, name)
        return kpoint_mesh(atoms, self.settings["kspacing"], self.settings["kpts"], name)

    def gpaw_parameters(self, mesh) -> dict:
        s = self.settings
        if s["mode"] == "pw":
            extra = {"mode": {"name": "pw", "ecut": float(s["ecut"])}}
        else:
            extra = {"mode": {"name": "lcao"}, "basis": s["basis"]}
        return {
            **extra, "xc": s["xc"],
            "kpts": {"size": [int(k) for k in mesh], "gamma": True},
            "occupations": {"name": "fermi-dirac", "width": float(s["smearing"])},
            "mixer": dict(s["mixer"]), "maxiter": int(s["maxiter"]),
            "convergence": {"energy": float(s["scf_energy"]), "density": float(s["scf_density"])},
        }

    def write_inputs(self, atoms, workdir, mesh) -> None:
        from ase import Atoms
        from ase.io import write

        clean = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell,
                      pbc=atoms.pbc)
        write(os.path.join(workdir, STRUCTURE), clean, format="json")
        params = {"gpaw": self.gpaw_parameters(mesh), "stress": self.settings["mode"] == "pw"}
        with open(os.path.join(workdir, PARAMS), "w") as fh:
            json.dump(params, fh, indent=1)
        with open(os.path.join(workdir, SCRIPT), "w") as fh:
            fh.write(RUN_SCRIPT)

    def command(self) -> tuple[list[str], dict]:
        s = self.run_options
        env = {"OMP_NUM_THREADS": str(s["omp_threads"])}
        if int(s["ranks"]) == 1:
            return [sys.executable, SCRIPT], env
        mpiexec = s["mpiexec"]
        if not (os.path.isfile(mpiexec) and os.access(mpiexec, os.X_OK)):
            raise LabelError(f"{mpiexec} not found; GPAW needs OpenMPI's mpiexec "
                             "(apt-get install openmpi-bin)")
        if not _is_openmpi(mpiexec):
            raise LabelError(f"{mpiexec} is not OpenMPI's mpiexec; GPAW here is built against "
                             "OpenMPI (not the venv's MPICH): use /usr/bin/mpiexec")
        gpaw_exe = os.path.join(os.path.dirname(sys.executable), "gpaw")
        if not os.path.exists(gpaw_exe):
            gpaw_exe = shutil.which("gpaw") or gpaw_exe
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
        return [mpiexec, "-n", str(int(s["ranks"])), gpaw_exe, "python", SCRIPT], env

    # ------------------------------------------------------------ running
    def label(self, atoms, workdir):
        name = structure_name(atoms)
        mesh = self.check(atoms, name)  # StructureError for bad input
        if importlib.util.find_spec("gpaw") is None:
            raise LabelError(f"GPAW is not installed; {INSTALL_HINT}")
        if self.settings["d3"] and importlib.util.find_spec("dftd3") is None:
            raise LabelError("the dftd3 package (D3(BJ) for GPAW labels) is not installed: "
                             "pip install dftd3")
        cmd, env = self.command()

        def compute(wd):
            self.write_inputs(atoms, wd, mesh)
            self._run(cmd, env, wd)
            energy, forces, stress, version = parse_results(wd, atoms)
            if self.settings["d3"]:
                energy, forces, stress = add_d3(atoms, energy, forces, stress, self.settings["xc"], wd)
            return energy, forces, stress, version
        return label_through_custodian(
            atoms, self, workdir, compute,
            explain=lambda exc: _explain(exc, os.fspath(workdir), self.settings["max_corrections"]))

    def _run(self, cmd, env, workdir) -> None:
        from custodian import Custodian

        n = int(self.settings["max_corrections"])
        job = GpawJob(cmd, env=env)
        handlers = [GpawSetupHandler(), GpawScfHandler(max_num_corrections=n)]
        # max_errors counts corrections; one more than max_corrections lets the last
        # corrected input run, and the SCF handler raises when asked for one more.
        c = Custodian(handlers, [job], max_errors=n + 1, max_errors_per_job=n + 1,
                      polling_time_step=1, monitor_freq=5, directory=workdir,
                      gzipped_output=False)
        try:
            c.run()
        finally:
            self._last_log = getattr(c, "run_log", [])


# The class name becomes the failure's ``error_type``.
class MissingSetups(LabelError):
    """No PAW dataset / basis file for an element (install gpaw-data)."""


class ScfNotConverged(LabelError):
    """The SCF did not converge, also after the corrections allowed."""


class GpawError(LabelError):
    """GPAW stopped for another reason (traceback / stderr in the message)."""


def _explain(exc, workdir, max_corrections) -> Exception:
    """Turn custodian's generic errors into a failure saying what happened and what to do."""
    res = read_results(workdir) or {}
    status = res.get("status")
    if status == "missing_setup":
        return MissingSetups(missing_setup_message(res))
    if status == "scf_not_converged":
        return ScfNotConverged(
            f"{res.get('message', 'SCF not converged')} with the last corrected input; "
            f"custodian stopped: {type(exc).__name__} ({max_corrections} correction(s) "
            f"allowed, settings max_corrections); see {os.path.join(workdir, TXT)}")
    if status == "error":
        return GpawError(f"GPAW failed: {res.get('message')}\n{res.get('traceback', '')}")
    if status is None and not isinstance(exc, LabelError):
        tail = _tail(os.path.join(workdir, STDERR))
        return GpawError(f"GPAW run gave no {RESULTS} ({type(exc).__name__}: {exc}); "
                         f"stderr: {tail or '(empty)'}")
    return exc


# ------------------------------------------------------------------ parsing
def parse_results(workdir, atoms):
    """(energy eV, forces eV/Å, Voigt stress eV/Å³ ASE sign or None, GPAW version)."""
    res = read_results(workdir)
    if res is None or res.get("status") != "ok":
        raise LabelError(f"GPAW gave no results in {workdir} ({res})")
    energy = res.get("energy")
    forces = np.asarray(res.get("forces"), dtype=float)
    if forces.shape != (len(atoms), 3):
        raise LabelError(f"GPAW returned forces of shape {forces.shape} for {len(atoms)} atoms")
    stress = res.get("stress")
    stress = None if stress is None else np.asarray(stress, dtype=float)
    for what, x in (("energy", energy), ("forces", forces), ("stress", stress)):
        if x is not None and not np.all(np.isfinite(np.asarray(x, dtype=float))):
            raise LabelError(f"GPAW {what} contains NaN or inf")
    return float(energy), forces, stress, str(res.get("gpaw_version", "unknown"))


def add_d3(atoms, energy, forces, stress, xc, workdir=None):
    """GPAW + D3(BJ) two-body (moire_al.models.d3, the same D3 the model subtracts):
    energy, forces and, when given, stress."""
    from moire_al.errors import ModelError
    from moire_al.models.d3 import d3_results

    try:
        e_d3, f_d3, s_d3 = d3_results(atoms, method=xc)
    except ModelError as exc:
        raise LabelError(str(exc)) from exc
    if stress is not None and s_d3 is None:
        raise LabelError("D3 stress needs a 3D periodic cell")
    if workdir is not None:
        with open(os.path.join(workdir, D3_FILE), "w") as fh:
            json.dump({"energy_dft": energy, "energy_d3": e_d3, "forces_d3": f_d3.tolist(),
                       "stress_d3": None if s_d3 is None else s_d3.tolist(),
                       "method": xc, "damping": "d3bj", "three_body": False}, fh)
    return (energy + e_d3, forces + f_d3, None if stress is None else stress + s_d3)


__all__ = ["DEFAULTS", "GpawJob", "GpawLabeller", "GpawScfHandler", "GpawSetupHandler",
           "RUN_SCRIPT", "add_d3", "parse_results"]
