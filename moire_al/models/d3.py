"""D3(BJ) dispersion for PBE: energy, forces and stress (eV, eV/Å, eV/Å³, ASE's sign).

The model's energy is E = E_D3(BJ, PBE) + Σ_i ε_ACE(env_i); this module supplies the first
term, and it is the one D3 of the package: the calculator adds it, the fit subtracts it
from labels that hold it, and the GPAW labeller adds it to its DFT results.

Two backends give the same two-body D3(BJ) (no three-body term):

* ``kernel`` (default): our compiled loop (``csrc/d3.cpp``), ~20x faster than the library
  per MD step on a layered cell (docs/benchmarks.md), whose cost is the neighbour sum (a
  25 Å sphere holds ~2,000 neighbours in a bilayer). It keeps ghost atoms in fractional
  bins and visits each pair once in SIMD loops over contiguous ghosts, counts
  coordination numbers within their own cutoff and evaluates C6(CN_i, CN_j) from
  per-atom Gaussian weights. Its data are Grimme's
  reference C6 table as shipped in CP2K's ``dftd3.dat`` (Debian ``cp2k-data``;
  ``$MOIRE_AL_D3_TABLE`` points elsewhere), the BJ parameters from ``dftd3``'s own
  ``parameters.toml``; <r⁴>/<r²> and the covalent radii of the counting function are read
  off the ``dftd3`` library itself (undamped C8/C6 of a far dimer; C6 of a bonded dimer
  inverted through the table), once per element and process.
  With ``dftd3``'s own cutoffs (60 bohr dispersion, 40 bohr CN) it reproduces the
  library to round-off (tests); the defaults below trade that for speed within
  1e-4 eV/Å in forces and 0.01 meV/atom in energy differences.
* ``dftd3``: the simple-dftd3 library itself (``$MOIRE_AL_D3_BACKEND=dftd3``, or when
  the table or a C++ compiler is missing).
"""

from __future__ import annotations

import ctypes
import logging
import threading
from pathlib import Path

import numpy as np

from moire_al.errors import ModelError

log = logging.getLogger(__name__)

#: Dispersion and coordination-number cutoffs of the kernel backend, Å. dftd3's own are
#: 60 and 40 bohr (31.75, 21.17 Å). Measured against dftd3 (max force error, bilayer
#: graphene rattled by 0.1 Å): dispersion 22.5 / 25 / 27.5 / 31.75 Å give 1.3e-4 / 7.3e-5 /
#: 3.6e-5 / 9e-7 eV/Å at the full CN cutoff; the CN sum needs its full 21.17 Å (19 / 17 Å:
#: 1.2e-4 / 1.7e-4; its counting function tends to exp(-16), not 0, so dftd3's CN cutoff
#: is part of its result); the chain rule's cutoff 8 vs 10 Å moves forces by < 5e-6 eV/Å.
DISP_CUTOFF = 25.0
CN_CUTOFF = 40 * 0.52917721090380
#: Threads of the kernel (they split the atoms; any count gives the same numbers to 1e-12).
#: One: on this project's 2 cores, shared with the CP2K runs, 2 threads were 1.1-1.4x
#: slower per MD step than 1 (docs/benchmarks.md); pass ``threads=2`` on idle cores.
THREADS = 1
#: Pairs farther than this (Å) count in the CN but not in its chain rule (dCN/dr < 1e-6 /Å):
#: the CN *values* need the long cutoff (C6 shifts all pairs), their gradient does not.
CHAIN_CUTOFF = 10.0
#: Two-body D3(BJ) (no Axilrod-Teller-Muto three-body term), as VASP's IVDW = 12 and
#: CP2K's default DFTD3(BJ) compute it: D3 subtracted from those labels must match it.
D3_SETTINGS = {"method": "PBE", "damping": "d3bj", "three_body": False}
TABLE_ENV = "MOIRE_AL_D3_TABLE"
BACKEND_ENV = "MOIRE_AL_D3_BACKEND"
_TABLE_PATHS = ("/usr/share/cp2k/dftd3.dat", "/usr/local/share/cp2k/dftd3.dat")
_LOCK = threading.Lock()
_CACHE: dict = {}


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("dftd3")
    except Exception:  # pragma: no cover
        return "unknown"


