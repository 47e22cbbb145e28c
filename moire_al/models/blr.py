"""Bayesian linear regression with evidence maximisation and a posterior committee.

Model (independent of ACE; any design matrix):

    y = Ψ c + noise,   noise_r ~ N(0, 1 / (β w_r²)),   c ~ N(0, (α Γ)⁻¹)

with per-row weights ``w`` (so ``W = diag(w²)``), a diagonal prior precision shape
``Γ = diag(prior_diag)`` and two scalars chosen by maximising the log evidence:
α (prior precision) and β (noise precision). Everything is computed from the normal
equations ``A = Ψᵀ W Ψ``, ``b = Ψᵀ W y``, ``yᵀ W y`` and the row count, so a caller
can assemble them in chunks and never hold Ψ (:meth:`fit_normal`).

With ``G = Γ^-½ A Γ^-½ = V diag(s) Vᵀ`` (one eigendecomposition), every quantity is
cheap for any (α, β):

    posterior precision   Σ⁻¹ = Γ^½ V diag(β s + α) Vᵀ Γ^½
    posterior mean        c̄ = Γ^-½ V m,  m = β u / (β s + α),  u = Vᵀ Γ^-½ b
    log evidence          ½ [P log α + N log β − β E_D − α ‖m‖² − Σ log(β s + α) − N log 2π]
                          + ½ Σ log w_r²   (E_D the weighted residual sum of squares)

α and β are found by MacKay's fixed-point iteration (γ = Σ βs/(βs+α) effective
parameters; α ← γ/‖m‖², β ← (N−γ)/E_D), which converges to a stationary point of
the evidence. Committee members are draws ``c_k = c̄ + L ξ_k`` with
``L = Γ^-½ V diag((β s + α)^-½)`` (so ``L Lᵀ = Σ``) and ``ξ_k ~ N(0, I)``.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np

from moire_al.errors import ModelError


def syrk_upper(Pw: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """The upper triangle of PwᵀPw (lower left 0, Fortran order) by BLAS dsyrk on Pwᵀ (no
    copy of a C-ordered Pw). Called through scipy's ``cython_blas`` function pointer with
    ctypes, which releases the GIL (scipy's ``dsyrk`` wrapper holds it for the whole call,
    measured), so other threads run beside it; the same BLAS routine and arguments as
    ``scipy.linalg.blas.dsyrk(1.0, Pw.T, trans=0, lower=0)``, hence the same numbers.
    ``out``: a Fortran-ordered (n, n) array whose lower triangle is zero, overwritten
    (a fit reuses one: fresh 245 MB products per block cost their page faults)."""
    Pw = np.ascontiguousarray(Pw, float)
    k, n = Pw.shape
    fn = _dsyrk_pointer()
    if fn is None or n == 0 or k == 0:
        from scipy.linalg.blas import dsyrk

        return dsyrk(1.0, Pw.T, trans=0, lower=0)
    import ctypes

    from moire_al.models.native import dptr

    C = np.zeros((n, n), order="F") if out is None else out
    if C.shape != (n, n) or C.dtype != np.float64 or not C.flags.f_contiguous:
        raise ValueError("syrk_upper: out must be a Fortran-ordered float64 (n, n) array")
    ci = lambda v: ctypes.byref(ctypes.c_int(v))              # noqa: E731
    cd = lambda v: ctypes.byref(ctypes.c_double(v))           # noqa: E731
    fn(ctypes.c_char_p(b"U"), ctypes.c_char_p(b"N"), ci(n), ci(k), cd(1.0), dptr(Pw), ci(n), cd(0.0), dptr(C), ci(n))
    return C


_DSYRK: list = []


def _dsyrk_pointer():
    """scipy.linalg.cython_blas' dsyrk as a ctypes function (None if unavailable)."""
    if not _DSYRK:
        fn = None
        try:
            import ctypes

            import scipy.linalg.cython_blas as cb

            cap = cb.__pyx_capi__["dsyrk"]
            get_name = ctypes.pythonapi.PyCapsule_GetName
            get_name.restype, get_name.argtypes = ctypes.c_char_p, [ctypes.py_object]
            get_ptr = ctypes.pythonapi.PyCapsule_GetPointer
            get_ptr.restype, get_ptr.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
            ptr = get_ptr(cap, get_name(cap))
            c_int_p, c_dbl_p = ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_double)
            proto = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_char_p, c_int_p, c_int_p, c_dbl_p, c_dbl_p,
                                     c_int_p, c_dbl_p, c_dbl_p, c_int_p)
            fn = proto(ptr)
        except Exception:  # pragma: no cover - another scipy layout: the wrapper serves
            fn = None
        _DSYRK.append(fn)
    return _DSYRK[0]


