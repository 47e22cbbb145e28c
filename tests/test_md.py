"""Molecular dynamics: the driver, its stability verdict, MSD/VACF/vDOS, heat currents
and Green-Kubo, the CLI and the time-averaged moiré. Physics with the reference
potential (REBO, KC-full) and a small random-coefficient ACE model."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
from ase import units
from ase.calculators.calculator import Calculator, all_changes

from moire_al import structures
from moire_al.analysis import dynamics
from moire_al.analysis.md import MDSettings, heat_current, run_md
from moire_al.errors import ModelError
from moire_al.labelling.reference import reference_calculator

KB = 8.617333262e-5


def _relaxed(atoms, calc, fmax=1e-3):
    from moire_al.analysis.relax import relax

    out, _ = relax(atoms, calc, fmax=fmax, steps=500)
    return out


@pytest.fixture(scope="module")
def gcalc():
    return reference_calculator("graphene")


@pytest.fixture(scope="module")
def diamond_run(gcalc):
    """Langevin, 300 K, 2.2 ps of 216-atom diamond (REBO): a 3D crystal with no
    flexural modes, so its MSD must plateau."""
    from ase.build import bulk

    d = bulk("C", "diamond", a=3.567, cubic=True).repeat((3, 3, 3))
    d.info["material"] = "graphene"
    return run_md(d, gcalc, MDSettings(temperature_K=300.0, steps=2200, seed=3))


# ------------------------------------------------------------------ the driver
def test_nve_conserves_energy_reference_bilayer(gcalc):
    """Velocity Verlet, 1 fs, 1 ps, AB bilayer with REBO + KC-full: drift < 1e-4 eV/atom."""
    bl = _relaxed(structures.multilayer("graphene", "AB", n=3), gcalc)
    run = run_md(bl, gcalc, ensemble="nve", temperature_K=300.0, init_temperature_K=600.0, steps=1000,
                 sample_every=0)
    assert run.verdict.stable and run.steps_done == 1000
    s = run.trace_summary(discard=0.0)
    assert 150 < s["T_mean"] < 450                       # the atoms really moved (~half to potential)
    assert abs(s["etot_drift_eV_atom_ps"]) * 1.0 < 1e-4   # per atom over 1 ps
    e = run.etot / run.n_atoms
    assert abs(e[-100:].mean() - e[:100].mean()) < 1e-4
    assert s["etot_max_deviation_eV_atom"] < 1e-3         # Verlet's bounded fluctuation
    assert np.abs(run.epot - run.epot[0]).max() / run.n_atoms > 10 * s["etot_max_deviation_eV_atom"]
    assert run.stress is not None and run.stress.shape == (len(run.time_fs), 6)


def test_langevin_holds_the_target_temperature(diamond_run):
    r = diamond_run
    assert r.verdict.stable and r.n_atoms >= 200
    late = r.time_fs >= 200.0                              # 2 ps after 0.2 ps of equilibration
    assert r.time_fs[late][-1] - r.time_fs[late][0] == pytest.approx(2000.0)
    assert abs(r.temperature_K[late].mean() - 300.0) < 0.05 * 300.0


def test_vacf_normalised_and_equipartition(diamond_run):
    r = diamond_run
    k0 = 200
    v = dynamics.vacf(r.sample_time_fs[k0:], r.velocities[k0:], r.masses)
    assert v["vacf"][0] == pytest.approx(1.0, abs=1e-12)
    assert v["vacf_inplane"][0] == pytest.approx(1.0, abs=1e-12)
    assert np.abs(v["vacf"]).max() <= 1.0 + 1e-12 and v["vacf"][50:].min() < 0.5   # it decorrelates
    kT = KB * 300.0 * (1 - 1 / r.n_atoms)                 # the centre of mass is held
    assert v["mv2_eV"] == pytest.approx(3 * kT, rel=0.05)
    for comp in v["mv2_components_eV"]:                    # each direction alone
        assert comp == pytest.approx(kT, rel=0.05)


def test_crystal_msd_plateaus(diamond_run):
    r = diamond_run
    k0 = 200
    dif = dynamics.diffusion(r.sample_time_fs[k0:], r.positions[k0:], r.masses)
    D = dif["D"]["all"]["total"]
    assert D["error"] > 0
    assert abs(D["value"]) < 3 * D["error"]                # D = 0 within its error
    assert abs(D["value"]) < 1e-3                          # Å²/ps; a liquid has ~0.1-1
    msd = dif["msd"]["all"]["total"]
    lag = dif["lag_ps"]
    assert 1e-3 < msd[-1] < 0.02                           # Å²: a vibration, not a walk
    plateau = msd[lag > 0.1]                               # oscillates about a level, no growth:
    mid, last = np.array_split(plateau, 2)
    assert abs(last.mean() - mid.mean()) < 0.1 * plateau.mean()
    assert 6 * abs(D["value"]) * (lag[-1] - 0.1) < 0.1 * plateau.mean()
    lo, hi = dif["fit_window_ps"]
    assert 0 < lo < hi <= lag[-1]


def test_diffusion_recovers_a_known_random_walk():
    """Brownian walkers with D = 0.5 Å²/ps (in-plane) and 0.1 (out-of-plane)."""
    rng = np.random.default_rng(0)
    dt_fs, T, N = 5.0, 1500, 600
    Dxy, Dz = 0.5, 0.1
    steps = rng.normal(size=(T, N, 3)) * np.sqrt(2 * np.array([Dxy, Dxy, Dz]) * dt_fs / 1000)
    x = np.cumsum(steps, axis=0)
    dif = dynamics.diffusion(np.arange(T) * dt_fs, x, np.ones(N), layers=np.arange(N) % 2)
    for g in ("all", "layer_0", "layer_1"):
        got = dif["D"][g]
        assert got["inplane"]["value"] == pytest.approx(Dxy, rel=0.12)
        assert got["outofplane"]["value"] == pytest.approx(Dz, rel=0.12)
        assert abs(got["inplane"]["value"] - Dxy) < 4 * got["inplane"]["error"] + 0.02
    fit = dynamics.arrhenius([300, 500, 700, 1000], 2.0 * np.exp(-0.3 / (KB * np.array([300, 500, 700, 1000]))))
    assert fit["E_a_eV"] == pytest.approx(0.3, rel=1e-6) and fit["D0_A2_ps"] == pytest.approx(2.0, rel=1e-6)
    none = dynamics.arrhenius([300, 600], [1e-6, -1e-6], [1e-5, 1e-5])
    assert none["E_a_eV"] is None and "crystal" in none["reason"]


def test_vdos_of_a_harmonic_signal_and_phonopy_dos_of_graphene(gcalc):
    """A 20 THz oscillation peaks at 20 THz; a cold NVE graphene run's vibrational DOS
    lies on the harmonic (phonopy) DOS of the same cell and potential."""
    t = np.arange(4000) * 1.0
    v = np.cos(2 * np.pi * 0.020 * t[:, None] + 0.7 * np.arange(30)[None, :])[:, :, None] * np.ones(3)
    vd = dynamics.vdos(dynamics.vacf(t, v, np.ones(30)))
    assert vd["frequency_THz"][np.argmax(vd["dos"])] == pytest.approx(20.0, abs=vd["resolution_THz"])

    from moire_al.analysis.phonons import phonon_dos

    g = _relaxed(structures.monolayer("graphene", n=6), gcalc, fmax=1e-4)
    pd = phonon_dos(g, gcalc, relax_first=False, sigma=0.5)
    run = run_md(g, gcalc, ensemble="nve", temperature_K=20.0, init_temperature_K=40.0, steps=2000)
    vd = dynamics.vdos(dynamics.vacf(run.sample_time_fs, run.velocities, run.masses))
    nu, dos = vd["frequency_THz"], vd["dos"]
    top = nu[np.argmax(np.where(nu > 0.8 * pd["max_frequency_THz"], dos, 0))]
    assert top == pytest.approx(pd["max_frequency_THz"], abs=1.0)    # the G mode, ~51 THz for REBO
    assert dynamics.dos_overlap(nu, dos, np.array(pd["frequency_THz"]), np.array(pd["dos"])) > 0.6
    assert dos[nu > 1.2 * pd["max_frequency_THz"]].max() < 0.02 * dos.max()   # nothing above the band


# ------------------------------------------------------------------ the verdict
class Broken(Calculator):
    """Wraps a calculator and breaks it from the ``after``-th call on."""

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, inner, after, mode):
        super().__init__()
        self.inner, self.after, self.mode, self.calls = inner, after, mode, 0

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        a = self.atoms.copy()
        a.calc = self.inner
        e, f = a.get_potential_energy(), a.get_forces().copy()
        self.results = {"stress": a.get_stress()}
        broken = self.calls >= self.after
        self.calls += 1
        if broken:
            if self.mode == "nan":
                f[3] = np.nan
            elif self.mode == "raise":
                raise ModelError("atoms 1 and 2 are 0.31 Å apart: the structure has collapsed")
            elif self.mode == "jump":
                e += 0.5 * len(a)
            elif self.mode == "heat":
                f *= -20.0                      # anti-restoring: the lattice explodes
            elif self.mode == "pull":           # a strong spring between atoms 0 and 1
                d = a.get_distance(0, 1, mic=True, vector=True)
                f[0] += 40.0 * d
                f[1] -= 40.0 * d
        self.results.update(energy=e, free_energy=e, forces=f)


@pytest.mark.parametrize("mode,reasons", [("nan", {"non_finite"}), ("raise", {"calculator"}),
                                          ("jump", {"energy_jump"}), ("heat", {"temperature", "energy_jump",
                                                                             "min_distance"}),
                                          ("pull", {"min_distance", "temperature", "energy_jump"})])
def test_blow_up_detector_stops_a_broken_calculator(gcalc, mode, reasons, tmp_path):
    g = structures.monolayer("graphene", n=3)
    after = 30
    run = run_md(g, Broken(gcalc, after, mode), temperature_K=300.0, steps=400, traj_every=5,
                 trajectory=str(tmp_path / "t.traj"))
    v = run.verdict
    assert not v.stable and v.reason in reasons and v.message
    assert after <= v.step < after + 150                   # at the break, not before, and soon
    if mode in ("nan", "raise", "jump"):
        assert v.step == after                             # the very step the calculator broke
    assert run.steps_done < 400
    from ase.io import read

    frames = read(str(tmp_path / "t.traj"), ":")
    assert 1 <= len(frames) <= v.step // 5 + 1             # the trajectory stops with the run
    if mode == "pull" and v.reason == "min_distance":
        assert "atoms 0 and 1" in v.message or "atoms 1 and 0" in v.message


class WithSigma(Calculator):
    """A calculator whose results carry a committee σ_F growing each call, as a
    committee-biased wrapper (issue 16) would."""

    implemented_properties = ["energy", "free_energy", "forces"]

    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls = inner, 0

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        a = self.atoms.copy()
        a.calc = self.inner
        self.results = {"energy": a.get_potential_energy(), "forces": a.get_forces(),
                        "max_force_std": 0.01 * self.calls}
        self.calls += 1


def test_sigma_f_limit_and_observers_stop_the_run(gcalc):
    g = structures.monolayer("graphene", n=3)
    run = run_md(g, WithSigma(gcalc), temperature_K=300.0, steps=100, sigma_f_limit=0.255)
    assert not run.verdict.stable and run.verdict.reason == "sigma_f" and run.verdict.step == 26
    assert run.max_force_std is not None and run.stress is None   # no stress from this calculator
    calls = []
    run = run_md(g, gcalc, temperature_K=300.0, steps=100, sigma_f_limit=0.05, uncertainty_every=4,
                 uncertainty=lambda a: calls.append(1) or 0.01 * len(calls))
    assert run.verdict.reason == "sigma_f" and run.verdict.step == 20 and len(calls) == 6
    run = run_md(g, gcalc, temperature_K=300.0, steps=100,
                 observers=[lambda step, atoms: "enough" if step == 7 else None])
    assert (run.verdict.stable, run.verdict.reason, run.verdict.step, run.verdict.message) == (
        False, "observer", 7, "enough")
    ok = run_md(g, gcalc, temperature_K=300.0, steps=20, pin=(0, 5))
    assert ok.verdict.stable
    assert np.allclose(ok.positions[-1][[0, 5]], g.positions[[0, 5]]) and not np.allclose(
        ok.positions[-1][1], g.positions[1])


def test_bad_settings_are_one_line_errors(gcalc):
    from moire_al.errors import MoireALError

    g = structures.monolayer("graphene", n=2)
    for bad in ({"ensemble": "npt"}, {"temperature_K": -5}, {"steps": 0}, {"pin": (99,)}):
        with pytest.raises(MoireALError):
            run_md(g, gcalc, steps=bad.pop("steps", 5), **bad)
    with pytest.raises(MoireALError, match="per-atom"):
        run_md(g, Broken(gcalc, 10 ** 6, "none"), steps=5, heat_every=1)


# ------------------------------------------------------------------ heat currents
def _random_ace():
    os.environ.setdefault("ACEJAX_COUPLING_CACHE", os.path.join(os.environ.get("TMPDIR", "/tmp"),
                                                                "moire-al-md-tests-coupling"))
    from moire_al.models import fast
    from moire_al.models.ace import ACEModel
    from moire_al.models.basis import ACEBasis

    if not fast.available():
        pytest.skip(f"ace-jax CPU kernel unavailable: {fast.unavailable_reason()}")
    b = ACEBasis([6], rcut=5.5, order=2, totaldegree=6)
    m = ACEModel(d3=False, order=2, totaldegree=6)
    rng = np.random.default_rng(0)
    m.basis_, m.elements_ = b, (6,)
    m.coef_ = rng.normal(size=b.L) / np.maximum(b.gamma, 1) * 0.5
    m.committee_, m.E0_ = np.zeros((0, b.L)), np.array([-7.0])
    return m


def test_ace_heat_current_equals_finite_differences():
    """The kernel's per-atom virials give the many-body heat current exactly: (1) a
    periodic bilayer against −Σ_ik r_ik (∂e_i/∂x_k · v_k) from finite differences of
    the site energies over owned and ghost atoms; (2) a cluster against the
    definition J = d/dt Σ_i x_i E_i (site + kinetic energies, differentiated along
    the velocities)."""
    from moire_al.models import fast
    import synthetic as S
    from moire_al.models.calculator import ACEModelCalculator

    m = _random_ace()
    rng = np.random.default_rng(1)
    at = S.stacked("graphene", 2, 3, d=3.4, shifts=[[0, 0], [0.7, 0.4]], rattle=0.08, seed=2)
    calc = fast.FastACECalculator(m)
    at.calc = calc
    v = rng.normal(size=(len(at), 3)) * 0.01                     # Å/fs
    at.set_velocities(v / units.fs)
    W = calc.get_property("virials", at)
    assert np.abs(W.sum(axis=0) + at.get_volume() * at.get_stress(voigt=False)).max() < 1e-9
    J = heat_current(at)
    gl = calc._list
    x = gl.positions(at)
    V = v[gl.owner]
    z, nbr, cnt = calc._species_ext, gl.nbr, gl.count

    def site(xx):
        return calc._kernel(xx, z, nbr, cnt)[0][: gl.n]

    h = 1e-5
    dU = (site(x + h * V) - site(x - h * V)) / (2 * h)           # Σ_k ∂e_i/∂x_k · V_k
    Jpot = np.empty(3)
    for a in range(3):
        Va = x[:, a, None] * V
        dUa = (site(x + h * Va).sum() - site(x - h * Va).sum()) / (2 * h)
        Jpot[a] = -(dUa - x[: gl.n, a] @ dU)
    e = calc.results["energies"] - calc.results["energies"].mean()
    ke = 0.5 * at.get_masses() * (at.get_velocities() ** 2).sum(axis=1)
    Jref = (e + ke) @ v + Jpot
    assert np.abs(J - Jref).max() < 1e-6 * np.abs(Jref).max()
    assert np.abs(Jpot).max() > 2 * np.abs((e + ke) @ v).max()   # the virial term really is tested

    cl = at.copy()
    cl.pbc = False
    mc = ACEModelCalculator(m, committee=False, evaluator="kernel")
    cl.calc = mc
    cl.set_velocities(v / units.fs)
    Jc = heat_current(cl)
    E = mc.get_property("energies", cl).copy()
    F = cl.get_forces().copy()
    p, q = cl.copy(), cl.copy()
    p.positions += h * v
    q.positions -= h * v
    dE = (mc.get_property("energies", p).copy() - mc.get_property("energies", q)) / (2 * h)
    ke = 0.5 * cl.get_masses() * (cl.get_velocities() ** 2).sum(axis=1)
    dK = (F * v).sum(axis=1)                                       # eV/fs
    Jdef = (E - E.mean() + ke) @ v + cl.positions.T @ (dE + dK)
    assert np.abs(Jc - Jdef).max() < 1e-6 * np.abs(Jdef).max()
    import copy

    with_d3 = copy.copy(m)
    with_d3.d3 = True
    d3 = at.copy()
    d3.calc = ACEModelCalculator(with_d3, committee=False)
    with pytest.raises(ModelError, match="D3"):
        d3.calc.get_property("virials", d3)


def test_reference_heat_current_equals_lammps_heat_flux(gcalc):
    """Per-atom energies and virials of the reference potential give the heat current
    of LAMMPS' own `compute heat/flux` (pe/atom, stress/atom) on a twisted bilayer."""
    import ctypes

    from moire_al.labelling.reference import ReferencePotential

    tb = structures.twisted_bilayer("graphene", m=2)
    tb.rattle(0.03, seed=1)
    calc = ReferencePotential("graphene")
    tb.calc = calc
    v = np.random.default_rng(2).normal(size=(len(tb), 3)) * 0.01
    tb.set_velocities(v / units.fs)
    J = heat_current(tb)
    e_at = calc.results["energies"]
    W = calc.results["virials"]
    assert e_at.sum() == pytest.approx(tb.get_potential_energy(), abs=1e-8)
    assert np.abs(W.sum(axis=0) + tb.get_volume() * tb.get_stress(voigt=False)).max() < 1e-8
    lmp, R = calc._lmp, calc._box.rotation
    n = len(tb)
    vl = (v * 1000) @ R                                            # Å/ps in the LAMMPS frame
    lmp.scatter_atoms("v", 1, 3, (ctypes.c_double * (3 * n))(*vl.ravel().tolist()))
    lmp.commands_list(["compute ke all ke/atom", "compute hf all heat/flux ke peatom satom",
                       "thermo_style custom step pe c_hf[1] c_hf[2] c_hf[3]", "run 0 post no"])
    th = lmp.last_thermo()
    J_lmp = np.array([th[f"c_hf[{k}]"] for k in (1, 2, 3)]) @ R.T / 1000   # eV·Å/fs
    # LAMMPS has no per-species energy shift: add it back to ours
    shift = (e_at - e_at.mean()) @ v - e_at @ v
    assert np.abs(J - shift - J_lmp).max() < 1e-8 * np.abs(J_lmp).max()
    calc.close()


