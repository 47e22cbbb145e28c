"""ACEModel: linear ACE + D3(BJ) with Bayesian linear regression and a posterior committee.

    E(R) = [E_D3(BJ, PBE)(R)] + Σ_z n_z E0_z + Σ_i c_{z_i} · B(env_i)

* Labels come from ``REF_`` keys (:mod:`moire_al.conventions`). When a label holds
  D3 (``info["REF_d3"]`` True) and the model has ``d3=True``, D3 is subtracted from
  energy, forces and stress before fitting; a model with ``d3=True`` always adds D3
  at prediction (ACE learns the rest, e.g. PBE). With ``d3=False`` nothing is
  subtracted or added.
* E0 (per-species reference energies) is a least-squares (minimum-norm) fit of the
  per-atom energies on composition, subtracted before the Bayesian fit.
* Rows (weights ``w_E, w_F, w_V``): energy per atom, force components, virial per
  atom (stress · volume / N, eV); the noise std of a row is 1/(w √β). A structure's
  ``info["fit_weight"]`` (default 1) multiplies all of its rows (e.g. to favour the
  near-equilibrium bilayers that decide a moiré relaxation over heavy rattles).
* Normal equations are accumulated structure by structure (memory O(L²), not O(N L)).
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path

import numpy as np

from moire_al.conventions import REF_D3, REF_ENERGY, REF_FORCES, REF_STRESS, structure_hash
from moire_al.errors import ModelError
from moire_al.geometry import layer_count

from .blr import BayesianLinearRegression
from .validation import structure_name, validate_labelled, validate_unlabelled

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
#: ε of the relative force uncertainty, eV/Å
FORCE_EPS = 0.2
DEFAULT_WEIGHTS = {"E": 30.0, "F": 1.0, "V": 1.0}
#: Design rows per block of the normal equations (one dsyrk each; ~L x 4096 doubles of memory)
BLOCK_ROWS = 4096


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for p in ("moire-al", "ace-jax", "ace-jax-coupling", "jax", "jaxlib", "numpy", "ase", "dftd3"):
        try:
            out[p] = version(p)
        except PackageNotFoundError:
            out[p] = None
    return out


def training_set_hash(atoms_list) -> str:
    """Hash of the training structures and their labels (order-independent)."""
    keys = []
    for at in atoms_list:
        h = hashlib.sha256(structure_hash(at).encode())
        h.update(np.round(float(at.info[REF_ENERGY]), 6).tobytes())
        h.update(np.round(np.asarray(at.arrays[REF_FORCES], float), 5).tobytes())
        if REF_STRESS in at.info:
            h.update(np.round(np.asarray(at.info[REF_STRESS], float), 8).tobytes())
        h.update(str(bool(at.info.get(REF_D3, False))).encode())
        for key, tag in ((WEIGHT_KEY, "w"), (ENERGY_WEIGHT_KEY, "wE")):   # a weight other than 1
            if float(at.info.get(key, 1.0)) != 1.0:
                h.update(f"{tag}{float(at.info[key]):.6g}".encode())
        keys.append(h.hexdigest())
    return hashlib.sha256("".join(sorted(keys)).encode()).hexdigest()[:24]


def default_order(elements) -> int:
    """The default correlation order: 3 for one species, 2 for two or more (hBN: at the
    same size order 2 / degree 12 beat order 3 on every multilayer figure of the CP2K set,
    docs/model.md)."""
    return 3 if len(set(elements)) == 1 else 2


def default_totaldegree(elements, order: int | None = None) -> int:
    """The default total degree, chosen against DFT by benchmarks/accuracy.py (docs/model.md).
    One species (graphene): 16 (order 3: L = 684; held-out bilayer force RMSE 0.041 eV/Å on
    the CP2K set at 99 structures, multilayers weighted 3x, against 0.061 at degree 14 and
    0.151 at degree 10; order 4 / degree 16 overfitted). Two or more species (hBN): 12 at
    order 2 (L = 612; bilayers 0.076, quad/penta 0.24 eV/Å on the 100-structure set, against
    0.103 / 0.74 at order 3 / degree 10, L = 1,408), 10 at order 3 or more."""
    order = default_order(elements) if order is None else int(order)
    if len(set(elements)) == 1:
        return 16
    return 12 if order <= 2 else 10


#: ``atoms.info`` key of a per-structure weight: it multiplies all rows of that structure
WEIGHT_KEY = "fit_weight"
#: ``atoms.info`` key of a per-structure factor on its energy row alone; 0 leaves the energy
#: out of the fit (forces and virial stay). For labels whose energies are comparable only
#: within their own cell, e.g. CP2K with XC grid smoothing, whose energy shift changes by
#: up to 40 meV/atom between cells (docs/labelling.md), while its forces are sound.
ENERGY_WEIGHT_KEY = "fit_weight_E"


def _info_weight(atoms, name, key: str, zero_ok: bool) -> float:
    """``atoms.info[key]`` (default 1) as a weight: positive, or >= 0 with ``zero_ok``."""
    w = atoms.info.get(key, 1.0)
    try:
        w = float(w)
    except (TypeError, ValueError):
        w = float("nan")
    if not (np.isfinite(w) and (w >= 0 if zero_ok else w > 0)):
        raise ModelError(f"structure {name}: info[{key!r}] must be a {'number >= 0' if zero_ok else 'positive number'}"
                         f", got {atoms.info.get(key)!r}")
    return w


def _energy_weight(atoms, name) -> float:
    return _info_weight(atoms, name, ENERGY_WEIGHT_KEY, zero_ok=True)


def _structure_weight(atoms, name) -> float:
    return _info_weight(atoms, name, WEIGHT_KEY, zero_ok=False)


class ACEModel:
    """Linear ACE potential fitted by evidence-maximising BLR, with a posterior committee.

    Parameters
    ----------
    elements : chemical symbols or atomic numbers; None = the species of the training data.
    order, totaldegree, rcut, wL : ACE basis (correlation order, total degree, cutoff Å,
        l-weight of the degree). ``None`` (default) takes :func:`default_order` and
        :func:`default_totaldegree` of the training species when fitting: order 3 / degree
        16 for one species (graphene: 684 functions), order 2 / degree 12 for two or more
        (hBN: 612 functions), both chosen on the CP2K sets by benchmarks/accuracy.py
        (docs/model.md).
    committee_size : K posterior samples.
    weights : {"E": per-atom energy weight, "F": force weight, "V": per-atom virial weight}.
    multilayer_weight : factor on every row of a structure with two or more layers
        (:func:`moire_al.geometry.layer_count`), on top of its
        ``info["fit_weight"]``. The default 3 favours the multilayers the potential exists
        for over heavily rattled monolayers, which a linear basis follows less well: on the
        CP2K graphene set it took the held-out bilayer force RMSE from 0.061 to 0.041 eV/Å
        and the energy RMSE from 13.9 to 3.9 meV/atom, at +0.07 eV/Å on monolayers
        (docs/model.md). 1 weights all structures alike.
    d3 : add D3(BJ, PBE) at prediction (and subtract it from labels that include it).
    seed : committee seed.
    """

    def __init__(self, elements=None, order: int | None = None, totaldegree: int | None = None, rcut: float = 5.5,
                 committee_size: int = 32, weights: dict | None = None, d3: bool = True, seed: int = 0,
                 wL: float = 1.5, prior_power: float = 2.0, multilayer_weight: float = 3.0):
        self.elements = elements
        self.order = order
        self.totaldegree = totaldegree
        self.rcut = rcut
        self.committee_size = committee_size
        self.weights = dict(DEFAULT_WEIGHTS, **(weights or {}))
        self.d3 = d3
        self.seed = seed
        self.wL = wL
        self.prior_power = prior_power
        self.multilayer_weight = multilayer_weight
        self.basis_ = None

    # ------------------------------------------------------------------ helpers
    @classmethod
    def check_params(cls, params: dict, committee_optional: bool = False) -> None:
        """Raise :class:`ModelError` naming the first unknown or bad hyperparameter.
        ``committee_optional``: ``committee_size`` 0 (a fit without a committee) is allowed;
        the loop's scoring needs one."""
        import inspect

        known = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
        unknown = sorted(set(params) - set(known))
        if unknown:
            raise ModelError(f"unknown ACEModel hyperparameter(s) {', '.join(map(repr, unknown))}; "
                             f"known: {', '.join(known)}")

        def is_int(v):
            return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

        def is_num(v):
            return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)

        for k in ("order", "totaldegree", "committee_size"):
            if k in ("order", "totaldegree") and params.get(k, 0) is None:
                continue  # None: the default order / degree for the species
            if k == "committee_size" and committee_optional and params.get(k) == 0 and is_int(params[k]):
                continue
            if k in params and not (is_int(params[k]) and params[k] >= 1):
                raise ModelError(f"ACEModel hyperparameter {k!r} must be a positive integer, got {params[k]!r}")
        for k in ("rcut", "wL", "prior_power", "multilayer_weight"):
            if k in params and not (is_num(params[k]) and params[k] > 0):
                raise ModelError(f"ACEModel hyperparameter {k!r} must be a positive number, got {params[k]!r}")
        if "seed" in params and not is_int(params["seed"]):
            raise ModelError(f"ACEModel hyperparameter 'seed' must be an integer, got {params['seed']!r}")
        if "d3" in params and not isinstance(params["d3"], bool):
            raise ModelError(f"ACEModel hyperparameter 'd3' must be true or false, got {params['d3']!r}")
        w = params.get("weights")
        if w is not None:
            if not isinstance(w, dict) or set(w) - set(DEFAULT_WEIGHTS) or \
                    not all(is_num(v) and v >= 0 for v in w.values()):
                raise ModelError(f"ACEModel hyperparameter 'weights' must map E, F, V to non-negative "
                                 f"numbers, got {w!r}")
        el = params.get("elements")
        if el is not None and not isinstance(el, (list, tuple)):
            raise ModelError(f"ACEModel hyperparameter 'elements' must be a list of species, got {el!r}")

    def get_params(self) -> dict:
        return {k: getattr(self, k) for k in ("elements", "order", "totaldegree", "rcut", "committee_size",
                                               "weights", "d3", "seed", "wL", "prior_power",
                                               "multilayer_weight")}

    def _resolve_elements(self, atoms_list) -> tuple:
        from ase.data import atomic_numbers

        if self.elements is None:
            zs = sorted({int(z) for at in atoms_list for z in at.numbers})
        else:
            zs = sorted({int(e) if str(e).isdigit() else atomic_numbers[str(e)] for e in self.elements})
        if not zs:
            raise ModelError("no elements: empty training set and no elements given")
        return tuple(zs)

    def _check_fitted(self):
        if getattr(self, "coef_", None) is None:
            raise ModelError("the model is not fitted: call fit() or ACEModel.load()")

    def _d3_part(self, atoms, name):
        from .d3 import d3_results

        return d3_results(atoms, name)

    def _composition(self, atoms) -> np.ndarray:
        zs = self.basis_.elements
        return np.array([np.count_nonzero(atoms.numbers == z) for z in zs], float)

    # ------------------------------------------------------------------ fit
    def fit(self, atoms_list, *, verbose: bool = False) -> "ACEModel":
        """Fit to labelled structures (``REF_energy``, ``REF_forces``, optional ``REF_stress``).

        Three steps, each usable alone (a sharded fit runs the middle one per shard):
        :meth:`fit_plan` (basis, E0 from all energies), :meth:`normal_equations` (the
        partial ΨᵀWΨ, ΨᵀWy, yᵀWy of any subset) and :meth:`fit_normal_equations` (sum → solve)."""
        t0 = time.perf_counter()
        atoms_list = list(atoms_list)
        self.fit_plan(atoms_list)
        neq = self.normal_equations(atoms_list, verbose=verbose)
        return self.fit_normal_equations(neq, atoms_list, t0=t0)

    def _validated(self, atoms_list):
        atoms_list = list(atoms_list)
        if not atoms_list:
            raise ModelError("fit: no training structures")
        zs = self._resolve_elements(atoms_list)
        if self.order is None:
            self.order = default_order(zs)
        if self.totaldegree is None:
            self.totaldegree = default_totaldegree(zs, self.order)
        for k, at in enumerate(atoms_list):
            validate_labelled(at, k, zs)
        return atoms_list, zs

    def _build_basis(self, zs):
        from .basis import ACEBasis

        if self.basis_ is None or self.basis_.spec() != {"backend": "ace-jax", "elements": list(zs),
                                                          "order": int(self.order),
                                                          "totaldegree": int(self.totaldegree),
                                                          "rcut": float(self.rcut), "wL": float(self.wL)}:
            self.basis_ = ACEBasis(zs, self.order, self.totaldegree, self.rcut, self.wL)

    def _targets(self, at, name):
        """(E, F, S) of a label with D3 removed where the convention says so."""
        E = float(at.info[REF_ENERGY])
        F = np.asarray(at.arrays[REF_FORCES], float).copy()
        S = np.asarray(at.info[REF_STRESS], float).copy() if REF_STRESS in at.info else None
        if self.d3 and bool(at.info.get(REF_D3, False)):
            e3, f3, s3 = self._d3_part(at, name)
            E, F = E - e3, F - f3
            if S is not None and s3 is not None:
                S = S - s3
        return E, F, S

    def fit_plan(self, atoms_list) -> dict:
        """Validate, build the basis and fit E0 (composition least squares of all per-atom
        energies, D3 removed where needed). Returns ``{"elements", "order", "totaldegree", "E0"}``
        (JSON-able): with
        them a shard's :meth:`normal_equations` needs only its own structures."""
        atoms_list, zs = self._validated(atoms_list)
        if self.d3:
            from .d3 import check_d3

            check_d3()
        self._build_basis(zs)
        # E0 from the structures whose energies are fitted (all of them if none is)
        use = [at for k, at in enumerate(atoms_list) if _energy_weight(at, structure_name(at, k)) > 0] or atoms_list
        energies = np.array([self._targets(at, structure_name(at, k))[0] for k, at in enumerate(use)])
        comp = np.array([self._composition(at) for at in use])
        nat = comp.sum(1)
        self.E0_ = np.linalg.lstsq(comp / nat[:, None], energies / nat, rcond=None)[0]
        return {"elements": list(zs), "order": int(self.order), "totaldegree": int(self.totaldegree),
                "E0": [float(x) for x in self.E0_]}

    def set_plan(self, plan: dict) -> "ACEModel":
        """Take a :meth:`fit_plan` result computed elsewhere (a shard)."""
        zs = tuple(int(z) for z in plan["elements"])
        self.order = int(plan.get("order") or self.order or default_order(zs))
        self.totaldegree = int(plan.get("totaldegree") or self.totaldegree or default_totaldegree(zs, self.order))
        self._build_basis(zs)
        self.E0_ = np.asarray(plan["E0"], float)
        return self

    @staticmethod
    def fit_blocks(atoms_list, block_rows: int | None = None) -> list[tuple[int, int]]:
        """Consecutive structure ranges [start, stop) of ~``block_rows`` design rows each: the
        blocks of :meth:`normal_equations`. They depend only on the sequence of structures, so a
        sharded fit hands out whole blocks and reproduces the single-process sums exactly."""
        block_rows = BLOCK_ROWS if block_rows is None else block_rows
        out, start, rows = [], 0, 0
        for k, at in enumerate(atoms_list):
            rows += 1 + 3 * len(at) + 6
            if rows >= block_rows:
                out.append((start, k + 1))
                start, rows = k + 1, 0
        if start < len(atoms_list):
            out.append((start, len(atoms_list)))
        return out

    def normal_equations(self, atoms_list, *, verbose: bool = False, block_rows: int | None = None, blocks=None):
        """The partial normal equations of ``atoms_list`` (after :meth:`fit_plan` or
        :meth:`set_plan`): weighted design rows of energy (per atom), forces and virial (per
        atom), accumulated per block (``blocks``, default :meth:`fit_blocks`) by a symmetric
        rank-k update (BLAS dsyrk on the upper triangle) and added to the totals with an
        error-free summation. Memory: O(L²) + one block's rows.

        The rows of a block's structures are computed concurrently on the basis' threads
        (:attr:`ACEBasis.threads`), one structure per thread, the largest first (each with
        the single-threaded kernel, so its rows are those of a serial fit bit for bit), written
        and weighted in place in the block's array; then the block's dsyrk runs on BLAS' threads.
        The two take turns: run side by side they would share the same cores, and four busy
        threads on two cores took 1.03-1.1x as long as the phases in turn (docs/benchmarks.md). The
        blocks' products and their summation order are the serial fit's, so the result equals
        it exactly."""
        from concurrent.futures import ThreadPoolExecutor

        from .blr import NormalEquations, syrk_upper

        atoms_list = list(atoms_list)
        b = self.basis_
        L, NZ = b.L, len(b.elements)
        P = L + NZ
        neq = NormalEquations.zeros(P)
        counts = {"E": 0, "F": 0, "V": 0}
        t_rows = time.perf_counter()
        n_atoms, n_obs = 0, 0
        blocks = self.fit_blocks(atoms_list, block_rows) if blocks is None else blocks

        def layout(k):
            """Structure k's rows (E if its energy is fitted, 3n F, 6 V if it has a stress
            label and a volume), their weights and weighted targets."""
            at = atoms_list[k]
            name = structure_name(at, k)
            E, F, S = self._targets(at, name)
            n = len(at)
            ws = _structure_weight(at, name) * (float(self.multilayer_weight) if layer_count(at) >= 2 else 1.0)
            wE, wF, wV = (ws * float(self.weights[key]) for key in ("E", "F", "V"))
            we = _energy_weight(at, name)
            vol = b.cell_volume(at) if S is not None else None
            lay = {"k": k, "name": name, "n": n, "wF": wF, "nE": int(we > 0), "nV": 6 if vol is not None else 0}
            lw = F.size * 2 * np.log(wF)
            y = []
            if we > 0:
                wE *= we
                lay.update(wE=wE, comp=self._composition(at))
                y.append(wE * np.array([(E - lay["comp"] @ self.E0_) / n]))
                lw += 2 * np.log(wE)
            y.append(wF * F.reshape(-1))
            if vol is not None:
                lay.update(wV=wV, vol=vol)
                y.append(wV * S * vol / n)
                lw += 12 * np.log(wV)
            lay["rows"] = lay["nE"] + 3 * n + lay["nV"]
            return lay, y, lw

        def fill(lay, R):
            """Structure ``lay``'s weighted rows into R (its rows of the block), with the
            roundings of the per-structure arrays they replace: value * w first, then the
            other factors in order."""
            n, e = lay["n"], lay["nE"]
            PsiE, PsiF, PsiS = b.structure_rows(atoms_list[lay["k"]], lay["name"], threads=1, out=R[e:e + 3 * n])
            if e:
                wE = lay["wE"]
                np.multiply(PsiE, wE, out=R[0, :L])
                np.multiply(lay["comp"], wE, out=R[0, L:])
                np.divide(R[0], n, out=R[0])
            np.multiply(PsiF, lay["wF"], out=PsiF)
            R[e:e + 3 * n, L:] = 0.0
            if lay["nV"]:
                V = R[e + 3 * n:]
                np.multiply(PsiS, lay["wV"], out=V[:, :L])
                V[:, L:] = 0.0
                np.multiply(V, lay["vol"], out=V)
                np.divide(V, n, out=V)

        nthreads = max(1, b.threads)
        # one product buffer and one row buffer (at most 1 + 3n + 6 rows per structure, as in
        # fit_blocks), reused by every block: fresh ones cost their page faults
        AtA = np.zeros((P, P), order="F")
        cap = max((sum(7 + 3 * len(atoms_list[k]) for k in range(*blk)) for blk in blocks), default=0)
        buf = np.empty((cap, P)) if blocks else None
        with ThreadPoolExecutor(max_workers=nthreads) as pool:
            for blk in blocks:
                lays, ys, lws, r0 = [], [], [], 0
                for k in range(*blk):
                    lay, y, lw = layout(k)
                    lay["r0"] = r0
                    r0 += lay["rows"]
                    lays.append(lay)
                    ys += y
                    lws.append(lw)
                Pw = buf[:r0]
                # the largest structures first, so that the threads finish the block at about the same time
                order = sorted(lays, key=lambda lay: -lay["rows"])
                for f in [pool.submit(fill, lay, Pw[lay["r0"]:lay["r0"] + lay["rows"]]) for lay in order]:
                    f.result()
                for lay in lays:
                    n_atoms += lay["n"]
                    counts["E"] += lay["nE"]
                    counts["F"] += 3 * lay["n"]
                    counts["V"] += lay["nV"]
                yw = np.concatenate(ys)
                n_obs += len(yw)
                if verbose:
                    log.info("rows %d/%d", blk[1], len(atoms_list))
                # upper triangle of PwᵀPw (lower left 0), as (Pwᵀ)(Pwᵀ)ᵀ: Pwᵀ is Fortran-ordered,
                # so BLAS takes it without a transposed copy (1.4-1.7x)
                neq.add_block(syrk_upper(Pw, AtA), Pw.T @ yw, float(yw @ yw), float(np.sum(lws)), upper=True)
        neq.n_obs, neq.counts, neq.n_structures, neq.n_atoms = n_obs, counts, len(atoms_list), n_atoms
        neq.time_rows_s = time.perf_counter() - t_rows
        return neq

    def fit_normal_equations(self, neq, atoms_list=None, t0: float | None = None) -> "ACEModel":
        """Solve the summed normal equations (evidence-maximising BLR, committee); with the
        training structures also the training set hash, label conventions and RMSE report."""
        t0 = time.perf_counter() if t0 is None else t0
        b = self.basis_
        L, NZ = b.L, len(b.elements)
        gamma = np.concatenate([np.maximum(b.gamma, 1.0) ** self.prior_power, np.ones(NZ)])
        t_solve = time.perf_counter()
        wE, wF = float(self.weights["E"]), float(self.weights["F"])
        mw = float(self.multilayer_weight)
        self.blr_ = BayesianLinearRegression(committee_size=self.committee_size, seed=self.seed)
        A, bv, yWy, log_w2 = neq.totals()
        self.blr_.fit_normal(A, bv, yWy, neq.n_obs, gamma, log_w2=log_w2)
        t_solve = time.perf_counter() - t_solve
        self.coef_ = self.blr_.coef_[:L]
        self.committee_ = self.blr_.committee_[:, :L]
        self.E0_ = self.E0_ + self.blr_.coef_[L:]
        self.committee_E0_ = self.blr_.committee_[:, L:] - self.blr_.coef_[L:]   # deviations from E0_
        self.elements_ = tuple(b.elements)
        self.fit_info_ = {
            "n_structures": neq.n_structures, "n_atoms": int(neq.n_atoms), "n_basis": L,
            "n_rows": dict(neq.counts), "alpha": self.blr_.alpha_, "beta": self.blr_.beta_,
            # the fitted noise of a multilayer's rows (weight multilayer_weight) and of a monolayer's
            "noise_std_force_eV_per_A": self.blr_.noise_std_ / (wF * mw),
            "noise_std_energy_meV_per_atom": 1000 * self.blr_.noise_std_ / (wE * mw),
            "noise_std_force_monolayer_eV_per_A": self.blr_.noise_std_ / wF,
            "effective_parameters": self.blr_.effective_parameters_,
            "log_evidence": self.blr_.log_evidence_, "evidence_iterations": self.blr_.n_iter_,
            "time_rows_s": neq.time_rows_s, "time_solve_s": t_solve, "time_total_s": time.perf_counter() - t0,
        }
        if atoms_list is not None:
            from .metrics import rmse_table

            atoms_list = list(atoms_list)
            self.training_hash_ = training_set_hash(atoms_list)
            self.d3_labels_ = sorted({bool(at.info.get(REF_D3, False)) for at in atoms_list})
            self.fit_report_ = {"train": rmse_table(self, atoms_list), **self.fit_info_}
        return self

    # ------------------------------------------------------------------ predict
    def _coefficient_matrix(self, committee: bool) -> np.ndarray:
        if committee and self.committee_ is not None and len(self.committee_):
            return np.concatenate([self.coef_[:, None], self.committee_.T], axis=1)
        return self.coef_[:, None]

    def predict_one(self, atoms, name: str = "", committee: bool = True, stress: bool = True,
                    d3: bool | None = None, members: bool = False, threads: int | None = None) -> dict:
        """Prediction for one structure (see :meth:`predict`). ``members=True`` also
        returns the committee members' ``energy_members`` (K,) eV and
        ``forces_members`` (K, N, 3) eV/Å (ACE + E0, without D3: D3 is the same for all).
        ``threads``: of the compiled kernel (default the basis')."""
        self._check_fitted()
        validate_unlabelled(atoms, name, self.elements_)
        C = self._coefficient_matrix(committee)
        E, F, S = self.basis_.evaluate(atoms, C, name, stress=stress, threads=threads)
        e0 = float(self._composition(atoms) @ self.E0_)
        out = {"energy": float(E[0]) + e0, "forces": F[0].copy(),
               "stress": None if S is None else S[0].copy()}
        add_d3 = self.d3 if d3 is None else (d3 and self.d3)
        if add_d3:
            e3, f3, s3 = self._d3_part(atoms, name)
            out["energy"] += e3
            out["forces"] = out["forces"] + f3
            if out["stress"] is not None and s3 is not None:
                out["stress"] = out["stress"] + s3
        out["d3_included"] = bool(add_d3)
        if C.shape[1] > 1:
            Ek, Fk = E[1:], F[1:]
            dE0 = getattr(self, "committee_E0_", None)
            if dE0 is not None and len(dE0) == len(Ek):
                Ek = Ek + dE0 @ self._composition(atoms)
            fstd = np.sqrt(np.mean(np.sum((Fk - Fk.mean(0)) ** 2, axis=2), axis=0))      # (N,)
            rel = fstd / (np.linalg.norm(out["forces"], axis=1) + FORCE_EPS)
            out.update(energy_std=float(np.std(Ek)), forces_std=fstd, rel_force_unc=rel,
                       max_force_std=float(fstd.max(initial=0.0)),
                       max_rel_force_unc=float(rel.max(initial=0.0)))
            if members:
                out.update(energy_members=np.asarray(Ek, float) + e0, forces_members=np.asarray(Fk, float))
            if S is not None:
                out["stress_std"] = np.std(S[1:], axis=0)
        return out

    def predict(self, atoms_list, committee: bool = True, stress: bool = True,
                d3: bool | None = None) -> list[dict]:
        """Per structure: energy (eV), forces (N, 3), stress (6,) or None, and with the
        committee energy_std (eV), forces_std (N,) = sqrt(mean_k ‖F_i^k − F̄_i‖²) (eV/Å),
        rel_force_unc (N,) = forces_std / (‖F_i‖ + 0.2 eV/Å), max_force_std, max_rel_force_unc.

        Without D3 the structures are evaluated concurrently on the basis' threads, one
        structure per thread with the single-threaded kernel (a queue of structures keeps both
        cores busy where a structure split over threads waits for its slowest part on shared
        cores; the numbers are those of a serial loop)."""
        self._check_fitted()
        atoms_list = list(atoms_list)
        nthreads = self.basis_.threads
        add_d3 = self.d3 if d3 is None else (d3 and self.d3)

        def one(k):
            return self.predict_one(atoms_list[k], structure_name(atoms_list[k], k), committee=committee,
                                    stress=stress, d3=d3, threads=1 if nthreads > 1 else None)

        if add_d3 or nthreads <= 1 or len(atoms_list) < 2 or not self.basis_.native:
            return [one(k) for k in range(len(atoms_list))]
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=nthreads) as pool:
            return list(pool.map(one, range(len(atoms_list))))

    def score(self, atoms_list, kind: str = "rel", d3: bool = False) -> np.ndarray:
        """Selection score per structure: ``kind="rel"`` max_i rel_force_unc (dimensionless),
        ``"abs"`` max_i forces_std (eV/Å), ``"energy"`` energy_std per atom (eV/atom).

        The committee spread does not depend on D3; with ``d3=False`` (default, faster) the
        denominator ‖F_i‖ + ε of the relative score uses the ACE force only (D3 forces in
        these layered systems are a few 10 meV/Å against ε = 200 meV/Å)."""
        if kind not in ("rel", "abs", "energy"):
            raise ModelError(f"score: unknown kind {kind!r} (rel, abs, energy)")
        atoms_list = list(atoms_list)
        preds = self.predict(atoms_list, committee=True, stress=False, d3=d3)
        return np.asarray([p["max_rel_force_unc"] if kind == "rel" else p["max_force_std"] if kind == "abs"
                           else p["energy_std"] / len(at) for p, at in zip(preds, atoms_list)], float)

    def calculator(self, committee: bool = True):
        """An ASE calculator of this model (energy, forces, stress; with committee=True also
        energy_std, forces_std, rel_force_unc)."""
        from .calculator import ACEModelCalculator

        self._check_fitted()
        return ACEModelCalculator(self, committee=committee)

    # ------------------------------------------------------------------ io
    def save(self, path) -> Path:
        from .io import save_model

        self._check_fitted()
        return save_model(self, Path(path))

    @classmethod
    def load(cls, path) -> "ACEModel":
        from .io import load_model

        return load_model(cls, Path(path))

    def __repr__(self) -> str:
        p = self.get_params()
        return "ACEModel(" + ", ".join(f"{k}={v!r}" for k, v in p.items()) + ")"