def _two_sum(a, b):
    """(s, e) with s = fl(a + b) and a + b = s + e exactly (Knuth), elementwise."""
    s = a + b
    bp = s - a
    return s, (a - (s - bp)) + (b - bp)


_TWO_SUM: list = []


def two_sum_add(hi: np.ndarray, lo: np.ndarray, x: np.ndarray, upper: bool = False) -> None:
    """In place: hi, lo ← TwoSum(hi, x) with the error added to lo (see :func:`_two_sum`).
    The compiled kernel (``csrc/blr.cpp``: one pass without the GIL, the same operations,
    bitwise equal) where the arrays allow it, else numpy. ``upper``: x is square with a zero
    strictly lower triangle (a :func:`syrk_upper` product), so the kernel passes over the
    upper triangle only (the same numbers: TwoSum(h, 0) = (h, 0)) and reads and writes half
    the memory: 0.034-0.054 -> 0.022-0.031 s per block at L = 5.5k (measured, 2 threads)."""
    x = np.asarray(x, float)
    fast = (hi.dtype == lo.dtype == x.dtype == np.float64 and hi.shape == lo.shape == x.shape
            and all(a.flags.c_contiguous or a.flags.f_contiguous for a in (hi, lo, x))
            and len({a.flags.c_contiguous for a in (hi, lo, x)}) == 1 and hi.size >= 4096)
    upper = upper and fast and x.ndim == 2 and x.shape[0] == x.shape[1] and x.flags.f_contiguous
    fn = _two_sum_kernel(upper) if fast else None
    if fn is None:
        s, e = _two_sum(hi, x)
        hi[...] = s
        lo += e
        return
    import ctypes

    from moire_al.models.native import dptr, kernel_threads

    n = x.shape[0] if upper else hi.size
    fn(dptr(hi), dptr(lo), dptr(x), ctypes.c_long(n), ctypes.c_int(kernel_threads()))


def _two_sum_kernel(upper: bool = False):
    """The compiled TwoSum pass (``upper``: over the upper triangle of a square Fortran-ordered
    array), or None without a compiler."""
    if not _TWO_SUM:
        fns = (None, None)
        try:
            import ctypes

            from moire_al.models.native import load

            lib = load("blr")
            fns = (lib.two_sum_add, lib.two_sum_add_upper)
            for fn in fns:
                fn.restype = None
                fn.argtypes = [ctypes.POINTER(ctypes.c_double)] * 3 + [ctypes.c_long, ctypes.c_int]
        except (OSError, ModelError):   # no compiler: numpy serves (same numbers)
            fns = (None, None)
        _TWO_SUM.append(fns)
    return _TWO_SUM[0][int(bool(upper))]


def _mirror_upper(A: np.ndarray, block: int = 256) -> bool:
    """In place, if A's strictly lower triangle is all zero: set it to the mirror of the
    upper one, the numbers of ``A + np.triu(A, 1).T`` (0.0 + x), without that expression's
    three temporaries of A's size (each a first touch of 245 MB at L = 5.5k, up to 1.3 s on
    this VM, where reused memory takes 0.06 s). False (A unchanged) if the lower triangle is
    not zero. Column blocks of ``block``: the mirror reads rows, so tiles keep it in cache."""
    n = A.shape[0]
    for j in range(n - 1):
        if A[j + 1:, j].any():
            return False
    for j0 in range(0, n, block):
        j1 = min(n, j0 + block)
        for i0 in range(j0, n, block):           # the tile rows [i0, i1) x columns [j0, j1)
            i1 = min(n, i0 + block)
            src = A[j0:j1, i0:i1].T              # the upper triangle's mirror of this tile
            if i0 == j0:                         # diagonal tile: its strictly lower part only
                low = np.tril_indices(i1 - i0, -1)
                A[i0:i1, j0:j1][low] = src[low] + 0.0
            else:
                np.add(src, 0.0, out=A[i0:i1, j0:j1])
    return True


