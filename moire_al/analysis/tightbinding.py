"""Slater–Koster p_z tight binding of (twisted) hBN multilayers and its kernel polynomial
method (seed 000, App. C).

One p_z orbital per site; on-site V_B = −1.287 eV, V_N = −5.393 eV. The matrix
element between sites i ≠ j at separation r (vertical component z) is the
Slater–Koster two-centre integral

    H_ij = (z/r)² V_ppσ(r) + (1 − (z/r)²) V_ppπ(r)                       (C3)
    V_ppσ(r) = γ1 exp(q_σ (1 − r/c)),  V_ppπ(r) = γ0 exp(q_π (1 − r/a_BN))  (C4a, b)
    q_σ / c = q_π / a_BN = ln(γ0'/γ0) / (a_BN − a)                         (C4c)

with γ0 = −2.7 eV (in-plane nearest neighbours), γ0' = 0.1 γ0 (at the second-neighbour
distance a), species prefactors γ1 (BB 0.831, NN 0.3989, BN 0.6601 eV), c the AA
interlayer distance (``DEFAULT_C``: the PBE+D3(BJ) AA minimum from CP2K), a the lattice
parameter and a_BN = a/√3 the B–N bond.

Sign (``convention``). The seed's (C2) is H = −Σ t(R_i − R_j) |i⟩⟨j| + Σ V_i |i⟩⟨i| with
t given by (C3) and γ0 = −2.7 eV, so every matrix element is −t: +2.7 eV between in-plane
neighbours, −γ1 e^{…} between vertical pairs (``"seed"``, the default). Its source (Moon &
Koshino, PRB 90, 155406) writes −t = (C3), i.e. H_ij = +t, the Slater–Koster signs
V_ppπ < 0, V_ppσ > 0 (``"slater-koster"``). The two are not gauge-equivalent: flipping
every hopping is, up to the sublattice and layer gauges, flipping the sign of the
in-plane B–B/N–N and of the interlayer B–N hoppings relative to the rest. Only the
literal (C2) reproduces the seed's "B carries ~3× the induced charge of N" (B/N ≈ 4
against 0.75, docs/analysis.md), so it is the default.

The Hamiltonian is the Γ-point matrix of the periodic cell (image hoppings folded in);
cells narrower than ``min_width`` are first repeated in-plane (an n×n repetition
at Γ is an n×n k-mesh), so every structure is treated at the same BZ sampling.

KPM: Chebyshev moments μ_n(i) = ⟨i|T_n(H̃)|i⟩ of every site with a Jackson kernel
(Weiße et al., RMP 78, 275). The integrated LDOS up to μ has a closed form in the
moments. All sites at once with *probing*: sites are coloured so that two sites of
one colour are ≥ ``probe_radius`` apart in-plane, and one Chebyshev recursion runs per
colour on the sum of its unit vectors; site i then reads its own entry. The error is
the density-matrix element between same-colour sites, which decays exponentially in
an insulator (hBN: gap ≈ 4 eV); ``probe_radius=None`` gives the exact per-site moments.
See docs/analysis.md for the measured accuracy and why this beats pybinding here.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import scipy.sparse as sp

from moire_al.errors import MoireALError, StructureError

DEFAULT_A = 2.504      # Å, hBN lattice parameter (moire_al.structures)
#: Å, c of (C4a): the AA interlayer distance, the PBE+D3(BJ) equilibrium of flat AA bilayer
#: hBN at a = 2.504 Å fitted to the committed CP2K binding curve data/dft/hbn_binding.extxyz
#: (Morse + grid egg-box term; ``python scripts/dft_sets.py binding-fit``, docs/analysis.md).
#: The same cells labelled with CP2K's XC grid smoothing (data/dft/hbn_binding_xcsmooth.extxyz,
#: egg-box 13x smaller) give 3.5997 Å. Before: 3.565 Å, the AA minimum of the reference
#: potential (Tersoff+ILP), not DFT.
DEFAULT_C = 3.596
CONVENTIONS = ("seed", "slater-koster")   # H_ij = −t(r) (seed's C2) or +t(r)


@dataclass(frozen=True)
class SlaterKoster:
    """Parameters of the seed-000 p_z model (energies eV, lengths Å).

    ``a``: lattice parameter; None takes the structure's ``info["a"]`` (else 2.504 Å).
    ``cutoff``: neighbour cut-off; 6 Å changes layer charges by < 1e-5 relative to 7 Å
    (5 Å: 2 %), see docs/analysis.md. ``convention``: the sign of the matrix element,
    ``"seed"`` (H_ij = −t, the seed's C2 as written) or ``"slater-koster"`` (H_ij = +t)."""

    onsite_B: float = -1.287
    onsite_N: float = -5.393
    gamma0: float = -2.7
    gamma0_prime_ratio: float = 0.1
    gamma1_BB: float = 0.831
    gamma1_NN: float = 0.3989
    gamma1_BN: float = 0.6601
    a: float | None = None
    c: float = DEFAULT_C
    cutoff: float = 6.0
    convention: str = "seed"

    def __post_init__(self):
        if self.convention not in CONVENTIONS:
            raise MoireALError(f"tight-binding convention {self.convention!r}: choose from "
                               f"{', '.join(CONVENTIONS)}")
        for name in ("a", "c", "cutoff"):
            value = getattr(self, name)
            if value is not None and not (np.isfinite(value) and value > 0):
                raise MoireALError(f"tight-binding parameter {name} must be a positive "
                                   f"length (Å), got {value}")
        if not 0 < self.gamma0_prime_ratio < 1:
            raise MoireALError("gamma0_prime_ratio must lie in (0, 1)")

    def lattice_parameter(self, atoms=None) -> float:
        if self.a is not None:
            return float(self.a)
        if atoms is not None and atoms.info.get("a"):
            return float(atoms.info["a"])
        return DEFAULT_A

    def decay(self, a: float) -> float:
        """q_π / a_BN = q_σ / c (1/Å)."""
        a_bn = a / math.sqrt(3.0)
        return math.log(self.gamma0_prime_ratio) / (a_bn - a)

    def hopping(self, d: np.ndarray, boron_i: np.ndarray, boron_j: np.ndarray,
                a: float) -> np.ndarray:
        """H_ij (eV) for separation vectors ``d`` (K, 3) between sites of species
        (``boron_i``, ``boron_j``: bool arrays): ∓t(r) of (C3) for ``convention``
        seed / slater-koster."""
        k = self.decay(a)
        a_bn = a / math.sqrt(3.0)
        r = np.linalg.norm(d, axis=1)
        n2 = (d[:, 2] / r) ** 2
        g1 = np.where(boron_i & boron_j, self.gamma1_BB,
                      np.where(~boron_i & ~boron_j, self.gamma1_NN, self.gamma1_BN))
        v_sigma = g1 * np.exp(k * (self.c - r))
        v_pi = self.gamma0 * np.exp(k * (a_bn - r))
        t = n2 * v_sigma + (1.0 - n2) * v_pi
        return -t if self.convention == "seed" else t

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class TBSystem:
    """A structure ready for tight binding: the (repeated) periodic cell and its
    Γ-point Hamiltonians. ``source[k]``: index in the input structure of site k;
    ``reps``: in-plane repetitions; ``H_layers``: the same sites with every
    interlayer hopping removed (isolated layers, the reference of induced charges)."""

    atoms: object
    source: np.ndarray
    reps: tuple
    H: sp.csr_matrix
    H_layers: sp.csr_matrix
    boron: np.ndarray
    layer: np.ndarray
    a: float
    model: SlaterKoster
    timings: dict = field(default_factory=dict)

    @property
    def n_sites(self) -> int:
        return self.H.shape[0]


def check_bn_layers(atoms):
    """Raise :class:`StructureError` unless ``atoms`` is a periodic B/N stack of ≥ 2 layers."""
    from moire_al.analysis.common import layers_of

    if len(atoms) == 0:
        raise StructureError("the structure has no atoms")
    syms = set(atoms.get_chemical_symbols())
    if not syms <= {"B", "N"}:
        raise StructureError(f"the p_z model of seed 000 is for hBN (B, N); found "
                             f"{', '.join(sorted(syms - {'B', 'N'}))}")
    cell = atoms.cell.array
    if abs(np.linalg.det(cell[:2, :2])) < 1e-6 or not all(atoms.pbc[:2]):
        raise StructureError("the structure needs a periodic in-plane cell (pbc along a and b)")
    if abs(cell[0, 2]) > 1e-6 or abs(cell[1, 2]) > 1e-6:
        raise StructureError("in-plane cell vectors must lie in the xy plane")
    layers = layers_of(atoms)
    if len(np.unique(layers)) < 2:
        raise StructureError("induced charge needs at least two layers")
    return layers


def cell_widths(cell: np.ndarray) -> np.ndarray:
    """Perpendicular widths (Å) of the in-plane cell across its two edges."""
    area = abs(np.linalg.det(cell[:2, :2]))
    return np.array([area / np.linalg.norm(cell[1, :2]), area / np.linalg.norm(cell[0, :2])])


def build_system(atoms, model: SlaterKoster | None = None, min_width: float = 40.0) -> TBSystem:
    """The tight-binding system of ``atoms``: repeat the cell until both widths are
    ≥ ``min_width`` (Å), find all pairs within the cut-off (ASE neighbour list,
    periodic in-plane) and assemble both Γ-point Hamiltonians."""
    from ase.neighborlist import neighbor_list

    model = model or SlaterKoster()
    if not (np.isfinite(min_width) and min_width > 0):
        raise MoireALError(f"min_width must be a positive length (Å), got {min_width}")
    layers = check_bn_layers(atoms)
    t0 = time.perf_counter()
    reps = tuple(int(max(1, math.ceil(min_width / w - 1e-9))) for w in cell_widths(atoms.cell.array))
    work = atoms.copy()
    work.arrays["layer"] = layers
    work.pbc = (True, True, False)
    work.calc = None
    if reps != (1, 1):
        work = work.repeat((reps[0], reps[1], 1))
    source = np.tile(np.arange(len(atoms)), reps[0] * reps[1])
    a = model.lattice_parameter(atoms)
    i, j, d = neighbor_list("ijD", work, model.cutoff)
    t1 = time.perf_counter()
    boron = np.array(work.get_chemical_symbols()) == "B"
    lay = work.arrays["layer"]
    t = model.hopping(d, boron[i], boron[j], a)
    n = len(work)
    onsite = np.where(boron, model.onsite_B, model.onsite_N)
    diag = sp.diags(onsite, format="csr")
    H = (sp.csr_matrix((t, (i, j)), shape=(n, n)) + diag).tocsr()
    same = lay[i] == lay[j]
    H0 = (sp.csr_matrix((t[same], (i[same], j[same])), shape=(n, n)) + diag).tocsr()
    H.sum_duplicates()
    H0.sum_duplicates()
    return TBSystem(atoms=work, source=source, reps=reps, H=H, H_layers=H0, boron=boron,
                    layer=lay, a=a, model=model,
                    timings={"neighbours_s": t1 - t0, "hamiltonian_s": time.perf_counter() - t1})


# ------------------------------------------------------------------ Chebyshev / KPM
def spectral_bounds(H, margin: float = 0.02) -> tuple[float, float]:
    """(E_min, E_max) of H from Lanczos, widened by ``margin`` of the width (KPM needs
    the whole spectrum inside [−1, 1] after rescaling)."""
    from scipy.sparse.linalg import eigsh

    n = H.shape[0]
    if n <= 64:
        w = np.linalg.eigvalsh(H.toarray())
        lo, hi = float(w[0]), float(w[-1])
    else:
        lo = float(eigsh(H, k=1, which="SA", tol=1e-6, return_eigenvectors=False)[0])
        hi = float(eigsh(H, k=1, which="LA", tol=1e-6, return_eigenvectors=False)[0])
    pad = margin * (hi - lo) + 1e-3
    return lo - pad, hi + pad


def jackson_kernel(n_moments: int) -> np.ndarray:
    """Jackson damping factors g_n, n = 0..N−1."""
    N = int(n_moments)
    n = np.arange(N)
    q = math.pi / (N + 1)
    return ((N - n + 1) * np.cos(q * n) + np.sin(q * n) / math.tan(q)) / (N + 1)


def probe_colours(xy: np.ndarray, cell2: np.ndarray, radius: float | None) -> np.ndarray:
    """Greedy colouring of sites: two sites of one colour are ≥ ``radius`` apart
    (in-plane minimum-image distance). ``radius=None``: every site its own colour."""
    from scipy.spatial import cKDTree

    from moire_al.analysis.common import tiled_xy

    n = len(xy)
    if radius is None:
        return np.arange(n)
    cell3 = np.zeros((3, 3))
    cell3[:2, :2] = cell2
    reach = int(math.ceil(radius / cell_widths(cell3).min())) if radius > 0 else 0
    big, src = tiled_xy(np.column_stack([xy, np.zeros(n)]), cell3, max(reach, 1))
    tree = cKDTree(big)
    colour = np.full(n, -1, dtype=np.int64)
    # a site's own images carry the same state (Γ point): never a conflict
    for k, nb in enumerate(tree.query_ball_point(xy, radius)):
        used = colour[src[nb]]
        used = np.unique(used[used >= 0])
        c = 0
        for u in used:  # sorted: the first gap
            if u != c:
                break
            c += 1
        colour[k] = c
    return colour


def diagonal_moments(H, n_moments: int, bounds: tuple[float, float],
                     colours: np.ndarray | None = None, block: int = 512) -> np.ndarray:
    """Chebyshev moments μ_n(i) = ⟨i|T_n(H̃)|i⟩, shape (n_moments, N), with
    H̃ = (H − b)/a mapping ``bounds`` onto [−1, 1]. ``colours``: probing colours
    (:func:`probe_colours`); None = exact (one vector per site). Colours run in
    blocks of ``block`` vectors (a sparse × dense product per step)."""
    n = H.shape[0]
    lo, hi = bounds
    a, b = (hi - lo) / 2.0, (hi + lo) / 2.0
    Ht = ((H - b * sp.identity(n, format="csr")) / a).tocsr()
    colours = np.arange(n) if colours is None else np.asarray(colours)
    n_col = int(colours.max()) + 1
    mu = np.empty((int(n_moments), n))
    rows = np.arange(n)
    for c0 in range(0, n_col, block):
        c1 = min(n_col, c0 + block)
        sel = (colours >= c0) & (colours < c1)
        r, cc = rows[sel], colours[sel] - c0
        v0 = np.zeros((n, c1 - c0))
        v0[r, cc] = 1.0
        mu[0, sel] = 1.0
        if n_moments == 1:
            continue
        v1 = Ht @ v0
        mu[1, sel] = v1[r, cc]
        for k in range(2, int(n_moments)):
            v2 = Ht @ v1
            v2 *= 2.0
            v2 -= v0
            mu[k, sel] = v2[r, cc]
            v0, v1 = v1, v2
    return mu


def _reduced(energy, bounds):
    lo, hi = bounds
    return (np.asarray(energy, float) - (hi + lo) / 2.0) / ((hi - lo) / 2.0)


def ldos_from_moments(moments: np.ndarray, energies, bounds) -> np.ndarray:
    """KPM LDOS (states/eV per site and spin), shape (len(energies), n_sites), Jackson kernel."""
    M = moments.shape[0]
    x = _reduced(energies, bounds)
    if np.any(np.abs(x) >= 1):
        raise ValueError("energies outside the spectral bounds")
    g = jackson_kernel(M)
    T = np.cos(np.outer(np.arccos(x), np.arange(M)))  # T_n(x)
    coef = T * g
    coef[:, 1:] *= 2.0
    half_width = (bounds[1] - bounds[0]) / 2.0
    return (coef @ moments) / (math.pi * np.sqrt(1 - x ** 2))[:, None] / half_width


def occupation_from_moments(moments: np.ndarray, mu: float, bounds) -> np.ndarray:
    """∫_{−∞}^{μ} LDOS_i(E) dE per site (electrons per spin), in closed form:
    μ_0 (1 − φ/π) − 2 Σ_n g_n μ_n sin(nφ)/(nπ), φ = arccos x_μ."""
    M = moments.shape[0]
    x = float(_reduced(mu, bounds))
    phi = math.acos(min(1.0, max(-1.0, x)))
    n = np.arange(1, M)
    coef = np.concatenate([[1.0 - phi / math.pi], -2.0 * np.sin(n * phi) / (n * math.pi)])
    return (coef * jackson_kernel(M)) @ moments


def neutrality_level(moments: np.ndarray, bounds, n_occupied: float,
                     n_grid: int = 4001) -> tuple[float, tuple[float, float]]:
    """Charge-neutrality level from the KPM moments: the centre of the gap in which
    the integrated DOS (Σ over sites, per spin) equals ``n_occupied`` to within
    max(0.5, 1e-4 N) states. Returns (μ, (gap_lo, gap_hi)), the gap as the
    KPM-broadened DOS shows it. A structure with no gap at charge neutrality
    (not hBN-like) raises :class:`StructureError`."""
    lo, hi = bounds
    total = moments.sum(axis=1, keepdims=True)
    E = np.linspace(lo, hi, n_grid)[1:-1]
    N = np.array([occupation_from_moments(total, e, bounds)[0] for e in E])
    tol = max(0.5, 1e-4 * moments.shape[1])
    inside = np.abs(N - n_occupied) < tol
    if not inside.any():
        raise StructureError("no gap at charge neutrality: the p_z model needs an "
                             "insulating (hBN) structure")
    # the longest run of in-gap energies
    edges = np.flatnonzero(np.diff(np.concatenate([[0], inside.astype(int), [0]])))
    starts, stops = edges[::2], edges[1::2] - 1
    k = int(np.argmax(stops - starts))
    e0, e1 = float(E[starts[k]]), float(E[stops[k]])
    return 0.5 * (e0 + e1), (e0, e1)


def exact_occupations(H, n_occupied: int) -> tuple[np.ndarray, float, tuple[float, float]]:
    """Per-site occupation (per spin) of the lowest ``n_occupied`` states by dense
    diagonalisation; also the mid-gap level and (HOMO, LUMO)."""
    w, v = np.linalg.eigh(H.toarray())
    occ = (v[:, :n_occupied] ** 2).sum(axis=1)
    homo, lumo = float(w[n_occupied - 1]), float(w[n_occupied])
    return occ, 0.5 * (homo + lumo), (homo, lumo)


# ------------------------------------------------------------------ pybinding
def pybinding_model(system: TBSystem, layers_only: bool = False):
    """The same Γ-point matrix as a pybinding model (``pybinding-dev``): one lattice
    whose unit cell is the whole (repeated) cell, every site its own sublattice, the
    folded hoppings inside it, no translational symmetry, double precision. Used to
    check our KPM against the field library and as the benchmark's baseline."""
    import pybinding as pb

    H = (system.H_layers if layers_only else system.H).tocsr()
    cell = system.atoms.cell.array
    lat = pb.Lattice(a1=cell[0, :2] / 10.0, a2=cell[1, :2] / 10.0)  # pybinding: nm
    pos = system.atoms.positions / 10.0
    diag = H.diagonal()
    lat.add_sublattices(*[(f"s{k}", pos[k], float(diag[k])) for k in range(H.shape[0])])
    up = sp.triu(H, k=1).tocoo()
    lat.add_hoppings(*[((0, 0), f"s{i}", f"s{j}", float(t))
                       for i, j, t in zip(up.row, up.col, up.data) if t != 0.0])
    return pb.Model(lat, pb.force_double_precision())
