"""Molecular dynamics with any ASE calculator: Langevin or NVE, a stability verdict.

The driver (:func:`run_md`) moves the atoms with ASE's integrators (``Langevin``,
``VelocityVerlet``) and records per step the temperature, potential and total
energy and, when the calculator returns a stress with its forces, the stress and
pressure (kinetic part included). It keeps, every ``sample_every`` steps,
positions (unwrapped: ASE's integrators never wrap) and velocities for the
correlation analyses of :mod:`moire_al.analysis.dynamics`, every ``heat_every`` steps
the heat current (:func:`heat_current`), and writes an ASE trajectory every
``traj_every`` steps to a file (never into a database document).

Defaults are seed 003's: Langevin, 1 fs, friction 0.01 fs⁻¹ (ASE's friction in
inverse time; "0.01" in the seed, whose unit it does not state). The centre of mass
is held with ASE's ``FixCom`` constraint (3 degrees of freedom removed, which
ASE's temperature accounts for); pinned atoms (``pin``) use ``FixAtoms`` instead.

Stability: the run stops at the first step where
- the temperature exceeds ``max_temperature_factor`` × the target;
- the total energy jumps by more than ``max_energy_jump`` eV/atom in one step;
- two atoms come closer than ``min_distance`` Å;
- the committee's max σ_F exceeds ``sigma_f_limit`` (eV/Å) — read from the
  calculator's results (``max_force_std``) when it provides one, else from the
  ``uncertainty`` callable every ``uncertainty_every`` steps;
- energy or forces are not finite, or the calculator raises a moire-al error (an
  ACE model that has collapsed two atoms, LAMMPS losing atoms);
- an observer returns a reason (a string).
:class:`Verdict` says which, at which step, with a message.

Extension points (nothing here changes for them): a force bias such as
F − τ∇σ_E from a committee is a *wrapping calculator* passed as ``calc`` (the
driver only reads energy, forces, and the optional ``stress`` / ``max_force_std`` of
its results); per-step hooks are ``observers``: ``f(step, atoms) -> str | None``.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field

import numpy as np

from moire_al.analysis.common import EV_PER_A3_TO_GPA, calc_label, layers_of
from moire_al.errors import MoireALError

ENSEMBLES = ("langevin", "nve")
KB = 8.617333262e-5  # eV/K


@dataclass
class MDSettings:
    """Settings of one MD run (JSON-friendly through :meth:`as_dict`)."""

    temperature_K: float = 300.0
    steps: int = 1000
    ensemble: str = "langevin"
    timestep_fs: float = 1.0
    friction_per_fs: float = 0.01
    seed: int = 0
    init_temperature_K: float | None = None   # velocities drawn at this T (default: target)
    sample_every: int = 1                     # positions/velocities kept for MSD, VACF (0: none)
    heat_every: int = 0                       # heat current every n steps (0: none)
    traj_every: int = 0                       # trajectory frames every n steps (0: none)
    pin: tuple = ()                           # atom indices held fixed
    fix_com: bool = True
    max_temperature_factor: float = 3.0
    max_energy_jump: float = 0.1              # eV/atom between two steps
    min_distance: float = 0.9                 # Å
    sigma_f_limit: float | None = None        # eV/Å
    uncertainty_every: int = 10

    def __post_init__(self):
        self.pin = tuple(int(i) for i in self.pin)
        self.ensemble = str(self.ensemble).lower()

    def validate(self, n_atoms: int | None = None) -> "MDSettings":
        if self.ensemble not in ENSEMBLES:
            raise MoireALError(f"ensemble {self.ensemble!r}: expected one of {', '.join(ENSEMBLES)}")
        if not (self.temperature_K > 0 and math.isfinite(self.temperature_K)):
            raise MoireALError(f"temperature must be a positive number of kelvin, got {self.temperature_K}")
        if self.steps < 1 or self.timestep_fs <= 0 or self.friction_per_fs < 0:
            raise MoireALError("steps must be >= 1, the time step > 0 fs and the friction >= 0 per fs")
        if min(self.sample_every, self.heat_every, self.traj_every) < 0 or self.uncertainty_every < 1:
            raise MoireALError("sample/heat/trajectory intervals must be >= 0 (0: off)")
        if n_atoms is not None and any(i < 0 or i >= n_atoms for i in self.pin):
            raise MoireALError(f"pinned atom index out of range 0..{n_atoms - 1}")
        return self

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["pin"] = list(self.pin)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "MDSettings":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise MoireALError(f"unknown MD setting(s): {', '.join(sorted(unknown))}")
        return cls(**d)


@dataclass
class Verdict:
    """Whether a run stayed stable; if not, the step and reason it stopped."""

    stable: bool = True
    step: int | None = None
    reason: str | None = None     # temperature | energy_jump | min_distance | sigma_f | non_finite
    message: str | None = None    # | calculator | an observer's reason

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class MDRun:
    """Everything one run produced (numpy arrays; :meth:`summary` is the JSON part).

    Units: time fs, energies eV, temperature K, stress eV/Å³ (ASE sign, Voigt),
    pressure GPa, positions Å, velocities Å/fs, heat current eV·Å/fs.
    """

    settings: MDSettings
    calc_name: str
    numbers: np.ndarray
    masses: np.ndarray
    layers: np.ndarray
    cell: np.ndarray
    time_fs: np.ndarray
    temperature_K: np.ndarray
    epot: np.ndarray
    etot: np.ndarray
    stress: np.ndarray | None
    max_force_std: np.ndarray | None
    sample_time_fs: np.ndarray
    positions: np.ndarray
    velocities: np.ndarray
    heat_time_fs: np.ndarray
    heat_current: np.ndarray
    verdict: Verdict
    final: object = None            # ase.Atoms at the last completed step
    wall_time: float = 0.0
    trajectory: str | None = None
    extras: dict = field(default_factory=dict)

    @property
    def n_atoms(self) -> int:
        return len(self.numbers)

    @property
    def steps_done(self) -> int:
        return int(round(self.time_fs[-1] / self.settings.timestep_fs)) if len(self.time_fs) else 0

    @property
    def pressure_GPa(self) -> np.ndarray | None:
        if self.stress is None:
            return None
        return -self.stress[:, :3].mean(axis=1) * EV_PER_A3_TO_GPA

    def ns_per_day(self) -> float | None:
        if self.wall_time <= 0 or self.steps_done == 0:
            return None
        return self.steps_done * self.settings.timestep_fs * 1e-6 / self.wall_time * 86400

    def trace_summary(self, discard: float = 0.2) -> dict:
        """Means over the run after the first ``discard`` fraction; the total
        energy's drift (linear fit, eV/atom/ps) and largest excursion (eV/atom)."""
        n = self.n_atoms
        k0 = int(discard * len(self.time_fs))
        t, T, ep, et = (x[k0:] for x in (self.time_fs, self.temperature_K, self.epot, self.etot))
        out = {"discarded_fraction": discard, "T_mean": float(T.mean()), "T_std": float(T.std()),
               "epot_mean_eV_atom": float(ep.mean() / n), "etot_mean_eV_atom": float(et.mean() / n),
               "etot_max_deviation_eV_atom": float(np.abs(self.etot - self.etot[0]).max() / n),
               "etot_drift_eV_atom_ps": (float(np.polyfit(t / 1000, et / n, 1)[0]) if len(t) > 2 else None)}
        p = self.pressure_GPa
        out["pressure_GPa_mean"] = float(p[k0:].mean()) if p is not None else None
        if self.max_force_std is not None:
            out["max_force_std_max"] = float(np.nanmax(self.max_force_std))
        return out

    def summary(self) -> dict:
        return {"calc_name": self.calc_name, "n_atoms": self.n_atoms, "settings": self.settings.as_dict(),
                **self.verdict.as_dict(), "stop_step": self.verdict.step, "steps_done": self.steps_done,
                "simulated_ps": self.steps_done * self.settings.timestep_fs / 1000,
                "wall_time": self.wall_time, "ns_per_day": self.ns_per_day(),
                "trace": self.trace_summary(), "trajectory": self.trajectory}

    def save_traces(self, path) -> str:
        """The per-step traces as a ``.npz`` (the positions and velocities stay out)."""
        arrays = {"time_fs": self.time_fs, "temperature_K": self.temperature_K, "epot": self.epot,
                  "etot": self.etot, "heat_time_fs": self.heat_time_fs, "heat_current": self.heat_current}
        if self.stress is not None:
            arrays["stress"] = self.stress
        np.savez_compressed(path, **arrays)
        return str(path)


