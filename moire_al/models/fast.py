"""A fast CPU evaluator of the posterior mean: ace-jax's C++ kernel over periodic ghosts.

ace-jax ships a compiled CPU kernel for lean linear ACE (``ace_jax.eval.ffi``,
written for LAMMPS): positions of *all* atoms (owned and ghost) in, site energies
of the owned rows and forces on every atom out, for a neighbour matrix of
indices. It has no notion of a cell, so this module supplies what LAMMPS would:

* the periodic images within ``rcut + skin`` of the cell become ghost atoms
  (owner index + lattice shift), and the neighbour matrix points into
  [owned | ghosts];
* the list is kept (Verlet skin) until an atom has moved ``skin / 2`` or the cell,
  pbc or species change; between rebuilds only the ghost positions are refreshed;
* forces on ghosts are folded back onto their owners; the stress is the virial
  ``-(1/V) Σ_a f_a ⊗ x_a`` over owned and ghost atoms, which is exact because the
  energy depends on the cell only through the ghost positions;
* two atoms closer than the kernel's radial table (0.5 Å) raise :class:`ModelError`
  naming them: a structure the model has collapsed;
* per-atom virials for heat currents (``virials``, on request): the kernel takes a
  weight per site and returns ``f = -Σ_i w_i ∇e_i``; with ``w_i = x_i,a`` (one call
  per Cartesian a) ``W_k[a] = x_k,a F_k − f_k^(a) = −Σ_i (x_k − x_i)_a ∂e_i/∂x_k``
  for every owned or ghost atom k, the per-edge form of a site-energy potential's
  virial (the pair gradients themselves never leave the kernel). Ghosts fold onto
  their owners; Σ_k W_k = −V σ.

The kernel is compiled on first use with the machine's C++ compiler (cached by
ace-jax); :func:`available` says whether that works. :class:`FastACECalculator` is
an ASE calculator of the ACE part (E0 included; D3, when the model has it, is added
by :class:`~moire_al.models.calculator.ACEModelCalculator`).
"""

from __future__ import annotations

import logging
import threading

import numpy as np
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes

from moire_al.errors import ModelError

log = logging.getLogger(__name__)

_LOCK = threading.Lock()
_STATUS: dict = {}


def available() -> bool:
    """True when ace-jax's CPU kernel compiles (or is cached) and registers here."""
    with _LOCK:
        if "ok" not in _STATUS:
            try:
                from ace_jax.eval import ffi

                ffi.register(ffi.library())
                _STATUS["ok"] = True
            except Exception as exc:  # no compiler, a failed compile, an API change
                _STATUS["ok"] = False
                _STATUS["why"] = f"{type(exc).__name__}: {exc}"
                log.warning("ace-jax CPU kernel unavailable, using the JAX evaluator: %s", _STATUS["why"])
        return _STATUS["ok"]


def unavailable_reason() -> str | None:
    available()
    return _STATUS.get("why")


def kernel_model(ace_model):
    """The lean float64 ace-jax model with a radial table that the kernel evaluates."""
    from ace_jax.eval.model import lean

    from .io import acejax_tree

    return lean(acejax_tree(ace_model), radial_table=True)


class _GhostList:
    """Owned + ghost atoms and the (K, n) neighbour matrix for ``cutoff`` (= rcut + skin)."""

    def __init__(self, atoms, cutoff: float):
        from .native import neighbour_list as _neighbour_list

        n = len(atoms)
        pos = np.ascontiguousarray(atoms.positions, float)
        cell = np.asarray(atoms.cell.complete().array, float)  # a 2D cell may lack its third vector
        pbc = np.asarray(atoms.pbc, bool)
        if not pbc.any():
            cell = np.eye(3) * (np.ptp(pos, axis=0).max() + 2 * cutoff + 1.0)
        i, j, D, _ = _neighbour_list(pos, cell, pbc, cutoff)
        # the image shift from the edge vectors themselves: a backend may wrap positions
        # internally, so its S need not refer to these (possibly unwrapped) positions
        frac = np.linalg.solve(cell.T, (pos[i] + D - pos[j]).T).T
        S = np.rint(frac).astype(np.int64)
        image = np.any(S != 0, axis=1)
        # each distinct (owner, shift) image becomes one ghost
        key = np.concatenate([j[image, None], S[image]], axis=1)
        uniq, inv = np.unique(key, axis=0, return_inverse=True)
        self.n = n
        self.owner = np.concatenate([np.arange(n), uniq[:, 0]]).astype(np.int64)
        self.shift = np.concatenate([np.zeros((n, 3), np.int64), uniq[:, 1:]])
        target = j.astype(np.int64).copy()
        target[image] = n + inv.reshape(-1)
        counts = np.bincount(i, minlength=n)
        K = max(1, int(counts.max(initial=1)))
        start = np.concatenate([[0], np.cumsum(counts)[:-1]])
        slot = np.arange(len(i)) - start[i]
        nbr = np.full((K, n), -1, np.int32)
        nbr[slot, i] = target
        self.nbr = nbr
        self.count = counts.astype(np.int32)
        self.ref_positions = pos.copy()
        # the closest pair at build time: no pair can get closer than this minus twice
        # the largest displacement since, which spares the per-call pair scan
        self.min_dist = float(np.sqrt(np.einsum("ij,ij->i", D, D).min(initial=np.inf)))
        self.cell = np.asarray(atoms.cell.array, float).copy()
        self.pbc = pbc.copy()
        self.numbers = atoms.numbers.copy()

    def positions(self, atoms) -> np.ndarray:
        return atoms.positions[self.owner] + self.shift @ np.asarray(atoms.cell.array, float)

    def valid(self, atoms, skin: float) -> bool:
        if (len(atoms) != self.n or not np.array_equal(atoms.numbers, self.numbers)
                or not np.array_equal(atoms.pbc, self.pbc)
                or not np.allclose(atoms.cell.array, self.cell, rtol=0, atol=1e-12)):
            return False
        return bool(self.moved(atoms) < 0.5 * skin)

    def moved(self, atoms) -> float:
        """The largest displacement of an atom since the list was built (Å)."""
        return float(np.sqrt(((atoms.positions - self.ref_positions) ** 2).sum(1)).max(initial=0.0))