def backend() -> str:
    """The backend d3_results uses here: ``kernel`` or ``dftd3``."""
    from moire_al.config import environment

    want = environment().d3_backend
    if want == "dftd3":
        return "dftd3"
    try:
        _kernel_data()
        from . import native

        native.load("d3")
        return "kernel"
    except ModelError as exc:
        if want == "kernel":
            raise
        with _LOCK:
            if "warned" not in _CACHE:
                _CACHE["warned"] = True
                log.warning("D3 kernel unavailable, using the dftd3 library (slower): %s", exc)
        return "dftd3"


def d3_settings() -> dict:
    out = dict(D3_SETTINGS, package="dftd3", version=_version(), backend=backend())
    if out["backend"] == "kernel":
        out.update(cutoff_A=DISP_CUTOFF, cn_cutoff_A=CN_CUTOFF, c6_table=str(table_path()))
    return out


def check_d3() -> None:
    """Raise ModelError with a clear message when D3 cannot be evaluated here."""
    try:
        from ase.build import bulk

        d3_results(bulk("C", "diamond", a=3.57))
    except ModelError:
        raise
    except Exception as exc:  # pragma: no cover - depends on the install
        raise ModelError(f"D3(BJ) dispersion is unavailable ({type(exc).__name__}: {exc}); "
                         "install the 'dftd3' package or build the model with d3=False") from exc


# ------------------------------------------------------------------ reference data
def table_path() -> Path:
    from moire_al.config import environment

    env = environment().d3_table
    cands = [env] if env else list(_TABLE_PATHS)
    for c in cands:
        if c and Path(c).is_file():
            return Path(c)
    raise ModelError(f"no D3 reference C6 table (CP2K's dftd3.dat; looked in {', '.join(cands)}): "
                     f"install the Debian package cp2k-data or set {TABLE_ENV}")


def _bj_params(method: str = "pbe") -> dict:
    import tomllib

    import dftd3

    with open(Path(dftd3.__file__).with_name("parameters.toml"), "rb") as fh:
        db = tomllib.load(fh)
    base = db["default"]["parameter"]["d3"]["bj"]
    p = dict(base, **db["parameter"][method.lower()]["d3"]["bj"])
    return {k: float(p.get(k, 0.0)) for k in ("s6", "s8", "a1", "a2")}


def _r4r2(z: int) -> float:
    """<r4>/<r2> factor q_z of element z (C8 = 3 C6 q_i q_j), from the dftd3 library:
    the ratio of the undamped C8 and C6 energies of a far homonuclear dimer."""
    from dftd3.interface import DispersionModel, RationalDampingParam

    r = 30.0
    model = DispersionModel(numbers=np.array([z, z]), positions=np.array([[0.0, 0, 0], [0, 0, r]]))
    e6 = float(model.get_dispersion(RationalDampingParam(s6=1.0, s8=0.0, a1=0.0, a2=0.0), False)["energy"])
    e8 = float(model.get_dispersion(RationalDampingParam(s6=0.0, s8=1.0, a1=0.0, a2=0.0), False)["energy"])
    return float(np.sqrt(e8 / e6 * r * r / 3.0))


def _read_table(path: Path) -> np.ndarray:
    raw = np.fromfile(path, sep=" ")
    nval = int(raw[0])
    rows = raw[2: 2 + nval].reshape(-1, 5)     # C6, Z1 + 100 ref1, Z2 + 100 ref2, CN1, CN2
    return rows


def _homo_c6(cn: float, refcn: np.ndarray, c6: np.ndarray) -> float:
    """C6(cn, cn) of a homonuclear pair from the reference data (the kernel's weights)."""
    g = np.exp(-4.0 * (cn - refcn) ** 2)
    w = g / g.sum()
    return float(w @ c6 @ w)