# ------------------------------------------------------------------ heat current
def heat_current(atoms, calc=None) -> np.ndarray:
    """Heat current J = Σ_i ε_i v_i + Σ_i W_i v_i (eV·Å/fs) of a site-energy potential.

    ε_i: site energy (per-atom potential energy, its per-species mean over the frame
    removed, so J does not depend on the energy zero) plus kinetic energy; W_i:
    per-atom virial ((3, 3), eV) with Σ_i W_i = −V σ, from the calculator's
    ``energies`` and ``virials`` (the ACE kernel, the reference potential). With
    r_ij = x_j − x_i and e_i the site energy of atom i,
    W_j = −Σ_i r_ij ⊗ ∂e_i/∂r_ij, so the second term is −Σ_ij r_ij (∂e_i/∂r_ij · v_j).
    """
    from ase import units
    from ase.calculators.calculator import PropertyNotImplementedError

    calc = calc or atoms.calc
    try:
        e = np.asarray(calc.get_property("energies", atoms), float).copy()
        W = np.asarray(calc.get_property("virials", atoms), float)
    except PropertyNotImplementedError as exc:
        raise MoireALError(f"heat current: calculator {calc_label(calc)} gives no per-atom energies and "
                           f"virials ({exc})") from None
    v = atoms.get_velocities() * units.fs          # Å/fs
    m = atoms.get_masses()
    for z in np.unique(atoms.numbers):
        sel = atoms.numbers == z
        e[sel] -= e[sel].mean()
    ke = 0.5 * m * (atoms.get_velocities() ** 2).sum(axis=1)   # eV (ASE units)
    return (e + ke) @ v + np.einsum("nab,nb->a", W, v)