@dataclass(eq=False)
class NormalEquations:
    """Partial normal equations of a set of rows: A = ΨᵀWΨ, b = ΨᵀWy, yᵀWy, the row count and
    Σ log w² (for the evidence), plus bookkeeping. Partials of disjoint row sets add up
    (``+``, ``sum``) to those of their union: the unit of a sharded fit.

    The sums are kept as double-double pairs (``A`` + ``A_lo`` ...): each block's product
    is added with an error-free transformation, so the total is the exactly rounded sum
    of the blocks' products whatever the order or grouping — a fit sharded over any
    number of workers gives the single-process normal equations bit for bit, which
    matters because the evidence maximisation amplifies round-off in A by up to ~1e10
    on nearly collinear ACE columns."""

    A: np.ndarray
    b: np.ndarray
    yWy: float
    n_obs: int
    log_w2: float = 0.0
    counts: dict = field(default_factory=dict)
    n_structures: int = 0
    n_atoms: int = 0
    time_rows_s: float = 0.0
    A_lo: np.ndarray | None = None
    b_lo: np.ndarray | None = None
    yWy_lo: float = 0.0
    log_w2_lo: float = 0.0

    def __post_init__(self):
        if self.A_lo is None:
            self.A_lo = np.zeros_like(self.A)
        if self.b_lo is None:
            self.b_lo = np.zeros_like(self.b)

    @classmethod
    def zeros(cls, P: int) -> "NormalEquations":
        # Fortran order, like the blocks of syrk_upper: the compiled summation then runs
        return cls(np.zeros((P, P), order="F"), np.zeros(P), 0.0, 0)

    def add_block(self, AtA, Atb, yWy: float, log_w2: float = 0.0, upper: bool = False) -> None:
        """Add one block's products in place (compensated). ``upper``: AtA's strictly lower
        triangle is zero (:func:`syrk_upper`'s), so only its upper triangle is added."""
        two_sum_add(self.A, self.A_lo, AtA, upper=upper)
        two_sum_add(self.b, self.b_lo, Atb)
        self.yWy, e = _two_sum(self.yWy, float(yWy))
        self.yWy_lo += e
        self.log_w2, e = _two_sum(self.log_w2, float(log_w2))
        self.log_w2_lo += e

    def __add__(self, other: "NormalEquations") -> "NormalEquations":
        if isinstance(other, int) and other == 0:    # sum()'s start value
            return self
        if self.A.shape != other.A.shape:
            raise ModelError(f"normal equations of different sizes: {self.A.shape} and {other.A.shape}")
        keys = set(self.counts) | set(other.counts)
        out = NormalEquations(self.A.copy(order="K"), self.b.copy(), self.yWy, self.n_obs + other.n_obs, self.log_w2,
                              {k: self.counts.get(k, 0) + other.counts.get(k, 0) for k in keys},
                              self.n_structures + other.n_structures, self.n_atoms + other.n_atoms,
                              self.time_rows_s + other.time_rows_s, self.A_lo + other.A_lo,
                              self.b_lo + other.b_lo, self.yWy_lo + other.yWy_lo, self.log_w2_lo + other.log_w2_lo)
        out.add_block(other.A, other.b, other.yWy, other.log_w2)
        return out

    __radd__ = __add__

    def totals(self):
        """(A, b, yᵀWy, Σ log w²) rounded to float64; A symmetric (the blocks of
        ACEModel.normal_equations fill its upper triangle only)."""
        A = self.A + self.A_lo
        _mirror_upper(A)
        return A, self.b + self.b_lo, self.yWy + self.yWy_lo, self.log_w2 + self.log_w2_lo

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        c = self.counts
        np.savez(buf, A=self.A, A_lo=self.A_lo, b=self.b, b_lo=self.b_lo,
                 scalars=np.array([self.yWy, self.yWy_lo, self.log_w2, self.log_w2_lo, self.time_rows_s]),
                 ints=np.array([self.n_obs, self.n_structures, self.n_atoms,
                                c.get("E", 0), c.get("F", 0), c.get("V", 0)], np.int64))
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> "NormalEquations":
        z = np.load(io.BytesIO(data))
        s, i = z["scalars"], z["ints"]
        return cls(z["A"], z["b"], float(s[0]), int(i[0]), float(s[2]),
                   {"E": int(i[3]), "F": int(i[4]), "V": int(i[5])}, int(i[1]), int(i[2]), float(s[4]),
                   z["A_lo"], z["b_lo"], float(s[1]), float(s[3]))