def _rcov(z: int, refcn: np.ndarray, c6: np.ndarray) -> float:
    """The covalent radius (bohr) of the counting function for element z, from the dftd3
    library: the undamped C6 energy of a homonuclear dimer gives C6(cn, cn), the table
    inverts it to cn, and cn = 1 / (1 + exp(-16 (2 rcov / r - 1))) gives rcov."""
    from dftd3.interface import DispersionModel, RationalDampingParam
    from scipy.optimize import brentq

    r = 3.8                                   # bohr: a start near a bond length
    rc = None
    for _ in range(3):
        model = DispersionModel(numbers=np.array([z, z]), positions=np.array([[0.0, 0, 0], [0, 0, r]]))
        e6 = float(model.get_dispersion(RationalDampingParam(s6=1.0, s8=0.0, a1=0.0, a2=0.0), False)["energy"])
        target = -e6 * r ** 6
        lo, hi = 1e-6, 0.999

        def f(cn, target=target):
            return _homo_c6(cn, refcn, c6) - target

        if f(lo) * f(hi) > 0:
            raise ModelError(f"cannot derive the D3 covalent radius of Z={z} from dftd3")
        cn = brentq(f, lo, hi, xtol=1e-15, rtol=1e-15)
        rc = r * (1.0 - np.log(1.0 / cn - 1.0) / 16.0)      # rcov_i + rcov_j
        r = rc                                             # cn = 1/2 there: best conditioned
    return float(rc / 2.0)


def _kernel_data() -> dict:
    """The C6 table and per-element data, read once per process."""
    with _LOCK:
        if "table" not in _CACHE:
            path = table_path()
            try:
                rows = _read_table(path)
            except Exception as exc:
                raise ModelError(f"cannot read the D3 C6 table {path}: {exc}") from exc
            _CACHE["table"] = rows
            _CACHE["elements"] = {}
        return _CACHE


def _element_data(zs: tuple) -> dict:
    """Arrays of the kernel for species ``zs`` (sorted atomic numbers), cached."""
    data = _kernel_data()
    key = ("species", zs)
    with _LOCK:
        if key in data:
            return data[key]
    rows = data["table"]
    z1 = np.rint(rows[:, 1]).astype(int)
    z2 = np.rint(rows[:, 2]).astype(int)
    e1, r1, e2, r2 = z1 % 100, z1 // 100, z2 % 100, z2 // 100
    ns = len(zs)
    refcn: dict = {z: {} for z in zs}
    for z in zs:
        for e, r, c in ((e1, r1, rows[:, 3]), (e2, r2, rows[:, 4])):
            sel = e == z
            for a, cn in zip(r[sel], c[sel]):
                refcn[z][int(a)] = float(cn)
        if not refcn[z]:
            raise ModelError(f"the D3 C6 table has no entry for Z={z}")
    nref = np.array([len(refcn[z]) for z in zs], np.int32)
    maxref = int(nref.max())
    rcn = np.zeros((ns, maxref))
    for s, z in enumerate(zs):
        for a, cn in refcn[z].items():
            rcn[s, a] = cn
    c6 = np.zeros((ns, ns, maxref, maxref))
    idx = {z: s for s, z in enumerate(zs)}
    for k in np.nonzero(np.isin(e1, zs) & np.isin(e2, zs))[0]:
        si, sj = idx[int(e1[k])], idx[int(e2[k])]
        a, b = int(r1[k]), int(r2[k])
        c6[si, sj, a, b] = rows[k, 0]
        c6[sj, si, b, a] = rows[k, 0]
    out = {"nref": nref, "maxref": maxref, "refcn": np.ascontiguousarray(rcn),
           "c6": np.ascontiguousarray(c6),
           "r4r2": np.array([_r4r2(z) for z in zs]),
           "rcov": np.array([_rcov(z, rcn[s, :nref[s]], c6[s, s, :nref[s], :nref[s]]) for s, z in enumerate(zs)])}
    with _LOCK:
        data[key] = out
    return out


# ------------------------------------------------------------------ evaluation
from .native import dptr, iptr  # noqa: E402