# ------------------------------------------------------------------ the driver
class _Stop(Exception):
    def __init__(self, reason, message):
        super().__init__(message)
        self.reason, self.message = reason, message


class _MinDistance:
    """Closest pair, rechecked only when it could have dropped below the limit:
    a pair at ≥ d at the last check cannot be closer than d − 2·(largest move)."""

    def __init__(self, limit: float):
        self.limit = limit
        self.probe = limit + 0.5
        self.ref = None
        self.dmin = None

    def check(self, atoms):
        if self.ref is not None:
            moved = np.sqrt(((atoms.positions - self.ref) ** 2).sum(axis=1)).max()
            if self.dmin - 2 * moved > self.limit:
                return None
        from ase.neighborlist import neighbor_list

        i, j, d = neighbor_list("ijd", atoms, self.probe)
        self.ref = atoms.positions.copy()
        self.dmin = float(d.min()) if len(d) else self.probe
        if self.dmin < self.limit:
            k = int(np.argmin(d))
            return f"atoms {i[k]} and {j[k]} are {d[k]:.3f} Å apart (limit {self.limit} Å)"
        return None


def _constraints(atoms, settings):
    from ase.constraints import FixAtoms, FixCom

    if settings.pin:
        return [FixAtoms(indices=list(settings.pin))]
    return [FixCom()] if settings.fix_com else []


def _integrator(atoms, settings):
    from ase import units

    dt = settings.timestep_fs * units.fs
    if settings.ensemble == "nve":
        from ase.md.verlet import VelocityVerlet

        return VelocityVerlet(atoms, dt)
    from ase.md.langevin import Langevin

    return Langevin(atoms, dt, temperature_K=settings.temperature_K,
                    friction=settings.friction_per_fs / units.fs, fixcm=False,
                    rng=np.random.default_rng(settings.seed + 1))