class FastACECalculator(Calculator):
    """Posterior-mean ACE energy, forces and stress through ace-jax's C++ CPU kernel.

    Parameters: ``ace_model`` a fitted :class:`~moire_al.models.ace.ACEModel`;
    ``skin`` (Å) of the reused neighbour list. The D3 term is not included.
    ``last_stats`` holds the call count and neighbour-list rebuilds.
    """

    implemented_properties = ["energy", "free_energy", "energies", "forces", "stress", "virials"]

    def __init__(self, ace_model, skin: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        if not available():
            raise ModelError(f"the ace-jax CPU kernel is unavailable: {unavailable_reason()}")
        from ace_jax.eval import ffi

        self.ace_model = ace_model
        self.skin = float(skin)
        self.rcut = float(ace_model.basis_.rcut)
        self._kmodel = kernel_model(ace_model)
        self._attrs, self._consts = ffi.kernel_inputs(self._kmodel)
        self._z2i = {int(z): k for k, z in enumerate(ace_model.elements_)}
        self._list = None
        self.last_stats = {"calls": 0, "rebuilds": 0}

    def _species(self, numbers) -> np.ndarray:
        try:
            return np.array([self._z2i[int(z)] for z in numbers], np.int32)
        except KeyError as exc:
            from ase.data import chemical_symbols

            raise ModelError(f"element {chemical_symbols[int(exc.args[0])]} is not in the model") from None

    def _kernel(self, x, z, nbr, count, w=None):
        import jax
        import jax.numpy as jnp

        from ace_jax.eval import ffi

        w = jnp.ones(len(x), jnp.float64) if w is None else jnp.asarray(w, jnp.float64)
        out = (jax.ShapeDtypeStruct((len(x),), jnp.float64), jax.ShapeDtypeStruct((len(x), 3), jnp.float64))
        e, f = jax.ffi.ffi_call(ffi.TARGET, out)(
            jnp.asarray(x), jnp.asarray(z), jnp.asarray(nbr), jnp.asarray(count), w, *self._consts,
            **self._attrs, rc2=np.float64(self.rcut ** 2))
        return np.asarray(e), np.asarray(f)

    @staticmethod
    def _closest_pair(x, gl):
        """(distance, i, j) of the closest pair in the list (j may be a ghost)."""
        live = gl.nbr >= 0
        if not live.any():
            return np.inf, -1, -1
        rows = np.broadcast_to(np.arange(gl.n), gl.nbr.shape)[live]
        cols = gl.nbr[live]
        d = x[cols] - x[rows]
        r2 = np.einsum("ij,ij->i", d, d)
        k = int(np.argmin(r2))
        return float(np.sqrt(r2[k])), int(rows[k]), int(gl.owner[cols[k]])

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        at = self.atoms
        if not np.isfinite(at.positions).all():
            raise ModelError("positions are not finite (NaN or inf)")
        if self._list is None or not self._list.valid(at, self.skin):
            self._list = _GhostList(at, self.rcut + self.skin)
            self._species_ext = self._species(at.numbers)[self._list.owner]
            self.last_stats["rebuilds"] += 1
        gl = self._list
        x = gl.positions(at)
        x0 = self._attrs["x0"]
        r, i, j = (self._closest_pair(x, gl) if gl.min_dist - 2 * gl.moved(at) < x0
                   else (np.inf, -1, -1))
        if r < x0:
            # below the radial table's range the kernel would extrapolate a cubic; no
            # labelled structure comes near such a distance, so nothing meaningful does
            raise ModelError(f"atoms {i} and {j} are {r:.3f} Å apart (below {x0:.2f} Å): "
                             "the structure has collapsed under the model, far outside its training "
                             "data (a linear ACE has no built-in core repulsion)")
        e, f = self._kernel(x, self._species_ext, gl.nbr, gl.count)
        forces = np.zeros((gl.n, 3))
        np.add.at(forces, gl.owner, f)
        self.last_stats["calls"] += 1
        energies = e[: gl.n]
        self.results.update(energy=float(energies.sum()), free_energy=float(energies.sum()),
                            energies=energies.copy(), forces=forces)
        if "virials" in properties:
            # per-atom virials W_k = x_k ⊗ F_k − [f^(a)_k]_a, f^(a) the kernel's output with
            # site weights x_a (coordinates about the centroid: less cancellation)
            xc = x - x[: gl.n].mean(axis=0)
            W = np.empty((len(x), 3, 3))
            for a in range(3):
                _, fa = self._kernel(x, self._species_ext, gl.nbr, gl.count, xc[:, a])
                W[:, a, :] = xc[:, a, None] * f - fa
            virials = np.zeros((gl.n, 3, 3))
            np.add.at(virials, gl.owner, W)
            self.results["virials"] = virials
        if at.pbc.all():  # the virial costs one pass over the atoms: always computed
            W = -np.einsum("ai,aj->ij", f, x)
            W = 0.5 * (W + W.T) / at.get_volume()
            self.results["stress"] = W[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]
        elif "stress" in properties:
            raise PropertyNotImplementedError("stress needs a 3D periodic cell")