class D3Evaluator:
    """D3(BJ) through the compiled kernel, keeping its pair list between calls.

    The list holds every pair within the cutoff + ``skin`` (Å) and is rebuilt when an atom
    has moved more than skin / 2, or the cell, pbc or species change: in MD or a
    relaxation most calls only evaluate. ``cutoff`` / ``cn_cutoff``: dispersion and
    coordination-number cutoffs (Å). ``last_stats``: calls and rebuilds.
    """

    def __init__(self, cutoff: float = DISP_CUTOFF, cn_cutoff: float = CN_CUTOFF, skin: float = 1.0,
                 method: str = "pbe", chain_cutoff: float = CHAIN_CUTOFF, threads: int | None = None):
        from . import native

        self.cutoff, self.cn_cutoff, self.skin = float(cutoff), float(cn_cutoff), float(skin)
        self.threads = THREADS if threads is None else max(1, int(threads))
        self.chain_cutoff = min(float(chain_cutoff), self.cn_cutoff)
        try:
            self.params = _bj_params(method)
        except KeyError:
            raise ModelError(f"D3(BJ): no parameters for the functional {method!r}") from None
        self._lib = native.load("d3")
        self._lib.d3_list_new.restype = ctypes.c_void_p
        self._lib.d3_list_free.argtypes = [ctypes.c_void_p]
        self._lib.d3_eval.restype = ctypes.c_int
        self._list = None
        self._sig = None
        self.last_stats = {"calls": 0, "rebuilds": 0}

    def __del__(self):  # pragma: no cover - interpreter shutdown order varies
        try:
            self._free()
        except Exception:
            pass

    def _free(self):
        if self._list is not None:
            self._lib.d3_list_free(ctypes.c_void_p(self._list))
            self._list = None

    def _build(self, atoms, x, cell, name):
        from ase.units import Bohr

        self._free()
        pbc = np.asarray(atoms.pbc, np.int32)
        status = ctypes.c_int(0)
        ptr = self._lib.d3_list_new(ctypes.c_int(len(atoms)), dptr(x), dptr(cell), iptr(pbc),
                                    ctypes.c_double((self.chain_cutoff + self.skin) / Bohr),
                                    ctypes.c_double((self.cn_cutoff + self.skin) / Bohr),
                                    ctypes.c_double((self.cutoff + self.skin) / Bohr), ctypes.byref(status))
        if not ptr:
            _fail(status.value, name)
        self._list = ptr
        self._sig = (np.asarray(atoms.numbers).copy(), np.asarray(atoms.pbc, bool).copy(),
                     np.asarray(atoms.cell.array, float).copy(), np.asarray(atoms.positions, float).copy())
        self.last_stats["rebuilds"] += 1

    def _valid(self, atoms) -> bool:
        if self._list is None:
            return False
        z, pbc, cell, pos = self._sig
        if (len(atoms) != len(z) or not np.array_equal(atoms.numbers, z) or not np.array_equal(atoms.pbc, pbc)
                or not np.allclose(atoms.cell.array, cell, rtol=0, atol=1e-12)):
            return False
        moved = np.sqrt(((np.asarray(atoms.positions) - pos) ** 2).sum(1)).max(initial=0.0)
        return bool(moved < 0.5 * self.skin)

    def results(self, atoms, name: str = ""):
        """(energy, forces (N, 3), stress (6,) or None) in eV, eV/Å, eV/Å³ (ASE sign)."""
        from ase.units import Bohr, Hartree

        numbers = np.asarray(atoms.numbers)
        zs = tuple(sorted({int(z) for z in numbers}))
        d = _element_data(zs)
        sp = np.searchsorted(np.array(zs), numbers).astype(np.int32)
        pbc = np.asarray(atoms.pbc, bool)
        n = len(atoms)
        x = np.ascontiguousarray(np.asarray(atoms.positions, float) / Bohr)
        cell = np.ascontiguousarray((atoms.cell.complete().array if pbc.any() else np.eye(3)) / Bohr, float)
        if not self._valid(atoms):
            self._build(atoms, x, cell, name)
        p = self.params
        en, grad, sig, cn = np.zeros(n), np.zeros((n, 3)), np.zeros((3, 3)), np.zeros(n)
        rc = self._lib.d3_eval(
            ctypes.c_void_p(self._list), dptr(x), dptr(cell), iptr(sp), ctypes.c_int(len(zs)),
            ctypes.c_int(d["maxref"]), iptr(d["nref"]), dptr(d["refcn"]), dptr(d["c6"]), dptr(d["r4r2"]),
            dptr(d["rcov"]), ctypes.c_double(p["s6"]), ctypes.c_double(p["s8"]), ctypes.c_double(p["a1"]),
            ctypes.c_double(p["a2"]), ctypes.c_double(self.cutoff / Bohr), ctypes.c_double(self.cn_cutoff / Bohr),
            ctypes.c_double(self.chain_cutoff / Bohr), dptr(en), dptr(grad), dptr(sig), dptr(cn),
            ctypes.c_int(self.threads))
        if rc:
            _fail(rc, name)
        self.last_stats["calls"] += 1
        self.cn_ = cn
        energy = float(en.sum()) * Hartree
        forces = -grad * Hartree / Bohr
        stress = None
        if pbc.all() and atoms.cell.rank == 3:
            stress = _voigt(sig * Hartree / abs(np.linalg.det(atoms.cell.array)))
        return energy, forces, stress