def run_md(atoms, calc, settings: MDSettings | None = None, calc_name: str | None = None,
           trajectory: str | None = None, observers=(), uncertainty=None, velocities=None,
           **overrides) -> MDRun:
    """Run MD of ``atoms`` (not modified) with ``calc``; return an :class:`MDRun`.

    ``settings`` (or keyword ``overrides`` of its fields); ``trajectory``: path of an
    ASE ``.traj`` written every ``traj_every`` steps; ``observers``: callables
    ``f(step, atoms) -> str | None`` after every step (a string stops the run as
    unstable); ``uncertainty``: ``f(atoms) -> max σ_F`` (eV/Å), checked every
    ``uncertainty_every`` steps against ``sigma_f_limit``; ``velocities`` (Å/fs):
    start from these (e.g. the end of an equilibration) instead of Maxwell–Boltzmann.
    """
    from ase import units
    from ase.calculators.calculator import PropertyNotImplementedError
    from ase.md.velocitydistribution import thermalize_momenta

    settings = dataclasses.replace(settings or MDSettings(), **overrides)
    settings.validate(len(atoms))
    work = atoms.copy()
    work.set_constraint()
    work.calc = calc
    n = len(work)
    masses = work.get_masses()
    if velocities is not None:
        work.set_velocities(np.asarray(velocities, float) / units.fs)
    else:
        thermalize_momenta(work, settings.init_temperature_K or settings.temperature_K,
                           rng=np.random.default_rng(settings.seed))
    if settings.fix_com and not settings.pin:
        p = work.get_momenta()
        work.set_momenta(p - masses[:, None] * p.sum(axis=0) / masses.sum())
    work.set_constraint(_constraints(work, settings))
    if settings.pin:
        p = work.get_momenta()
        p[list(settings.pin)] = 0.0
        work.set_momenta(p, apply_constraint=False)
    dyn = _integrator(work, settings)
    volume = work.get_volume() if work.pbc.all() else None

    rec = {k: [] for k in ("t", "T", "ep", "et", "s", "sig")}
    samples, heats = ([], [], []), ([], [])
    traj = None
    if trajectory and settings.traj_every:
        from ase.io import Trajectory

        traj = Trajectory(trajectory, "w")
    close = _MinDistance(settings.min_distance)
    verdict = Verdict()
    target = settings.temperature_K
    have_stress = True
    last_et = None
    t0 = time.perf_counter()
    step = 0

    def observe(step):
        nonlocal have_stress, last_et
        ep = work.get_potential_energy()
        f = work.calc.results.get("forces")
        if not (np.isfinite(ep) and f is not None and np.isfinite(f).all()):
            raise _Stop("non_finite", f"non-finite energy or forces at step {step}")
        ek = work.get_kinetic_energy()
        T = work.get_temperature()
        et = ep + ek
        rec["t"].append(step * settings.timestep_fs)
        rec["T"].append(T)
        rec["ep"].append(ep)
        rec["et"].append(et)
        s = work.calc.results.get("stress") if have_stress and volume else None
        if s is None:
            have_stress = False
        else:
            v = work.get_velocities()
            kin = np.einsum("i,ia,ib->ab", masses, v, v) / volume
            rec["s"].append(np.asarray(s, float) - kin[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]])
        sig = work.calc.results.get("max_force_std")
        if sig is None and uncertainty is not None and step % settings.uncertainty_every == 0:
            sig = float(uncertainty(work))
        rec["sig"].append(np.nan if sig is None else float(sig))
        if settings.sample_every and step % settings.sample_every == 0:
            samples[0].append(step * settings.timestep_fs)
            samples[1].append(work.positions.copy())
            samples[2].append(work.get_velocities() * units.fs)
        if settings.heat_every and step % settings.heat_every == 0:
            heats[0].append(step * settings.timestep_fs)
            heats[1].append(heat_current(work))
        if traj is not None and step % settings.traj_every == 0:
            traj.write(work)
        # the verdict
        if T > settings.max_temperature_factor * target:
            raise _Stop("temperature", f"temperature {T:.0f} K above {settings.max_temperature_factor:g} x "
                                       f"the target {target:g} K")
        if last_et is not None and abs(et - last_et) / n > settings.max_energy_jump:
            raise _Stop("energy_jump", f"total energy jumped by {(et - last_et) / n:+.3f} eV/atom in one step")
        last_et = et
        why = close.check(work)
        if why:
            raise _Stop("min_distance", why)
        if settings.sigma_f_limit is not None and sig is not None and sig > settings.sigma_f_limit:
            raise _Stop("sigma_f", f"committee max force std {sig:.3f} eV/Å above the limit "
                                   f"{settings.sigma_f_limit:g} eV/Å")
        for obs in observers:
            why = obs(step, work)
            if why:
                raise _Stop("observer", str(why))

    if settings.heat_every:
        heat_current(work)    # a calculator without per-atom virials fails here, not as a verdict
    last_good = None
    try:
        for _ in dyn.irun(settings.steps):
            step = dyn.nsteps
            observe(step)
            last_good = step
    except _Stop as stop:
        verdict = Verdict(False, step, stop.reason, stop.message)
    except (MoireALError, PropertyNotImplementedError) as exc:
        if isinstance(exc, PropertyNotImplementedError):
            raise MoireALError(f"MD needs energy and forces from the calculator: {exc}") from None
        verdict = Verdict(False, dyn.nsteps + (1 if last_good is not None else 0), "calculator", str(exc))
    finally:
        if traj is not None:
            traj.close()
    wall = time.perf_counter() - t0
    final = work.copy()
    final.set_constraint()
    final.calc = None
    nt = len(rec["t"])
    stress = np.array(rec["s"]) if have_stress and len(rec["s"]) == nt and nt else None
    sig = np.array(rec["sig"]) if np.isfinite(rec["sig"]).any() else None
    return MDRun(settings=settings, calc_name=calc_label(calc, calc_name), numbers=work.numbers.copy(),
                 masses=masses, layers=layers_of(work), cell=work.cell.array.copy(),
                 time_fs=np.array(rec["t"]), temperature_K=np.array(rec["T"]), epot=np.array(rec["ep"]),
                 etot=np.array(rec["et"]), stress=stress, max_force_std=sig,
                 sample_time_fs=np.array(samples[0]), positions=np.array(samples[1]).reshape(-1, n, 3),
                 velocities=np.array(samples[2]).reshape(-1, n, 3), heat_time_fs=np.array(heats[0]),
                 heat_current=np.array(heats[1]).reshape(-1, 3), verdict=verdict, final=final,
                 wall_time=wall, trajectory=trajectory if traj is not None else None,
                 extras={"volume": volume})