class BayesianLinearRegression:
    """Evidence-maximising Bayesian linear regression (scikit-learn-like).

    Parameters
    ----------
    committee_size : number K of posterior samples kept in ``committee_`` (K, P).
    seed : seed of the committee draws.
    alpha, beta : fix the prior / noise precision instead of maximising the evidence.
    max_iter, tol : fixed-point iteration limits (relative change of log α, log β).
    """

    def __init__(self, committee_size: int = 32, seed: int = 0, alpha: float | None = None,
                 beta: float | None = None, max_iter: int = 500, tol: float = 1e-7):
        self.committee_size = int(committee_size)
        self.seed = seed
        self.alpha = alpha
        self.beta = beta
        self.max_iter = int(max_iter)
        self.tol = float(tol)

    # ------------------------------------------------------------------ fitting
    def fit(self, Psi, y, weights=None, prior_diag=None) -> "BayesianLinearRegression":
        """Fit from the design matrix ``Psi`` (N, P), targets ``y`` (N,), row weights ``weights`` (N,)
        (noise std of row r ∝ 1/weights[r]) and the prior precision diagonal (P,)."""
        Psi = np.asarray(Psi, float)
        y = np.asarray(y, float)
        if Psi.ndim != 2 or y.shape != (Psi.shape[0],):
            raise ModelError(f"BLR: Psi {Psi.shape} and y {y.shape} do not match")
        w = np.ones(len(y)) if weights is None else np.asarray(weights, float)
        if not (np.all(np.isfinite(Psi)) and np.all(np.isfinite(y)) and np.all(np.isfinite(w))):
            raise ModelError("BLR: non-finite values in the design matrix, targets or weights")
        Pw = Psi * w[:, None]
        yw = y * w
        return self.fit_normal(Pw.T @ Pw, Pw.T @ yw, float(yw @ yw), len(y), prior_diag,
                               log_w2=float(np.sum(np.log(w[w > 0] ** 2))))

    def fit_normal(self, A, b, yWy: float, n_obs: int, prior_diag=None,
                   log_w2: float = 0.0) -> "BayesianLinearRegression":
        """Fit from normal equations: A = ΨᵀWΨ (P, P), b = ΨᵀWy (P,), yᵀWy, number of rows."""
        A = np.asarray(A, float)
        b = np.asarray(b, float)
        P = A.shape[0]
        g = np.ones(P) if prior_diag is None else np.asarray(prior_diag, float)
        if g.shape != (P,) or np.any(g <= 0) or not np.all(np.isfinite(g)):
            raise ModelError("BLR: prior_diag must be positive and finite, one entry per column")
        if n_obs < 1:
            raise ModelError("BLR: no observations")
        dinv = 1.0 / np.sqrt(g)
        # the products in place where the expression would make a fresh array (the same
        # operations in the same order): each new P x P array is a first touch of memory,
        # 245 MB at L = 5.5k, which took up to 1.3 s on this VM (docs/benchmarks.md)
        G = np.multiply(A, dinv[:, None])
        G *= dinv[None, :]
        Gs = np.add(G, G.T)
        del G
        Gs *= 0.5
        s, V = np.linalg.eigh(Gs)
        del Gs
        # directions the data do not see (numerically zero curvature) carry no signal
        s = np.where(s > 1e-13 * max(s.max(initial=0.0), 1e-300), s, 0.0)
        u = V.T @ (dinv * b)
        u = np.where(s > 0, u, 0.0)
        N = float(n_obs)
        # E_D(α, β) = r_LS + Σ (u²/s) (α / (βs + α))²: positive and free of cancellation
        # (r_LS, the least-squares residual, is computed once)
        proj = np.divide(u * u, s, out=np.zeros_like(u), where=s > 0)
        r_ls = max(yWy - proj.sum(), 1e-15 * max(yWy, 1e-300))

        def state(alpha, beta):
            m = beta * u / (beta * s + alpha)
            ed = r_ls + np.sum(proj * (alpha / (beta * s + alpha)) ** 2)
            return m, ed

        alpha = self.alpha if self.alpha is not None else 1.0
        beta = self.beta if self.beta is not None else (N / max(yWy, 1e-300) if yWy > 0 else 1.0)
        if self.alpha is None and self.beta is None:
            # scale-aware start: prior scale from the data, noise a few % of the signal
            beta = 100.0 * N / max(yWy, 1e-300)
            alpha = max(np.mean(s), 1e-300) * beta * 1e-6
        a_lo = 1e-12 * max(np.mean(s), 1e-300)    # α/β below this is no regularisation at all
        n_iter = 0
        for n_iter in range(1, self.max_iter + 1):
            m, ed = state(alpha, beta)
            gamma = float(np.sum(beta * s / (beta * s + alpha)))
            new_a = alpha if self.alpha is not None else gamma / max(m @ m, 1e-300)
            new_b = beta if self.beta is not None else max(N - gamma, 1e-12) / ed
            new_b = float(np.clip(new_b, 1e-300, 1e300))
            new_a = float(np.clip(new_a, a_lo * new_b, 1e300))
            change = max(abs(np.log(new_a / alpha)), abs(np.log(new_b / beta)))
            alpha, beta = new_a, new_b
            if change < self.tol:
                break
        m, ed = state(alpha, beta)
        lam = beta * s + alpha
        self.alpha_, self.beta_ = float(alpha), float(beta)
        self.n_iter_ = n_iter
        self.n_obs_ = int(n_obs)
        self.effective_parameters_ = float(np.sum(beta * s / lam))
        self.coef_ = dinv * (V @ m)
        self.log_evidence_ = float(0.5 * (P * np.log(alpha) + N * np.log(beta) - beta * ed - alpha * (m @ m)
                                          - np.sum(np.log(lam)) - N * np.log(2 * np.pi) + log_w2))
        self.noise_std_ = float(1.0 / np.sqrt(beta))      # noise std of a row with weight 1
        self.training_wrss_ = float(ed)
        V /= np.sqrt(lam)[None, :]                          # in place: V is not needed after
        V *= dinv[:, None]
        self._cov_factor = V                                # L, L Lᵀ = Σ
        self.committee_ = self.sample(self.committee_size, seed=self.seed)
        return self

    # ------------------------------------------------------------------ posterior
    @property
    def covariance_(self) -> np.ndarray:
        Lf = self._cov_factor
        return Lf @ Lf.T

    def sample(self, k: int, seed=None) -> np.ndarray:
        """k draws from the posterior, (k, P)."""
        rng = np.random.default_rng(seed)
        xi = rng.standard_normal((self._cov_factor.shape[1], k))
        return (self.coef_[:, None] + self._cov_factor @ xi).T

    def predict(self, Psi, return_std: bool = False):
        """Posterior-mean prediction; with return_std also the committee std per row."""
        Psi = np.asarray(Psi, float)
        mean = Psi @ self.coef_
        if not return_std:
            return mean
        comm = Psi @ self.committee_.T
        return mean, np.sqrt(np.mean((comm - comm.mean(1, keepdims=True)) ** 2, axis=1))

    def predictive_std(self, Psi) -> np.ndarray:
        """Exact posterior std of Ψ c per row (no sampling)."""
        Z = np.asarray(Psi, float) @ self._cov_factor
        return np.sqrt(np.sum(Z * Z, axis=1))