def _fail(status, name):
    if status == 3:
        raise ModelError(f"structure {name or '?'}: D3: an element has more than 5 reference CNs or the structure more than 8 elements")
    if status == 1:
        raise ModelError(f"structure {name or '?'}: D3: the periodic cell is singular")
    raise ModelError(f"structure {name or '?'}: D3: two atoms sit on top of each other")


def kernel_results(atoms, name: str = "", cutoff: float = DISP_CUTOFF, cn_cutoff: float = CN_CUTOFF,
                   method: str = "pbe", chain_cutoff: float = CHAIN_CUTOFF, threads: int | None = None):
    """(energy, forces, stress or None) from the compiled kernel with the given cutoffs (Å),
    building a fresh pair list (no skin)."""
    return D3Evaluator(cutoff, cn_cutoff, skin=0.0, method=method, chain_cutoff=chain_cutoff,
                       threads=threads).results(atoms, name)


def _voigt(s):
    from ase.stress import full_3x3_to_voigt_6_stress     # xx yy zz, off-diagonals averaged

    return full_3x3_to_voigt_6_stress(np.asarray(s, float))


def dftd3_results(atoms, name: str = "", cutoffs=None, method: str = "pbe"):
    """(energy, forces, stress or None) from the ``dftd3`` library (cutoffs: (disp2, cn) Å or None
    for the library's defaults)."""
    try:
        from dftd3.interface import DispersionModel, RationalDampingParam
    except Exception as exc:
        raise ModelError(f"D3(BJ) dispersion is unavailable: cannot import dftd3 ({exc}); "
                         "install 'dftd3' or use d3=False") from exc
    from ase.units import Bohr, Hartree

    pbc = np.asarray(atoms.pbc, bool)
    periodic = pbc.any()
    try:
        disp = DispersionModel(
            numbers=np.asarray(atoms.numbers),
            positions=np.asarray(atoms.positions) / Bohr,
            lattice=np.asarray(atoms.cell.array) / Bohr if periodic else None,
            periodic=pbc if periodic else None,
        )
        if cutoffs is not None:
            disp.set_realspace_cutoff(cutoffs[0] / Bohr, cutoffs[0] / Bohr, cutoffs[1] / Bohr)
        res = disp.get_dispersion(RationalDampingParam(method=method.lower(), atm=False), grad=True)
    except Exception as exc:
        raise ModelError(f"structure {name or '?'}: D3(BJ) evaluation failed: {exc}") from exc
    energy = float(res["energy"]) * Hartree
    forces = -np.asarray(res["gradient"]) * Hartree / Bohr
    stress = None
    if pbc.all() and atoms.cell.rank == 3:
        vol = abs(np.linalg.det(atoms.cell.array))
        stress = _voigt(np.asarray(res["virial"]) * Hartree / vol)  # dE/dε / V = ASE stress
    return energy, forces, stress


class _LibraryEvaluator:
    """The dftd3 library behind D3Evaluator's interface (the fallback backend)."""

    def __init__(self, method: str = "pbe"):
        self.method = method
        self.last_stats = {"calls": 0, "rebuilds": 0}

    def results(self, atoms, name: str = ""):
        self.last_stats["calls"] += 1
        return dftd3_results(atoms, name, method=self.method)


def evaluator(skin: float = 1.0, method: str = "pbe"):
    """A D3 evaluator that keeps its pair list between calls (calculators, MD, relaxations)."""
    if backend() == "kernel":
        return D3Evaluator(skin=skin, method=method)
    return _LibraryEvaluator(method)


def d3_results(atoms, name: str = "", method: str = "pbe"):
    """(energy, forces (N, 3), stress (6,) or None) of D3(BJ) (PBE unless ``method``) for ``atoms``."""
    if not np.isfinite(np.asarray(atoms.positions, float)).all():
        raise ModelError(f"structure {name or '?'}: D3: positions are not finite")
    if backend() == "kernel":
        return kernel_results(atoms, name, method=method)
    return dftd3_results(atoms, name, method=method)