# ------------------------------------------------------------------ the analyses of a run
def committee_uncertainty(calc):
    """``f(atoms) -> max σ_F`` (eV/Å) from the committee of an ACE model calculator
    (``calc.ace_model``), or None when the calculator has no committee."""
    model = getattr(calc, "ace_model", None)
    if model is None or getattr(model, "committee_", None) is None or not len(model.committee_):
        return None
    return lambda a: float(model.predict_one(a, committee=True, stress=False, d3=False)["max_force_std"])


def heat_volume(atoms) -> tuple[float, str]:
    """(V in Å³, how) for Green–Kubo: a layered slab in vacuum counts n_layers × 3.35 Å
    of thickness (the usual convention); a bulk cell its own volume."""
    from moire_al.analysis.common import LAYER_THICKNESS
    from moire_al.labelling.reference import VACUUM_GAP

    cell = atoms.cell.array
    area = float(np.linalg.norm(np.cross(cell[0], cell[1])))
    height = abs(np.linalg.det(cell)) / area if area > 0 else 0.0
    z = atoms.positions[:, 2]
    n_layers = len(np.unique(layers_of(atoms)))
    if height - np.ptp(z) >= VACUUM_GAP:
        return area * n_layers * LAYER_THICKNESS, f"slab: area x {n_layers} x {LAYER_THICKNESS} Å"
    return float(abs(np.linalg.det(cell))), "cell volume"


def _decimate(x, n: int = 400):
    x = np.asarray(x)
    if len(x) <= n:
        return x
    return x[np.unique(np.linspace(0, len(x) - 1, n).round().astype(int))]


def averaged_structure(run: MDRun, start, discard: float = 0.2):
    """``start`` with positions averaged over the kept samples (after ``discard``)."""
    k0 = int(discard * len(run.positions))
    avg = start.copy()
    avg.calc = None
    avg.set_constraint()
    avg.positions = run.positions[k0:].mean(axis=0)
    avg.wrap()
    avg.info["averaged_over_ps"] = float((run.sample_time_fs[-1] - run.sample_time_fs[k0]) / 1000)
    return avg


