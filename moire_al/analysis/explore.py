"""Hyperactive exploration: Langevin MD biased by the committee's energy uncertainty.

The biased potential (hyperactive learning, seed 003's ref. [25]) is

    V(R) = E(R) − τ σ_E(R),   σ_E = std_k E_k (the committee's energy std),

so the biased force is F_bias = −∇V = F + τ ∇σ_E, with

    ∇σ_E = (1/(K σ_E)) Σ_k (E_k − Ē)(∇E_k − ∇Ē) = −(1/(K σ_E)) Σ_k (E_k − Ē)(F_k − F̄)

from the committee members' energies and forces (one basis evaluation). The bias
pulls the atoms *up* the uncertainty. (Issue 16 writes the force as "F − τ∇σ_E"; read
literally, with ∇ the gradient in positions, that force would lower σ_E. The sign
here is hyperactive learning's, V = E − τσ_E, and the tests check that it raises σ_E.)

τ is relative: τ = ramp(step) · τ_rel · ⟨|F|⟩ / ⟨|∇σ_E|⟩ with ⟨·⟩ running means of the
per-atom magnitudes over the run so far, so the bias force is on average τ_rel × the
mean force; ramp(step) = min(1, step / ramp_steps) switches it on smoothly.

The run (ASE Langevin through :func:`moire_al.analysis.md.run_md`) stops when the
max relative force uncertainty max_i σ_F,i / (|F_i| + ε) passes ``tolerance``; the
configuration at that step is returned with the uncertainty the committee reports
for it (from step 1 on: the start, usually a training structure, is never a find).
Physics only: no workflow engine here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
from ase.calculators.calculator import Calculator, all_changes

from moire_al.errors import MoireALError

#: atoms.info keys set on a find
FIND_KEYS = ("explore_max_rel_force_unc", "explore_max_force_std", "explore_energy_std", "explore_step",
             "explore_temperature_K", "explore_tau", "explore_seed", "explore_source")


def sigma_e_gradient(energies, forces) -> tuple[float, np.ndarray]:
    """σ_E = std_k E_k (eV) and ∇_R σ_E (N, 3) eV/Å from the committee members'
    energies (K,) and forces (K, N, 3) (forces = −∇E_k)."""
    E = np.asarray(energies, float)
    F = np.asarray(forces, float)
    K = len(E)
    dE = E - E.mean()
    sigma = float(np.sqrt(np.mean(dE ** 2)))
    if sigma <= 1e-14:
        return sigma, np.zeros(F.shape[1:])
    grad = -np.einsum("k,kna->na", dE, F - F.mean(axis=0)) / (K * sigma)
    return sigma, grad


class BiasedCalculator(Calculator):
    """ASE calculator V = E − τ σ_E of an ACE model with a committee.

    Results: ``energy`` (biased), ``forces`` (biased), ``unbiased_energy``,
    ``unbiased_forces``, ``energy_std``, ``sigma_e_gradient``, ``tau``,
    ``max_force_std``, ``max_rel_force_unc`` (of the unbiased prediction). ``step``
    (set by the explorer after every MD step) drives the ramp; ``tau_rel=0`` is the
    unbiased committee calculator (same evaluations, same results keys).
    """

    implemented_properties = ["energy", "free_energy", "forces", "energy_std", "max_force_std",
                              "max_rel_force_unc", "tau"]

    def __init__(self, model, tau_rel: float = 0.1, ramp_steps: int = 100, **kwargs):
        super().__init__(**kwargs)
        if getattr(model, "committee_", None) is None or len(model.committee_) < 2:
            raise MoireALError("biased exploration needs a model with a committee of at least 2 members")
        if not (tau_rel >= 0 and np.isfinite(tau_rel)) or ramp_steps < 0:
            raise MoireALError(f"tau_rel must be >= 0 and ramp_steps >= 0 (got {tau_rel}, {ramp_steps})")
        self.ace_model = model
        self.tau_rel = float(tau_rel)
        self.ramp_steps = int(ramp_steps)
        self.step = 0
        self._sum_f = self._sum_g = 0.0
        self._n = 0

    def ramp(self) -> float:
        return 1.0 if self.ramp_steps == 0 else min(1.0, self.step / self.ramp_steps)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        p = self.ace_model.predict_one(self.atoms, name=self.atoms.get_chemical_formula(), committee=True,
                                       stress=False, members=True)
        F = np.asarray(p["forces"], float)
        sigma, grad = sigma_e_gradient(p["energy_members"], p["forces_members"])
        self._sum_f += float(np.linalg.norm(F, axis=1).mean())
        self._sum_g += float(np.linalg.norm(grad, axis=1).mean())
        self._n += 1
        tau = 0.0
        if self.tau_rel > 0 and self._sum_g > 0:
            tau = self.ramp() * self.tau_rel * self._sum_f / self._sum_g     # running means: the 1/n cancel
        self.results.update(energy=p["energy"] - tau * sigma, free_energy=p["energy"] - tau * sigma,
                            forces=F + tau * grad, unbiased_energy=p["energy"], unbiased_forces=F,
                            energy_std=sigma, sigma_e_gradient=grad, tau=tau,
                            max_force_std=p["max_force_std"], max_rel_force_unc=p["max_rel_force_unc"])


@dataclass
class ExploreSettings:
    """Settings of one exploration (JSON-friendly)."""

    temperatures_K: tuple = (300.0,)
    steps: int = 1000
    tau_rel: float = 0.1
    ramp_steps: int = 100
    tolerance: float = 0.3          # max relative force uncertainty that stops a run (dimensionless)
    seed: int = 0
    timestep_fs: float = 1.0
    friction_per_fs: float = 0.01

    def __post_init__(self):
        self.temperatures_K = tuple(float(t) for t in self.temperatures_K)

    def validate(self) -> "ExploreSettings":
        if not self.temperatures_K or min(self.temperatures_K) <= 0:
            raise MoireALError("explore: temperatures must be positive kelvin")
        if self.steps < 1 or not (self.tolerance > 0):
            raise MoireALError("explore: steps must be >= 1 and the tolerance > 0")
        return self

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["temperatures_K"] = list(self.temperatures_K)
        return d


@dataclass
class ExploreRun:
    """One biased run from one start at one temperature; ``structure`` is the find
    (ase.Atoms, carrying the ``explore_*`` info keys) when the trigger fired, else None."""

    source: str                       # structure hash of the start
    temperature_K: float
    seed: int
    triggered: bool
    step: int | None
    reason: str | None                # "tolerance" | an MD instability reason | None (ran to the end)
    message: str | None
    max_rel_force_unc: float | None   # at the returned configuration
    max_force_std: float | None
    energy_std: float | None
    energy_std_trace: list = field(default_factory=list)       # per MD step, eV
    max_force_std_trace: list = field(default_factory=list)    # per MD step, eV/Å
    max_rel_force_unc_trace: list = field(default_factory=list)
    tau_trace: list = field(default_factory=list)
    structure: object = None
    final: object = None              # the last configuration of the run (ase.Atoms), a find or not

    def as_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("structure", "final")}
        return d


class _Recorder:
    """Observer: drives the calculator's ramp, records the traces, fires the trigger."""

    def __init__(self, calc: BiasedCalculator, tolerance: float):
        self.calc, self.tolerance = calc, tolerance
        self.sig_e, self.sig_f, self.rel, self.tau = [], [], [], []

    def __call__(self, step, atoms):
        r = self.calc.results
        self.sig_e.append(float(r["energy_std"]))
        self.sig_f.append(float(r["max_force_std"]))
        self.rel.append(float(r["max_rel_force_unc"]))
        self.tau.append(float(r["tau"]))
        self.calc.step = step + 1
        if step > 0 and r["max_rel_force_unc"] > self.tolerance:    # the start itself is not a find
            return (f"tolerance: max relative force uncertainty {r['max_rel_force_unc']:.3f} above "
                    f"{self.tolerance:g} at step {step}")
        return None


