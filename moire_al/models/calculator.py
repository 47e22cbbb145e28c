"""ASE calculator of a fitted :class:`~moire_al.models.ace.ACEModel`."""

from __future__ import annotations

import numpy as np
from ase.calculators.calculator import Calculator, all_changes


class ACEModelCalculator(Calculator):
    """Energy, forces and stress of ACE (+ D3 when the model has it).

    With ``committee=True`` (default) the results also hold ``energy_std`` (eV),
    ``forces_std`` (N,) eV/Å, ``rel_force_unc`` (N,), ``max_force_std`` and
    ``max_rel_force_unc``, from the same single basis evaluation. ``committee=False``
    evaluates the posterior mean only: the fast path for MD, relaxations and NEB.

    ``evaluator`` picks how the posterior mean is evaluated (``committee=False``):
    ``"kernel"``, ace-jax's compiled C++ CPU kernel over periodic ghosts
    (:mod:`moire_al.models.fast`, ~10x the JAX path on CPU); ``"jax"``, ace-jax's own
    JAX calculator; ``"auto"`` (default; ``$MOIRE_AL_ACE_EVALUATOR`` overrides) the
    kernel when it compiles here, else JAX. Both keep the neighbour list with a
    Verlet skin and agree to ~1e-8 eV/Å. ``self.evaluator`` says which one ran.

    Per-atom ``energies`` and ``virials`` (for heat currents; ``committee=False``, the
    kernel, a model without D3: D3's per-atom split is not available) come from
    :class:`~moire_al.models.fast.FastACECalculator`. With the kernel the stress is
    always kept (it costs nothing there), so an MD step asking for it after the
    forces does not evaluate the model twice.
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress",
                              "energy_std", "forces_std", "rel_force_unc", "energies", "virials"]
    PER_ATOM = ("energies", "virials")

    def __init__(self, model, committee: bool = True, evaluator: str | None = None, **kwargs):
        super().__init__(**kwargs)
        from moire_al.config import environment

        self.ace_model = model
        self.committee = committee
        choice = (evaluator or environment().ace_evaluator or "auto").lower()
        if choice not in ("auto", "kernel", "jax"):
            from moire_al.errors import ModelError

            raise ModelError(f"evaluator {choice!r}: expected auto, kernel or jax")
        self.requested_evaluator = choice
        self.evaluator = None

    def _native(self):
        """The posterior-mean calculator: the C++ kernel or ace-jax's own JAX calculator."""
        if getattr(self, "_native_calc", None) is None:
            from . import fast

            if self.requested_evaluator == "kernel" or (self.requested_evaluator == "auto"
                                                         and fast.available()):
                self._native_calc = fast.FastACECalculator(self.ace_model)
                self.evaluator = "kernel"
                return self._native_calc
            from ace_jax.calc.point import ACECalculator

            from .io import acejax_tree

            b = self.ace_model.basis_
            tree, meta = b._basis._replace(model=acejax_tree(self.ace_model)).eval_pair()
            self._native_calc = ACECalculator(tree, meta)
            self.evaluator = "jax"
        return self._native_calc

    def _formula(self) -> str:
        """The atoms' formula (names in messages), kept while the atoms' numbers stay: ASE's
        takes ~1 ms for 1,000 atoms, 2 µs/atom of each MD step when asked twice a step."""
        key = self.atoms.numbers.tobytes()
        if getattr(self, "_formula_key", None) != key:
            self._formula_key, self._formula_val = key, self.atoms.get_chemical_formula()
        return self._formula_val

    def _calculate_mean(self, properties):
        from .validation import validate_unlabelled

        from moire_al.errors import ModelError

        m = self.ace_model
        name = self._formula()
        validate_unlabelled(self.atoms, name, m.elements_)
        per_atom = [p for p in self.PER_ATOM if p in properties]
        if per_atom and m.d3:
            raise ModelError(f"{', '.join(per_atom)} (per-atom, for heat currents) need a model without D3 "
                             "(this model adds D3, whose per-atom split is not available)")
        nat = self._native()
        want_stress = self.atoms.pbc.all() and ("stress" in properties or self.evaluator == "kernel")
        if per_atom and self.evaluator != "kernel":
            raise ModelError(f"{', '.join(per_atom)} (per-atom, for heat currents) need the C++ kernel "
                             f"(evaluator here: {self.evaluator})")
        at = self.atoms.copy()
        at.calc = nat
        if per_atom:
            nat.get_property("virials", at)
            self.results.update(energies=nat.results["energies"].copy(),
                                virials=nat.results["virials"].copy())
        e = at.get_potential_energy()
        f = at.get_forces().copy()
        s = at.get_stress().copy() if want_stress else None
        if m.d3:
            if getattr(self, "_d3", None) is None:
                from .d3 import evaluator

                self._d3 = evaluator()      # keeps its pair list between calls, like the kernel
            e3, f3, s3 = self._d3.results(self.atoms, name)
            e, f = e + e3, f + f3
            if s is not None and s3 is not None:
                s = s + s3
        self.results.update(energy=e, free_energy=e, forces=f)
        if s is not None:
            self.results["stress"] = s
        elif "stress" in properties:
            from ase.calculators.calculator import PropertyNotImplementedError

            raise PropertyNotImplementedError("stress needs a 3D periodic cell")

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        if not self.committee:
            return self._calculate_mean(properties)
        want_stress = "stress" in properties
        p = self.ace_model.predict_one(self.atoms, name=self._formula(),
                                       committee=self.committee, stress=want_stress)
        self.results["energy"] = p["energy"]
        self.results["free_energy"] = p["energy"]
        self.results["forces"] = np.asarray(p["forces"])
        if p.get("stress") is not None:
            self.results["stress"] = np.asarray(p["stress"])
        elif want_stress:
            from ase.calculators.calculator import PropertyNotImplementedError

            raise PropertyNotImplementedError("stress needs a 3D periodic cell")
        for k in ("energy_std", "forces_std", "rel_force_unc", "max_force_std", "max_rel_force_unc"):
            if k in p:
                self.results[k] = p[k]