def thermal_conductivity(atoms, calc, temperature: float, runs: int = 3, equil_steps: int = 1000,
                         steps: int = 5000, heat_every: int = 2, max_lag_fs: float | None = None,
                         seed: int = 0, calc_name: str | None = None, **md_options) -> dict:
    """Green–Kubo κ(T): ``runs`` independent runs, each a Langevin equilibration of
    ``equil_steps`` (its own seed) then NVE for ``steps`` with the heat current every
    ``heat_every`` steps; κ with the standard error over the runs. Components xx,
    yy, zz; ``inplane`` (xx + yy)/2, ``cross_plane`` zz (W/(m·K))."""
    from moire_al.analysis import dynamics

    volume, how = heat_volume(atoms)
    per_run, verdicts = [], []
    for r in range(runs):
        eq = run_md(atoms, calc, MDSettings(temperature_K=temperature, steps=equil_steps, seed=seed + 100 * r,
                                            sample_every=0, **md_options), calc_name)
        verdicts.append(eq.verdict.as_dict())
        if not eq.verdict.stable:
            break
        prod = run_md(eq.final, calc, MDSettings(temperature_K=temperature, steps=steps, ensemble="nve",
                                                 sample_every=0, heat_every=heat_every, **md_options),
                      calc_name, velocities=eq.final.get_velocities() * _fs())
        verdicts.append(prod.verdict.as_dict())
        if not prod.verdict.stable:
            break
        per_run.append(dynamics.green_kubo(prod.heat_time_fs, prod.heat_current, volume,
                                           float(prod.temperature_K.mean()), max_lag_fs))
    out = {"temperature_K": temperature, "volume_A3": volume, "volume_convention": how, "runs": runs,
           "equil_steps": equil_steps, "steps": steps, "heat_every": heat_every,
           "stable": len(per_run) == runs, "verdicts": verdicts}
    if per_run:
        comb = dynamics.combine_kappa(per_run)
        out.update(kappa=comb["kappa"], n_runs=comb["n_runs"], plateau_fs=per_run[0]["plateau_fs"],
                   lag_fs=comb["lag_fs"], running_mean=comb["running_mean"], running_err=comb["running_err"])
    return out


def _fs():
    from ase import units

    return units.fs


