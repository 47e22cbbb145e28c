"""The linear ACE basis (ace-jax backend): basis construction and per-structure rows.

Everything linear in the coefficients lives here:

* :func:`build_basis` builds an ace-jax basis (coupling coefficients cached on disk
  in the project's data dir, or ``$ACEJAX_COUPLING_CACHE``).
* :class:`ACEBasis` evaluates, for one structure, the design rows of the energy,
  forces and stress (``structure_rows``), and a multi-output linear model's energies,
  forces and stresses (``evaluate``: the posterior mean and all committee members
  from *one* basis evaluation, contracted with ``r`` coefficient vectors).

Column layout of the full basis (length ``L = NZ * D``, ``D = n_B + n_pair``):
column ``z * D + d`` is compact basis function ``d`` (many-body B functions first,
then pair functions) of a site whose centre species index is ``z``. This differs
from ace-jax's own layout (all B blocks, then all pair blocks); :meth:`to_acejax`
and :meth:`from_acejax` convert.

JAX is configured for float64 on import of this module.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

import jax

jax.config.update("jax_enable_x64", True)


def _enable_compilation_cache() -> None:
    """Persist XLA executables across processes (compiling the basis kernels costs
    tens of seconds; every refit of the loop reuses them). ``$MOIRE_AL_JAX_CACHE``
    overrides the location; ``none`` disables."""
    from moire_al.config import environment

    env = environment()
    loc = env.jax_cache
    if loc and loc.lower() == "none":
        return
    if not loc:
        loc = str(env.data / "jax-cache")
    try:
        Path(loc).mkdir(parents=True, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", loc)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    except Exception:  # pragma: no cover - a read-only data dir: just compile
        pass


_enable_compilation_cache()

import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from moire_al.errors import ModelError  # noqa: E402

log = logging.getLogger(__name__)
_NATIVE_LOCK = threading.Lock()
_SCRATCH = threading.local()
#: largest reused per-thread array (elements); larger ones are allocated per call
SCRATCH_MAX = 1 << 23


def _scratch(key: str, shape) -> np.ndarray:
    """This thread's reused array ``key`` of ``shape`` (contents undefined; valid until the
    thread asks for ``key`` again). The edge factors of a 100-atom cell at L ~ 5k are ~40 MB:
    fresh each structure, their pages were faulted in and zeroed by the OS every time
    (≈ 0.1 ms/atom, measured)."""
    n = int(np.prod(shape))
    if n > SCRATCH_MAX:
        return np.empty(shape)
    bufs = _SCRATCH.__dict__.setdefault("bufs", {})
    buf = bufs.get(key)
    if buf is None or buf.size < n:
        buf = bufs[key] = np.empty(min(SCRATCH_MAX, max(n, 2 * (0 if buf is None else buf.size))))
    return buf[:n].reshape(shape)

#: Largest number of centre atoms evaluated in one compiled call. Structures with
#: more atoms are processed in chunks of this size (bounded memory, one compile).
MAX_CHUNK = 64
#: Centre-atom chunk sizes (a structure uses the smallest that holds it, or MAX_CHUNK).
CHUNK_LADDER = (16, 32, 64)
#: Edges per call of the compiled rows' edge factors: padded to the next power of two
#: from EDGE_MIN, at most EDGE_MAX (larger structures: several calls).
EDGE_MIN, EDGE_MAX = 512, 16384
#: Neighbour slots are padded to the next of these (few distinct compiled shapes).
K_LADDER = (16, 32, 48, 64, 96, 128, 160, 192, 256, 320, 384, 512)


def coupling_cache_dir() -> Path:
    """Where ace-jax caches coupling coefficients for us.

    ``$ACEJAX_COUPLING_CACHE`` if set (tests point it to a temp dir), else
    ``<moire-al data dir>/ace-coupling``.
    """
    env = os.environ.get("ACEJAX_COUPLING_CACHE")
    if env:
        return Path(env).expanduser()
    from moire_al.config import data_dir

    return data_dir() / "ace-coupling"


def build_basis(elements, order: int, totaldegree: int, rcut: float, wL: float = 1.5):
    """An ace-jax ``Basis`` (frozen radials, zero readout) for sorted atomic numbers."""
    from ace_jax.basis.model import build_model

    cache = coupling_cache_dir()
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError:
        pass
    return build_model(list(elements), int(order), int(totaldegree), rcut=float(rcut), wL=float(wL),
                       seed=0, coupling_cache=True, coupling_cache_dir=str(cache))


def _radial_one(model, r, zi, zj, trans, Wnlq, ABC, env):
    """ace-jax's analytic radial (``ACEModel._radial_one``) with the coefficient contraction
    done per species pair as a matmul, instead of gathering an (E, n, q) tensor of
    coefficients per edge."""
    from ace_jax.eval.radial import agnesi_normalized, poly_recursion

    x = agnesi_normalized(r, trans[zi, zj])
    P = poly_recursion(x, *ABC)                                     # (E, n_q)
    NZ = Wnlq.shape[0]
    if NZ == 1:
        val = P @ Wnlq[0, 0].T
    else:
        val = 0.0
        for a in range(NZ):
            for b in range(NZ):
                val = val + jnp.where(((zi == a) & (zj == b))[:, None], P @ Wnlq[a, b].T, 0.0)
    return val * env[:, None]


def _radial(model, r, zi, zj):
    """(Rnl, Rpair) per edge as ``model.radial`` gives them, from distances r."""
    if (model.rtab_grid or model.radial_kind != "analytic" or model.rnl_basis != "poly"
            or model.pair_radial_kind != "analytic"):
        return model.radial(r[:, None] * jnp.array([1.0, 0.0, 0.0]), zi, zj)
    from ace_jax.eval.radial import agnesi_normalized, env_ace1_poly1sr, env_poly1sr, env_poly2sx

    env = env_poly2sx(agnesi_normalized(r, model.rnl_transform[zi, zj]), model.rnl_envelope[zi, zj])
    Rnl = _radial_one(model, r, zi, zj, model.rnl_transform, model.rnl_Wnlq,
                      (model.polys_A, model.polys_B, model.polys_C), env)
    pe = model.pair_envelope[zi, zj]
    envp = env_ace1_poly1sr(r, pe) if model.pair_envelope_kind == "ace1_poly1sr" else env_poly1sr(r, pe)
    Rpair = _radial_one(model, r, zi, zj, model.pair_transform, model.pair_Wnlq,
                        (model.pair_polys_A, model.pair_polys_B, model.pair_polys_C), envp)
    return Rnl, Rpair


def _edge_parts(model, v, z1, z2):
    """Per edge (E, 3): radial values and r-derivatives R, R' (E, n_rnl), Rpair, Rpair'
    (E, n_pair), and the harmonics Y (E, nY) with their gradients ∇Y (E, nY, 3)."""
    r = jnp.linalg.norm(v, axis=-1)
    (R, Rp), (dR, dRp) = jax.jvp(lambda rr: _radial(model, rr, z1, z2), (r,), (jnp.ones_like(r),))
    Y = model.angular(v)
    dY = jax.vmap(jax.jacfwd(lambda u: model.angular(u[None])[0]))(v)        # (E, nY, 3)
    return R, dR, Rp, dRp, Y, dY


@eqx.filter_jit
def _edge_kernel(model, v, z1, z2):
    """:func:`_edge_parts` for the compiled rows, ∇Y as (E, 3, nY)."""
    with jax.default_matmul_precision("highest"):
        R, dR, Rp, dRp, Y, dY = _edge_parts(model, v, z1, z2)
        return R, dR, Rp, dRp, Y, jnp.transpose(dY, (0, 2, 1))


def _jacobian_parts(model, rij, zi, zj, mask):
    """ace-jax's ``_dense_jacobian_parts`` (A, dB/dA, dA, Rpair, dRpair), with the edge
    derivatives taken by parts: A_a = R_n(a)(r) Y_lm(a)(r̂), so dA = R' (rij / r) Y + R ∇Y
    with R' from one forward tangent in r and ∇Y from the harmonics alone, instead of
    three tangents through the radial basis; the same numbers to round-off."""
    n, K = mask.shape
    E = n * K
    v = rij.reshape(E, 3)
    R, dR, Rp, dRp, Y, dY = _edge_parts(model, v, zi.reshape(E), zj.reshape(E))
    r = jnp.linalg.norm(v, axis=-1)
    ar, ay = model.aspec_r, model.aspec_y
    u = v / r[:, None]
    eA = R[:, ar] * Y[:, ay]
    dA = (dR[:, ar] * Y[:, ay])[..., None] * u[:, None, :] + R[:, ar][..., None] * dY[:, ay, :]
    dRp3 = dRp[..., None] * u[:, None, :]
    A = jnp.sum(jnp.where(mask[..., None], eA.reshape(n, K, -1), 0.0), axis=1)
    return A, model._b_jacobian(A), dA, Rp, dRp3


@eqx.filter_jit
def _rows_kernel(model, rij, zi, zj, mask):
    """Compact descriptors X (nc, D) and their edge Jacobian J (nc, K, D, 3)."""
    with jax.default_matmul_precision("highest"):
        n, K = mask.shape
        A, J_BA, dA, Rpair, dRp = _jacobian_parts(model, rij, zi, zj, mask)
        J_B = jnp.einsum("nbm,nkmc->nkbc", J_BA, dA.reshape(n, K, -1, 3))
        J = jnp.concatenate([J_B, dRp.reshape(n, K, -1, 3)], axis=2)
        J = jnp.where(mask[:, :, None, None], J, 0.0)
        B = model._b_from_a(A) if model.a2b_sparse else jax.vmap(model._node_B)(A)
        Xp = jnp.sum(jnp.where(mask[..., None], Rpair.reshape(n, K, -1), 0.0), axis=1)
        return jnp.concatenate([B, Xp], axis=1), J


@eqx.filter_jit
def _eval_kernel(model, rij, zi, zj, mask, node_z, CB, CP):
    """Compact descriptors X (nc, D) and per-edge gradients T (nc, K, r, 3) of r linear models."""
    with jax.default_matmul_precision("highest"):
        # one pass: the factors of ace-jax's committee_edge_grad_dense also give X
        n, K = mask.shape
        A, J_BA, dA, Rpair, dRp = _jacobian_parts(model, rij, zi, zj, mask)
        B = model._b_from_a(A) if model.a2b_sparse else jax.vmap(model._node_B)(A)
        Xp = jnp.sum(jnp.where(mask[..., None], Rpair.reshape(n, K, -1), 0.0), axis=1)
        X = jnp.concatenate([B, Xp], axis=1)
        M = jnp.einsum("nbm,nbr->nmr", J_BA, CB[node_z])
        T = jnp.einsum("nmr,nkmc->nkrc", M, dA.reshape(n, K, -1, 3))
        T = T + jnp.einsum("nkpc,npr->nkrc", dRp.reshape(n, K, -1, 3), CP[node_z])
        return X, jnp.where(mask[:, :, None, None], T, 0.0)


@dataclass
class _Graph:
    """A neighbour list in the dense (n, K) layout, plus the edge incidence."""

    n: int
    rij: np.ndarray      # (n, K, 3); padded slots parked at the cutoff
    idx: np.ndarray      # (n, K) neighbour index
    mask: np.ndarray     # (n, K) live slots
    node_z: np.ndarray   # (n,) species index
    volume: float | None
    shift: np.ndarray | None = None     # (E, 3) image shift per live edge (edge order of rij[mask])

    def reverse_edges(self) -> np.ndarray | None:
        """Per live edge (order of ``rij[mask]``) the index of its reverse edge (j -> i, the
        opposite image shift), or None when the list is not symmetric."""
        if self.shift is None:
            return None
        counts = self.mask.sum(axis=1)
        i = np.repeat(np.arange(self.n), counts)
        j = self.idx[self.mask]
        S = self.shift
        o1 = np.lexsort((S[:, 2], S[:, 1], S[:, 0], j, i))
        o2 = np.lexsort((-S[:, 2], -S[:, 1], -S[:, 0], i, j))
        if not (np.array_equal(i[o1], j[o2]) and np.array_equal(j[o1], i[o2])
                and np.array_equal(S[o1], -S[o2])):
            return None
        rev = np.empty(len(i), np.int64)
        rev[o2] = o1
        return rev


class ACEBasis:
    """A frozen ace-jax ACE basis with design-row and committee evaluation."""

    #: evaluate r models as the force rows times C (the path before the committee kernel;
    #: benchmarks/model.py compares the two)
    score_by_rows = False

    def __init__(self, elements, order=3, totaldegree=10, rcut=5.5, wL=1.5):
        self.elements = tuple(sorted(int(z) for z in elements))
        self.order, self.totaldegree, self.rcut, self.wL = int(order), int(totaldegree), float(rcut), float(wL)
        try:
            b = build_basis(self.elements, self.order, self.totaldegree, self.rcut, self.wL)
        except Exception as exc:  # the coupling library is missing or fails
            raise ModelError(f"cannot build the ACE basis {self.spec()}: {exc}") from exc
        self._basis = b
        self.model = b.model
        self.meta = b.meta
        self.n_B = int(b.meta["n_B"])
        self.n_pair = int(b.meta["n_pair"])
        self.NZ = len(self.elements)
        self.D = self.n_B + self.n_pair
        self.L = self.NZ * self.D
        self._z2i = {z: i for i, z in enumerate(self.elements)}
        # ace-jax layout index of each of our columns
        perm = np.empty(self.L, dtype=np.int64)
        for z in range(self.NZ):
            perm[z * self.D: z * self.D + self.n_B] = z * self.n_B + np.arange(self.n_B)
            perm[z * self.D + self.n_B: (z + 1) * self.D] = \
                self.NZ * self.n_B + z * self.n_pair + np.arange(self.n_pair)
        self._perm = perm
        self.gamma = np.asarray(b.gamma, float)[perm]   # algebraic smoothness prior, our layout

    # ------------------------------------------------------------------ metadata
    def spec(self) -> dict:
        return {"backend": "ace-jax", "elements": list(self.elements), "order": self.order,
                "totaldegree": self.totaldegree, "rcut": self.rcut, "wL": self.wL}

    def to_acejax(self, c: np.ndarray) -> np.ndarray:
        """Coefficients in our layout -> ace-jax's (B blocks then pair blocks)."""
        out = np.empty_like(c)
        out[self._perm] = c
        return out

    def species_index(self, numbers, name="") -> np.ndarray:
        try:
            return np.array([self._z2i[int(z)] for z in numbers], dtype=np.int32)
        except KeyError as exc:
            from ase.data import chemical_symbols

            have = ",".join(chemical_symbols[z] for z in self.elements)
            raise ModelError(f"structure {name or '?'}: element {chemical_symbols[int(exc.args[0])]} "
                             f"is not in the model (elements: {have})") from None

    # ------------------------------------------------------------------ graphs
    def graph(self, atoms, name="") -> _Graph:
        from ace_jax.eval.nlist import _dense_from_sparse

        from .native import neighbour_list as _neighbour_list

        node_z = self.species_index(atoms.numbers, name)
        pos = np.ascontiguousarray(atoms.positions, float)
        pbc = np.asarray(atoms.pbc, bool)
        cell = np.asarray(atoms.cell.array, float)
        if not pbc.any():
            cell = np.eye(3) * (np.ptp(pos, axis=0).max() + 2 * self.rcut + 1.0)
        i, j, Dv, Sv = _neighbour_list(pos, cell, pbc, self.rcut)[:4]
        n = len(atoms)
        counts = np.bincount(i, minlength=n)
        kmax = int(counts.max(initial=1))
        K = next((k for k in K_LADDER if k >= kmax), -(-kmax // 128) * 128)
        idx, dist, count = _dense_from_sparse(np.asarray(i), np.asarray(j), np.asarray(Dv), n, K)
        live = np.arange(K)[None, :] < count[:, None]
        dist = np.where(live[..., None], dist, np.array([self.rcut, 0.0, 0.0]))
        return _Graph(n, dist, idx, live, node_z, self.cell_volume(atoms), np.asarray(Sv, np.int64))

    @staticmethod
    def cell_volume(atoms) -> float | None:
        """The cell volume of a 3D-periodic structure (it has virial rows), else None."""
        if np.asarray(atoms.pbc, bool).all() and atoms.cell.rank == 3:
            return float(abs(np.linalg.det(atoms.cell.array)))
        return None

    def _chunks(self, g: _Graph):
        """Yield (start, stop, padded arrays) over centre-atom chunks."""
        nc = next(c for c in CHUNK_LADDER if c >= min(g.n, MAX_CHUNK))
        K = g.rij.shape[1]
        for s in range(0, g.n, nc):
            e = min(s + nc, g.n)
            pad = nc - (e - s)
            rij = g.rij[s:e]
            zc = g.node_z[s:e]
            zj = g.node_z[g.idx[s:e]]
            m = g.mask[s:e]
            if pad:
                rij = np.concatenate([rij, np.broadcast_to([self.rcut, 0.0, 0.0], (pad, K, 3))])
                zc = np.concatenate([zc, np.zeros(pad, np.int32)])
                zj = np.concatenate([zj, np.zeros((pad, K), np.int32)])
                m = np.concatenate([m, np.zeros((pad, K), bool)])
            zi = np.broadcast_to(zc[:, None], (nc, K))
            yield s, e, (jnp.asarray(rij), jnp.asarray(zi, dtype=jnp.int32), jnp.asarray(zj, dtype=jnp.int32),
                         jnp.asarray(m), jnp.asarray(zc, dtype=jnp.int32))

    @staticmethod
    def _incidence(g: _Graph, s: int, e: int) -> sp.csr_matrix:
        """(n, (e-s)*K) matrix mapping per-edge dE/dr_ij to forces: +1 on the centre, -1 on the neighbour."""
        K = g.idx.shape[1]
        m = g.mask[s:e].reshape(-1)
        cols = np.nonzero(m)[0]
        send = np.repeat(np.arange(s, e), K)[m]
        recv = g.idx[s:e].reshape(-1)[m]
        rows = np.concatenate([send, recv])
        data = np.concatenate([np.ones(len(cols)), -np.ones(len(cols))])
        return sp.csr_matrix((data, (rows, np.concatenate([cols, cols]))), shape=(g.n, (e - s) * K))

    # ------------------------------------------------------------------ compiled rows
    @property
    def threads(self) -> int:
        """Threads of the compiled kernels: ``threads_`` if set, else ``$MOIRE_AL_THREADS``,
        else the cores this process may use. Results do not depend on it beyond round-off
        (the rows of 2 threads equal 1 thread's to ~1e-15; the edge factors bit for bit)."""
        if getattr(self, "threads_", None):
            return int(self.threads_)
        from .native import kernel_threads

        return kernel_threads()

    @property
    def native(self) -> bool:
        """True when the compiled row kernel (``csrc/ace_rows.cpp``) builds here; else the
        JAX rows serve. Thread-safe: the fit's and the scoring's threads may ask first at
        once, and none may see a half-made answer (it would take the JAX rows, equal only to
        round-off)."""
        if not hasattr(self, "_native_ok"):
            with _NATIVE_LOCK:
                if not hasattr(self, "_native_ok"):
                    ok = False
                    try:
                        from . import native

                        self._lib = native.load("ace_rows")
                        self._lib.ace_rows.restype = ctypes.c_int
                        self._plan = self._native_plan()
                        ok = True
                    except ModelError as exc:
                        log.warning("compiled ACE rows unavailable, using the JAX rows: %s", exc)
                    self._native_ok = ok
        return self._native_ok

    def _native_plan(self) -> dict:
        """The coupling as flat int32/float64 arrays for the kernel: the product basis'
        factors per AA column, the triplets (B row, AA column, value), and dB/dA as
        (B row, A index) pairs, each a list of (leave-one-out product, triplet value)."""
        m = self.model
        specs = [np.asarray(g, np.int64) for g in m.aa_specs]
        ks = np.concatenate([np.full(len(g), g.shape[1], np.int64) for g in specs])
        aa_off = np.concatenate([[0], np.cumsum(ks)])
        aa_fac = np.concatenate([g.ravel() for g in specs])
        if m.a2b_sparse or m.A2B is None:             # the triplets are the coupling
            rows = np.asarray(m.a2b_rows, np.int64)
            cols = np.asarray(m.a2b_cols, np.int64)
            vals = np.asarray(m.a2b_vals, float)
        else:                                          # a small basis: the dense A2B is
            A2B = np.asarray(m.A2B, float)
            rows, cols = np.nonzero(A2B)
            vals = A2B[rows, cols]
        n_A = int(np.asarray(m.aspec_r).shape[0])
        if rows.size and rows.max() >= self.n_B:
            raise ModelError("the coupling's rows exceed the basis' B functions")
        kt = ks[cols]
        t_rep = np.repeat(np.arange(len(rows)), kt)
        p = np.arange(len(t_rep)) - np.repeat(np.cumsum(kt) - kt, kt)
        src = aa_off[cols[t_rep]] + p
        key = rows[t_rep] * n_A + aa_fac[src]
        o = np.argsort(key, kind="stable")
        uniq, start = np.unique(key[o], return_index=True)
        i32 = lambda a: np.ascontiguousarray(a, np.int32)      # noqa: E731
        return {"n_A": n_A, "ar": i32(m.aspec_r), "ay": i32(m.aspec_y), "aa_off": i32(aa_off),
                "aa_fac": i32(aa_fac), "t_row": i32(rows), "t_col": i32(cols), "t_val": np.ascontiguousarray(vals),
                "u_b": i32(uniq // n_A), "u_a": i32(uniq % n_A), "u_off": i32(np.append(start, len(o))),
                "e_src": i32(src[o]), "e_val": np.ascontiguousarray(vals[t_rep[o]])}

    def _analytic(self) -> bool:
        m = self.model
        return (not m.rtab_grid and m.radial_kind == "analytic" and m.rnl_basis == "poly"
                and m.pair_radial_kind == "analytic")

    def _edge_factors(self, v, z1, z2, rev=None, threads: int | None = None, scratch: bool = False):
        """Per-edge (R, R', Rpair, Rpair', Y, ∇Y (E, 3, nY)): compiled for ace-jax's analytic
        radials (``rev``, the reverse edge of each: a pair of the same species pair is
        computed once; ``scratch``: into this thread's reused arrays), else
        :func:`_edge_kernel` padded and split into few compiled shapes."""
        E = len(v)
        if self._analytic():
            return self._native_edge_factors(v, z1, z2, rev, threads, scratch)
        outs = []
        for a in range(0, max(E, 1), EDGE_MAX):
            b = min(a + EDGE_MAX, E)
            m = b - a
            size = EDGE_MIN
            while size < m:
                size *= 2
            vv = np.broadcast_to(np.array([self.rcut, 0.0, 0.0]), (size, 3)).copy()
            vv[:m] = v[a:b]
            za = np.zeros(size, np.int32)
            zb = np.zeros(size, np.int32)
            za[:m], zb[:m] = z1[a:b], z2[a:b]
            res = _edge_kernel(self.model, jnp.asarray(vv), jnp.asarray(za), jnp.asarray(zb))
            outs.append([np.asarray(x)[:m] for x in res])
        return [np.ascontiguousarray(np.concatenate(x)) for x in zip(*outs)]

    def _native_edge_factors(self, v, z1, z2, rev=None, threads: int | None = None, scratch: bool = False):
        """``scratch``: into this thread's reused arrays (valid until its next call with it)."""
        from .native import dptr as dp, iptr as ip

        m = self.model
        if not hasattr(self, "_radial_params"):
            f = lambda a: np.ascontiguousarray(np.asarray(a, float))       # noqa: E731
            kind = {"ace1_poly1sr": 1, "poly1sr": 2}[m.pair_envelope_kind]
            Wt = lambda W: f(np.swapaxes(np.asarray(W, float), -1, -2))    # noqa: E731  (.., n_q, n_f)
            self._radial_params = [f(m.rnl_transform), f(m.rnl_envelope), Wt(m.rnl_Wnlq), f(m.polys_A),
                                   f(m.polys_B), f(m.polys_C), f(m.pair_transform), f(m.pair_envelope),
                                   kind, Wt(m.pair_Wnlq), f(m.pair_polys_A), f(m.pair_polys_B), f(m.pair_polys_C)]
        rt, re, rW, rA, rB, rC, pt, pe, kind, pW, pA, pB, pC = self._radial_params
        E = len(v)
        n_rnl, n_pair, nY = rW.shape[-1], pW.shape[-1], (m.lmax + 1) ** 2
        new = _scratch if scratch else (lambda key, shape: np.empty(shape))
        R, dR = new("R", (E, n_rnl)), new("dR", (E, n_rnl))
        Rp, dRp = new("Rp", (E, n_pair)), new("dRp", (E, n_pair))
        Y, dY = new("Y", (E, nY)), new("dY", (E, 3, nY))
        pz = np.ascontiguousarray(np.asarray(z1, np.int64) * self.NZ + np.asarray(z2, np.int64), np.int32)
        src = None
        if rev is not None:
            e = np.arange(E)
            src = np.where((rev < e) & (pz[np.minimum(rev, E - 1)] == pz), rev, -1).astype(np.int32)
        c = ctypes.c_int
        self._lib.ace_edge_factors(
            c(E), dp(np.ascontiguousarray(v, float)), ip(pz), dp(rt), dp(re), c(re.shape[-1]), dp(rW), c(n_rnl),
            dp(rA), dp(rB), dp(rC), c(len(rA)), dp(pt), dp(pe), c(pe.shape[-1]), c(kind), dp(pW), c(n_pair),
            dp(pA), dp(pB), dp(pC), c(len(pA)), c(m.lmax), c(int(m.ysolid)),
            dp(R), dp(dR), dp(Rp), dp(dRp), dp(Y), dp(dY), None if src is None else ip(src),
            c(threads or self.threads))
        return R, dR, Rp, dRp, Y, dY

    def _native_inputs(self, g: _Graph, threads: int | None = None) -> tuple[list, tuple]:
        """(ctypes arguments, arrays they point into: keep them alive) of ``ace_rows`` in either
        mode: the structure's edges, their factors and the coupling plan."""
        if not self.native:
            raise ModelError("the compiled ACE rows are unavailable on this machine (see the log)")
        from .native import dptr as dp, iptr as ip

        P = self._plan
        v = np.ascontiguousarray(g.rij[g.mask])
        counts = g.mask.sum(axis=1)
        centre = np.repeat(np.arange(g.n), counts)
        nbr = np.ascontiguousarray(g.idx[g.mask], np.int32)
        R, dR, Rp, dRp, Y, dY = self._edge_factors(v, g.node_z[centre], g.node_z[nbr], g.reverse_edges(),
                                                   threads, scratch=True)
        off = np.ascontiguousarray(np.concatenate([[0], np.cumsum(counts)]), np.int32)
        zc = np.ascontiguousarray(g.node_z, np.int32)
        nY = Y.shape[1] if Y.ndim == 2 else 0
        c = ctypes.c_int
        args = [c(g.n), ip(off), ip(nbr), dp(v), ip(zc), c(self.D), c(self.L), c(R.shape[1]), dp(R), dp(dR),
                c(Rp.shape[1]), dp(Rp), dp(dRp), c(nY), dp(Y), dp(dY),
                c(P["n_A"]), ip(P["ar"]), ip(P["ay"]), c(len(P["aa_off"]) - 1), ip(P["aa_off"]), ip(P["aa_fac"]),
                c(len(P["t_row"])), ip(P["t_row"]), ip(P["t_col"]), dp(P["t_val"]), c(len(P["u_b"])),
                ip(P["u_b"]), ip(P["u_a"]), ip(P["u_off"]), ip(P["e_src"]), dp(P["e_val"])]
        return args, (v, nbr, off, zc, R, dR, Rp, dRp, Y, dY)

    def _native_rows(self, g: _Graph, stress: bool = True, threads: int | None = None, out=None):
        """(PsiE (L,), PsiF (3n, L), S (3, 3, L) or None) from the compiled kernel; S is the
        unsymmetrised Σ ∂X/∂v_a v_b, as in :meth:`structure_rows`. ``out`` (3n, ≥ L), unit
        column stride: PsiF is written into ``out[:, :L]`` and is that view."""
        from .native import dptr as dp

        args, _keep = self._native_inputs(g, threads)
        PsiE = np.zeros(self.L)
        if out is None:
            PsiF = np.zeros((3 * g.n, self.L))
        else:
            if (out.dtype != np.float64 or out.ndim != 2 or out.shape[0] != 3 * g.n or out.shape[1] < self.L
                    or out.strides[1] != 8 or out.strides[0] % 8):
                raise ValueError(f"out must be a float64 (3n, >= L) array with unit column stride, not {out.shape}")
            PsiF = out[:, : self.L]
            PsiF[...] = 0.0
        S = np.zeros((3, 3, self.L)) if stress and g.volume is not None else None
        status = self._lib.ace_rows(*args, None, ctypes.c_int(0), dp(PsiE), dp(PsiF), dp(S),
                                    ctypes.c_int(threads or self.threads), ctypes.c_int(PsiF.strides[0] // 8))
        if status == 2:                               # checked above: a caller's bug, not the input's
            raise RuntimeError("ace_rows: the force rows' stride is below L")
        if status:
            raise ModelError("two atoms coincide (an edge of zero length)")
        return PsiE, PsiF, S

    def _native_committee(self, g: _Graph, C: np.ndarray, stress: bool = True, threads: int | None = None):
        """(PsiE (L,), F (3n, r), S (3, 3, r) or None) of r linear models C (L, r) from the
        compiled kernel without the force rows: per site dB/dA is contracted with C first
        (n_A x r), then with the edge derivatives of A (the committee's scoring)."""
        from .native import dptr as dp

        args, _keep = self._native_inputs(g, threads)
        C = np.ascontiguousarray(C, float)
        r = C.shape[1]
        PsiE = np.zeros(self.L)
        F = np.zeros((3 * g.n, r))
        S = np.zeros((3, 3, r)) if stress and g.volume is not None else None
        status = self._lib.ace_rows(*args, dp(C), ctypes.c_int(r), dp(PsiE), dp(F), dp(S),
                                    ctypes.c_int(threads or self.threads), ctypes.c_int(0))
        if status:
            raise ModelError("two atoms coincide (an edge of zero length)")
        return PsiE, F, S

    # ------------------------------------------------------------------ design rows
    def structure_rows(self, atoms, name="", graph: _Graph | None = None, native: bool | None = None,
                       threads: int | None = None, out=None):
        """Design rows of one structure in our column layout.

        Returns (PsiE (L,), PsiF (3n, L) ordered atom-major (x,y,z per atom),
        PsiS (6, L) Voigt stress rows (ASE sign, eV/Å³ per unit coefficient) or None
        when the structure is not 3D periodic). ``native`` (default: when available)
        takes them from the compiled kernel (on ``threads``, default :attr:`threads`), else
        from the JAX edge Jacobian. ``out`` (3n, ≥ L), unit column stride: the force rows
        are written into ``out[:, :L]`` (e.g. the fit's block of rows) and PsiF is that view.
        """
        g = graph or self.graph(atoms, name)
        if self.native if native is None else native:
            PsiE, PsiF, S = self._native_rows(g, threads=threads, out=out)
            return PsiE, PsiF, self._voigt_rows(S, g)
        L, D = self.L, self.D
        PsiE = np.zeros(L)
        PsiF = np.zeros((g.n, 3, L))
        S = np.zeros((3, 3, L))
        for s, e, (rij, zi, zj, m, zc) in self._chunks(g):
            X, J = _rows_kernel(self.model, rij, zi, zj, m)
            X, J = np.asarray(X)[: e - s], np.asarray(J)[: e - s]       # (c, D), (c, K, D, 3)
            K = J.shape[1]
            zc = g.node_z[s:e]
            inc = self._incidence(g, s, e)
            rloc = g.rij[s:e]
            for z in range(self.NZ):
                sel = zc == z
                if not sel.any():
                    continue
                cols = slice(z * D, (z + 1) * D)
                PsiE[cols] += X[sel].sum(0)
                Jz = np.where(sel[:, None, None, None], J, 0.0)
                Jflat = Jz.reshape((e - s) * K, D, 3)
                for a in range(3):
                    PsiF[:, a, cols] += inc @ Jflat[:, :, a]
                if g.volume is not None:
                    S[:, :, cols] += np.einsum("ckda,ckb->abd", Jz, np.where(g.mask[s:e, :, None], rloc, 0.0))
        PsiF = PsiF.reshape(3 * g.n, L)
        if out is not None:
            out[:, :L] = PsiF
            PsiF = out[:, :L]
        return PsiE, PsiF, self._voigt_rows(S if g.volume is not None else None, g)

    @staticmethod
    def _voigt_rows(S, g: _Graph):
        """Voigt stress rows (6, L) from the unsymmetrised (3, 3, L) Σ ∂X/∂v ⊗ v, or None."""
        if S is None or g.volume is None:
            return None
        S = 0.5 * (S + S.transpose(1, 0, 2)) / g.volume
        return np.stack([S[0, 0], S[1, 1], S[2, 2], S[1, 2], S[0, 2], S[0, 1]])

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, atoms, C: np.ndarray, name="", graph: _Graph | None = None, stress=True,
                 native: bool | None = None, threads: int | None = None):
        """Energies (r,), forces (r, n, 3), stresses (r, 6) or None of r linear models.

        C: (L, r) coefficients in our layout (column 0 is usually the posterior mean,
        the others committee members). One basis evaluation serves all r models: with the
        compiled kernel (``native``, default when available) per site dB/dA times C, then
        the edge derivatives of A (``ace_rows`` given C: the force rows are never formed; the
        committee's scoring), or with ``score_by_rows`` the rows of :meth:`structure_rows`
        times C; else the JAX per-edge gradients of the r models.
        """
        g = graph or self.graph(atoms, name)
        C = np.asarray(C, float)
        if C.ndim == 1:
            C = C[:, None]
        r = C.shape[1]
        if (self.native if native is None else native) and self.score_by_rows:
            PsiE, PsiF, S = self._native_rows(g, stress, threads)
            F = (PsiF @ C).reshape(g.n, 3, r).transpose(2, 0, 1)
            PsiS = self._voigt_rows(S, g) if stress else None
            return PsiE @ C, F, None if PsiS is None else (PsiS @ C).T
        if self.native if native is None else native:
            PsiE, Fc, S = self._native_committee(g, C, stress, threads)
            F = Fc.reshape(g.n, 3, r).transpose(2, 0, 1)
            PsiS = self._voigt_rows(S, g) if stress else None
            return PsiE @ C, F, None if PsiS is None else PsiS.T
        Cz = C.reshape(self.NZ, self.D, r)
        CB = jnp.asarray(Cz[:, : self.n_B])
        CP = jnp.asarray(Cz[:, self.n_B:])
        E = np.zeros(r)
        F = np.zeros((g.n, r, 3))
        S = np.zeros((r, 3, 3))
        for s, e, (rij, zi, zj, m, zc) in self._chunks(g):
            X, T = _eval_kernel(self.model, rij, zi, zj, m, zc, CB, CP)
            X, T = np.asarray(X)[: e - s], np.asarray(T)[: e - s]     # (c, D), (c, K, r, 3)
            zloc = g.node_z[s:e]
            E += np.einsum("cd,cdr->r", X, Cz[zloc])
            inc = self._incidence(g, s, e)
            K = T.shape[1]
            F += (inc @ T.reshape((e - s) * K, r * 3)).reshape(g.n, r, 3)
            if stress and g.volume is not None:
                S += np.einsum("ckra,ckb->rab", T, np.where(g.mask[s:e, :, None], g.rij[s:e], 0.0))
        # rij = r_j - r_i: dE/dr_j = T, dE/dr_i = -T, so F = -dE/dr = inc @ T (inc: +1 centre, -1 neighbour)
        F = np.transpose(F, (1, 0, 2))
        Sv = None
        if stress and g.volume is not None:
            S = 0.5 * (S + np.transpose(S, (0, 2, 1))) / g.volume
            Sv = np.stack([S[:, 0, 0], S[:, 1, 1], S[:, 2, 2], S[:, 1, 2], S[:, 0, 2], S[:, 0, 1]], axis=1)
        return E, F, Sv