def _unlabelled(atoms):
    """A copy of an MD configuration without momenta, calculator or the start's labels."""
    out = atoms.copy()
    out.calc = None
    out.set_momenta(None)
    out.wrap()
    for k in [k for k in out.info if k.startswith("REF_")] + ["label_key"]:
        out.info.pop(k, None)
    out.arrays.pop("REF_forces", None)
    return out


def explore_one(model, atoms, temperature_K: float, settings: ExploreSettings | None = None,
                seed: int | None = None) -> ExploreRun:
    """One biased Langevin run of ``atoms`` (not modified) at ``temperature_K``."""
    from moire_al.analysis.md import MDSettings, run_md
    from moire_al.conventions import structure_hash

    s = (settings or ExploreSettings()).validate()
    seed = s.seed if seed is None else int(seed)
    calc = BiasedCalculator(model, s.tau_rel, s.ramp_steps)
    rec = _Recorder(calc, s.tolerance)
    start = atoms.copy()
    start.calc = None
    source = structure_hash(start)
    # the step-0 evaluation happens inside run_md; the recorder sees every step after it
    run = run_md(start, calc, MDSettings(temperature_K=temperature_K, steps=s.steps, seed=seed,
                                         timestep_fs=s.timestep_fs, friction_per_fs=s.friction_per_fs,
                                         sample_every=0, fix_com=True),
                 calc_name="biased-committee", observers=[rec])
    v = run.verdict
    triggered = (not v.stable) and v.reason == "observer" and str(v.message).startswith("tolerance")
    out = ExploreRun(source=source, temperature_K=float(temperature_K), seed=seed, triggered=triggered,
                     step=v.step, reason=("tolerance" if triggered else v.reason), message=v.message,
                     max_rel_force_unc=None, max_force_std=None, energy_std=None,
                     energy_std_trace=rec.sig_e, max_force_std_trace=rec.sig_f,
                     max_rel_force_unc_trace=rec.rel, tau_trace=rec.tau)
    out.final = _unlabelled(run.final)
    if triggered:
        find = _unlabelled(run.final)
        out.max_rel_force_unc, out.max_force_std, out.energy_std = rec.rel[-1], rec.sig_f[-1], rec.sig_e[-1]
        find.info.update(explore_max_rel_force_unc=out.max_rel_force_unc, explore_max_force_std=out.max_force_std,
                         explore_energy_std=out.energy_std, explore_step=int(v.step),
                         explore_temperature_K=float(temperature_K), explore_tau=rec.tau[-1],
                         explore_seed=seed, explore_source=source, generator="explore")
        out.structure = find
    return out


def explore(model, structures, settings: ExploreSettings | None = None) -> list[ExploreRun]:
    """:func:`explore_one` for every start structure at every temperature (seed
    ``settings.seed + index``); the finds are ``[r.structure for r in runs if r.triggered]``."""
    s = (settings or ExploreSettings()).validate()
    runs = []
    for i, at in enumerate(structures):
        for T in s.temperatures_K:
            runs.append(explore_one(model, at, T, s, seed=s.seed + i))
    return runs