def md_analysis(atoms, calc, calc_name: str | None = None, temperature: float = 300.0,
                steps: int = 1000, ensemble: str = "langevin", outdir: str | None = None,
                relax_first: bool = False, pin_aa: bool = False, phonon_dos: bool = False,
                phonon_supercell=(1, 1, 1), kappa_runs: int = 0, kappa_steps: int = 5000,
                kappa_equil_steps: int = 1000, discard: float = 0.2, uncertainty=None,
                **settings) -> dict:
    """MD of ``atoms`` with ``calc`` and the analyses of the run (JSON-friendly dict).

    ``settings``: fields of :class:`MDSettings` (timestep_fs, friction_per_fs, seed,
    sample_every, traj_every, sigma_f_limit, ...). ``relax_first``: relax (1e-3 eV/Å)
    before the run. ``pin_aa``: hold the AA-node atoms (seed 000's finite-temperature
    averages). ``phonon_dos``: the phonopy DOS of the same calculator (relaxed start,
    ``phonon_supercell``) under the vibrational DOS. ``kappa_runs``: Green–Kubo κ at
    the same temperature from that many independent runs. ``sigma_f_limit`` with an
    ACE model: its committee is evaluated every ``uncertainty_every`` steps.

    Result keys: ``analysis`` ("md"), ``calc_name``, ``material``, ``n_atoms``,
    ``settings``, ``stable``, ``stop_step``, ``reason``, ``message``, ``steps_done``,
    ``wall_time``, ``ns_per_day``, ``trace`` (summary), ``diffusion`` (D per layer
    and direction, Å²/ps, fit window), ``vacf``, ``vdos``, ``phonon_dos``,
    ``averaged`` (moiré analysis of the time-averaged structure), ``kappa``,
    ``files``, ``plots``.
    """
    import os

    from moire_al.analysis import dynamics
    from moire_al.analysis.common import jsonable, material_of

    material = material_of(atoms)
    name = calc_label(calc, calc_name)
    start, rr = atoms, None
    if relax_first:
        from moire_al.analysis.relax import relax

        start, rr = relax(atoms, calc, fmax=1e-3, steps=1000, calc_name=name)
    n_layers = len(np.unique(layers_of(start)))
    if pin_aa:
        from moire_al.analysis.moire import aa_node_atoms

        if n_layers < 2:
            raise MoireALError("pinning AA nodes needs a multilayer")
        settings["pin"] = tuple(aa_node_atoms(start))
    if settings.get("sigma_f_limit") is not None and uncertainty is None:
        uncertainty = committee_uncertainty(calc)
    md_settings = MDSettings(temperature_K=temperature, steps=steps, ensemble=ensemble, **settings)
    files, plots_out = {}, {}
    if outdir:
        os.makedirs(outdir, exist_ok=True)
    traj = os.path.join(outdir, "md.traj") if outdir and md_settings.traj_every else None
    run = run_md(start, calc, md_settings, name, trajectory=traj, uncertainty=uncertainty)
    res = {"analysis": "md", "material": material, **run.summary(), "relax": rr,
           "diffusion": None, "vacf": None, "vdos": None, "phonon_dos": None, "averaged": None,
           "kappa": None}
    if run.trajectory:
        files["trajectory"] = run.trajectory
    if outdir:
        files["traces"] = run.save_traces(os.path.join(outdir, "md_traces.npz"))
        from moire_al.analysis import plots

        plots_out["traces"] = plots.plot_md_traces(run, os.path.join(outdir, "md_traces.png"))
    k0 = int(discard * len(run.sample_time_fs))
    enough = run.verdict.stable and len(run.sample_time_fs) - k0 >= 32
    if enough:
        t, x, v = run.sample_time_fs[k0:], run.positions[k0:], run.velocities[k0:]
        dif = dynamics.diffusion(t, x, run.masses, run.layers)
        vac = dynamics.vacf(t, v, run.masses)
        vd = dynamics.vdos(vac)
        res["diffusion"] = {"D": dif["D"], "fit_window_ps": dif["fit_window_ps"], "n_blocks": dif["n_blocks"],
                            "msd_final_A2": dif["msd_final"], "units": "Å²/ps (1 Å²/ps = 1e-4 cm²/s)",
                            "lag_ps": _decimate(dif["lag_ps"]),
                            "msd_all": {k: _decimate(c) for k, c in dif["msd"]["all"].items()}}
        res["vacf"] = {"time_fs": _decimate(vac["time_fs"]), "vacf": _decimate(vac["vacf"]),
                       "vacf_inplane": _decimate(vac["vacf_inplane"]),
                       "vacf_outofplane": _decimate(vac["vacf_outofplane"]),
                       "vacf0": float(vac["vacf"][0]), "mv2_eV": vac["mv2_eV"],
                       "mv2_components_eV": vac["mv2_components_eV"],
                       "equipartition_3kT_eV":
                           3 * KB * float(run.temperature_K[int(discard * len(run.temperature_K)):].mean())}
        res["vdos"] = {"frequency_THz": _decimate(vd["frequency_THz"], 600), "dos": _decimate(vd["dos"], 600),
                       "mean_frequency_THz": vd["mean_frequency_THz"], "resolution_THz": vd["resolution_THz"]}
        if phonon_dos:
            from moire_al.analysis.phonons import phonon_dos as _pdos

            pd = _pdos(start, calc, name, supercell=tuple(phonon_supercell), relax_first=not relax_first)
            pd["overlap_with_vdos"] = dynamics.dos_overlap(vd["frequency_THz"], vd["dos"],
                                                           np.array(pd["frequency_THz"]), np.array(pd["dos"]))
            res["phonon_dos"] = pd
        if outdir:
            from moire_al.analysis import plots

            plots_out["msd"] = plots.plot_msd(dif, os.path.join(outdir, "md_msd.png"))
            plots_out["vacf"] = plots.plot_vacf({f"{temperature:g} K": vac}, os.path.join(outdir, "md_vacf.png"))
            plots_out["vdos"] = plots.plot_vdos(vd, res["phonon_dos"], os.path.join(outdir, "md_vdos.png"))
        if n_layers >= 2:
            from moire_al.analysis.moire import moire_analysis
            from moire_al.structures import write_structures

            avg = averaged_structure(run, start, discard)
            res["averaged"] = moire_analysis(avg, reference=start, calc_name=name, plot_dir=outdir,
                                             prefix="md_averaged_moire")
            res["averaged"]["averaged_over_ps"] = avg.info["averaged_over_ps"]
            res["averaged"]["pinned_atoms"] = list(md_settings.pin)
            plots_out.update({f"averaged_{k}": p for k, p in res["averaged"].pop("plots", {}).items()})
            if outdir:
                files["averaged_structure"] = os.path.join(outdir, "averaged.xyz")
                write_structures(files["averaged_structure"], [avg])
    if kappa_runs and run.verdict.stable:
        kap = thermal_conductivity(start, calc, temperature, runs=kappa_runs, equil_steps=kappa_equil_steps,
                                   steps=kappa_steps, seed=md_settings.seed, calc_name=name,
                                   timestep_fs=md_settings.timestep_fs, friction_per_fs=md_settings.friction_per_fs)
        if outdir and kap.get("kappa"):
            from moire_al.analysis import plots

            plots_out["kappa"] = plots.plot_kappa(kap, os.path.join(outdir, "md_kappa.png"))
        for k in ("lag_fs", "running_mean", "running_err"):
            if k in kap:
                kap[k] = _decimate(kap[k])
        res["kappa"] = kap
    res["files"], res["plots"] = files, plots_out
    return jsonable(res)