def test_green_kubo_recovers_a_known_correlation_integral():
    """Ornstein-Uhlenbeck currents, ⟨J²⟩ = s², correlation time τ: ∫⟨J(0)J(t)⟩ = s² τ."""
    rng = np.random.default_rng(0)
    dt, tau, n = 2.0, 40.0, 40000
    s = np.array([3.0, 2.0, 0.5])
    a = math.exp(-dt / tau)
    J = np.zeros((n, 3))
    for k in range(1, n):
        J[k] = a * J[k - 1] + s * math.sqrt(1 - a * a) * rng.normal(size=3)
    V, T = 500.0, 300.0
    runs = [dynamics.green_kubo(np.arange(n // 4) * dt, J[i * n // 4:(i + 1) * n // 4], V, T, max_lag_fs=400.0)
            for i in range(4)]
    comb = dynamics.combine_kappa(runs)
    pref = dynamics.EV_PER_A_FS_K_TO_W_PER_M_K / (V * KB * T ** 2)
    want = s ** 2 * tau * pref
    for k, name in enumerate(("xx", "yy", "zz")):
        got = comb["kappa"][name]
        assert got["value"] == pytest.approx(want[k], rel=0.15)
        assert 0 < got["error"] < 0.2 * want[k]
    assert comb["kappa"]["inplane"]["value"] == pytest.approx(0.5 * (want[0] + want[1]), rel=0.15)
    assert comb["running_mean"][0].tolist() == [0.0, 0.0, 0.0]


def test_thermal_conductivity_runs_with_the_reference_potential(gcalc):
    from moire_al.analysis.md import heat_volume, thermal_conductivity

    g = structures.monolayer("graphene", n=3)
    k = thermal_conductivity(g, gcalc, 300.0, runs=2, equil_steps=100, steps=400, heat_every=2)
    assert k["stable"] and k["n_runs"] == 2
    vol, how = heat_volume(g)
    assert vol == pytest.approx(g.get_volume() / g.cell[2, 2] * 3.35) and how.startswith("slab")
    for name in ("xx", "yy", "zz", "inplane", "cross_plane"):
        assert math.isfinite(k["kappa"][name]["value"]) and len(k["kappa"][name]["runs"]) == 2
    assert k["kappa"]["inplane"]["value"] > 0                  # κ of graphene at 300 K is positive


# ------------------------------------------------------------------ CLI, averaged structure
def test_md_cli_temperature_series(tmp_path, capsys):
    """`--temperatures`: one run per T in its own directory, D(T), Arrhenius, plots,
    the trajectory file; bad input is one line and a non-zero exit."""
    from moire_al.cli import main
    from moire_al.structures import write_structures

    path = tmp_path / "g.xyz"
    write_structures(path, [structures.monolayer("graphene", n=3)])
    out = tmp_path / "md"
    assert main(["analyse", "md", str(path), "--calc", "reference", "--temperatures", "300,600",
                 "--steps", "160", "--sample-every", "1", "--traj-every", "20", "--out", str(out)]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["stable"] is True and line["result"] == str(out / "md.json")
    res = json.load(open(out / "md.json"))
    assert [p["temperature_K"] for p in res["points"]] == [300.0, 600.0]
    assert all(p["stable"] and "D_inplane" in p for p in res["points"])
    assert set(res["arrhenius"]) >= {"E_a_eV", "used_temperatures", "reason"}
    assert set(res["plots"]) == {"arrhenius", "vacf"}
    for p in res["plots"].values():
        assert os.path.getsize(p) > 1000
    one = json.load(open(out / "T_600K" / "md.json"))
    assert one["settings"]["temperature_K"] == 600.0 and one["steps_done"] == 160
    assert one["vacf"]["vacf0"] == 1.0 and one["averaged"] is None       # one layer: no moiré
    assert {"traces", "msd", "vacf", "vdos"} <= set(one["plots"])
    from ase.io import read

    assert len(read(one["files"]["trajectory"], ":")) == 160 // 20 + 1
    assert main(["analyse", "md", str(path), "--temperatures", "hot", "--out", str(out)]) == 1
    assert main(["analyse", "md", str(path), "--calc", "reference,reference", "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(e.startswith("moire-al: error:") for e in err)


def test_time_averaged_moire_with_pinned_aa_nodes(gcalc):
    """Seed 000: AA nodes held, positions averaged over the run, moiré analysis of the average."""
    from moire_al.analysis.md import md_analysis

    tb = structures.twisted_bilayer("graphene", m=1)             # 21.79°, 28 atoms, one AA node
    res = md_analysis(tb, gcalc, "ref", temperature=300.0, steps=150, pin_aa=True, sample_every=1)
    av = res["averaged"]
    assert res["stable"] and len(av["pinned_atoms"]) == 2
    i, j = av["pinned_atoms"]
    assert np.allclose(tb.positions[i, :2], tb.positions[j, :2])  # the eclipsed AA pair
    assert av["averaged_over_ps"] == pytest.approx(0.12)
    assert av["period_rel_error"] < 1e-6                         # the moiré period survives
    assert 3.2 < av["d_min"] <= av["d_mean"] <= av["d_max"] < 3.8
    assert av["u_inplane_max"] is not None and av["u_inplane_max"] < 0.2    # averaged, not a snapshot


@pytest.mark.slow
def test_md_cli_twisted_bilayer_stable_at_1000K(tmp_path, capsys):
    """Seed 003's stability test, with the reference potential: 7.34°, 1000 K, 2,000 steps."""
    from moire_al.cli import main
    from moire_al.structures import write_structures

    tb = structures.twisted_bilayer("graphene", m=4)
    assert len(tb) == 244 and tb.info["theta_deg"] == pytest.approx(7.34, abs=0.01)
    path = tmp_path / "tb.xyz"
    write_structures(path, [tb])
    assert main(["analyse", "md", str(path), "--calc", "reference", "--temperature", "1000", "--steps", "2000",
                 "--sample-every", "0", "--traj-every", "0", "--out", str(tmp_path / "md")]) == 0
    res = json.load(open(tmp_path / "md" / "md.json"))
    assert res["stable"] is True and res["stop_step"] is None and res["steps_done"] == 2000
    assert abs(res["trace"]["T_mean"] - 1000) < 100
    assert os.path.getsize(res["plots"]["traces"]) > 1000