def temperature_series(results) -> dict:
    """``points`` (per :func:`md_analysis` result, by temperature: temperature_K, stable,
    stop_step, reason, D_inplane(_error), D_outofplane(_error), kappa_inplane(_error),
    kappa_cross_plane(_error) where present), the ``arrhenius`` fit of the in-plane D,
    and ``stable`` (all runs)."""
    from moire_al.analysis import dynamics

    points = []
    for r in sorted(results, key=lambda r: r["settings"]["temperature_K"]):
        p = {"temperature_K": float(r["settings"]["temperature_K"]), "stable": r["stable"],
             "stop_step": r["stop_step"], "reason": r["reason"]}
        if r.get("diffusion"):
            D = r["diffusion"]["D"]["all"]
            p.update(D_inplane=D["inplane"]["value"], D_inplane_error=D["inplane"]["error"],
                     D_outofplane=D["outofplane"]["value"], D_outofplane_error=D["outofplane"]["error"])
        if r.get("kappa") and r["kappa"].get("kappa"):
            k = r["kappa"]["kappa"]
            p.update(kappa_inplane=k["inplane"]["value"], kappa_inplane_error=k["inplane"]["error"],
                     kappa_cross_plane=k["cross_plane"]["value"],
                     kappa_cross_plane_error=k["cross_plane"]["error"])
        points.append(p)
    ok = [p for p in points if "D_inplane" in p]
    arr = dynamics.arrhenius([p["temperature_K"] for p in ok], [p["D_inplane"] for p in ok],
                             [p["D_inplane_error"] for p in ok])
    return {"points": points, "arrhenius": arr, "stable": all(p["stable"] for p in points)}


def md_temperatures(atoms, calc, temperatures, calc_name: str | None = None, outdir: str | None = None,
                    **options) -> dict:
    """:func:`md_analysis` at each temperature (own sub-directory ``T_<T>K``), D(T)
    and its Arrhenius fit (in-plane D of all atoms), the VACFs on one semi-log plot.
    Result keys: ``analysis`` ("md_temperatures"), ``calc_name``, ``points`` (per T:
    temperature_K, stable, stop_step, D_inplane, D_inplane_error, D_outofplane,
    D_outofplane_error, kappa_inplane, ...), ``arrhenius``, ``runs`` (each run's
    result), ``plots``."""
    import os

    from moire_al.analysis.common import jsonable

    name = calc_label(calc, calc_name)
    runs = {}
    for T in temperatures:
        sub = os.path.join(outdir, f"T_{float(T):g}K") if outdir else None
        r = md_analysis(atoms, calc, name, temperature=float(T), outdir=sub, **options)
        if sub:
            from moire_al.analysis.common import write_json

            write_json(r, os.path.join(sub, "md.json"))
        runs[f"{float(T):g}"] = r
    res = {"analysis": "md_temperatures", "calc_name": name, **temperature_series(runs.values()),
           "runs": runs, "plots": {}}
    points, arr = res["points"], res["arrhenius"]
    if outdir:
        from moire_al.analysis import plots

        res["plots"]["arrhenius"] = plots.plot_arrhenius(points, arr, os.path.join(outdir, "md_arrhenius.png"))
        vac = {f"{r['settings']['temperature_K']:g} K": r["vacf"] for r in runs.values() if r["vacf"]}
        if vac:
            res["plots"]["vacf"] = plots.plot_vacf(vac, os.path.join(outdir, "md_vacf.png"))
    return jsonable(res)
