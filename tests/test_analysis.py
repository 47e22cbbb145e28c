"""Physics checks of moire_al.analysis with the classical reference potential."""

import json
import os

import numpy as np
import pytest

from moire_al import structures
from moire_al.analysis import binding, moire, neb, phonons, strain
from moire_al.analysis.common import primitive_bilayer, rectangular_monolayer
from moire_al.labelling.reference import reference_calculator


@pytest.fixture(scope="module")
def gcalc():
    return reference_calculator("graphene")


def _monolayer():
    m = primitive_bilayer("graphene", 0.0, 3.4)
    del m[[2, 3]]
    return m


@pytest.mark.parametrize("m", [1, 5])  # 21.79° (28 atoms) and 6.01° (364 atoms)
def test_twisted_bilayer_relaxes_and_moire_period_matches(gcalc, m, tmp_path):
    tb = structures.twisted_bilayer("graphene", m=m)
    relaxed, res = moire.relax_and_analyse(tb, gcalc, "ref", plot_dir=str(tmp_path))
    r, mo = res["relax"], res["moire"]
    assert r["converged"] and r["final_fmax"] < 1e-3 and 0 < r["steps"] < 1000
    assert r["energy_final"] < r["energy_initial"]
    assert mo["period_rel_error"] < 0.02
    assert mo["d_min"] < mo["d_mean"] < mo["d_max"]
    json.dumps(res)  # JSON-friendly
    assert all(os.path.exists(p) for p in mo["plots"].values())
    if m == 5:
        # visible moiré: AA nodes stand clearly above AB-like regions (KC: ~3.6 vs ~3.4 Å)
        assert mo["d_range"] > 0.15
        assert mo["regime_by_angle"] == "transition"
        assert mo["n_aa_nodes"] == 1
        # the highest atom sits in AA stacking, the lowest in AB/BA
        fields = moire.moire_fields(relaxed)
        assert fields["stacking"][np.argmax(fields["d"])] == "AA"
        assert fields["stacking"][np.argmin(fields["d"])] in ("AB", "BA")
        assert mo["u_z_max"] > mo["u_inplane_max"]  # transition: out-of-plane first
    else:
        assert mo["d_range"] < 0.05 and mo["regime_by_angle"] == "moire"
        assert mo["regime_by_structure"] == "moire"


def test_hbn_twisted_bilayer_period(tmp_path):
    tb = structures.twisted_bilayer("hbn", m=4)
    _, res = moire.relax_and_analyse(tb, reference_calculator("hbn"), "ref")
    assert res["relax"]["converged"]
    assert res["moire"]["period_rel_error"] < 0.02


def test_stacking_labels_of_ideal_bilayers():
    for shift, want in ((0.0, "AA"), (1.0, "AB"), (2.0, "BA"), (1.5, "SP")):
        bl = primitive_bilayer("graphene", shift, 3.4).repeat((3, 3, 1))
        _, labels = moire.stacking_labels(bl)
        assert set(labels) == {want}, (shift, set(labels))
    _, labels = moire.stacking_labels(primitive_bilayer("hbn", 0.0, 3.4, swap_top=True))
    assert set(labels) == {"AA'"}


def test_measure_period_picks_fundamental_not_harmonic():
    tb = structures.twisted_bilayer("graphene", m=4)
    idx = np.where(tb.arrays["layer"] == 1)[0]
    cell = tb.cell.array[:2, :2]
    g = 2 * np.pi * np.linalg.inv(cell).T
    xy = tb.positions[idx, :2]
    field = sum(np.cos(xy @ v) for v in (g[0], g[1], g[0] + g[1]))  # moiré-like
    field = field + 0.3 * np.cos(xy @ (2 * g[0]))  # weaker harmonic
    period, _ = moire.measure_period(tb, idx, field, 2.46)
    assert abs(period - tb.info["moire_period"]) / tb.info["moire_period"] < 1e-6


def test_binding_ab_below_aa(gcalc, tmp_path):
    d = [3.1, 3.2, 3.3, 3.35, 3.4, 3.45, 3.5, 3.6, 3.7, 3.8, 4.0, 6.0]
    res = binding.binding_curves("graphene", gcalc, "ref", stackings=["AA", "AB", "SP"],
                                 distances=d, plot_path=str(tmp_path / "b.png"))
    eq = res["equilibrium"]
    assert res["ground_state"] == "AB"
    assert eq["AB"]["e_bind_min"] < eq["SP"]["e_bind_min"] < eq["AA"]["e_bind_min"] < 0
    assert 3.2 < eq["AB"]["d_eq"] < 3.5 and eq["AA"]["d_eq"] > eq["AB"]["d_eq"] + 0.1
    assert 1.0 < res["stacking_energy_meV"]["AA"] < 15.0
    # the tail decays: at 6 Å much weaker than at the minimum
    assert abs(res["curves"]["AB"]["e_bind"][-1]) < 0.2 * abs(eq["AB"]["e_bind_min"])


def test_young_modulus_monolayer_graphene(gcalc):
    res = strain.stress_strain(rectangular_monolayer("graphene", 3, 2), gcalc, "ref",
                               strains=[0.0, 0.005, 0.01, 0.015, 0.02])
    assert all(res["converged"])
    assert abs(res["youngs_modulus_GPa"] - 1000.0) < 150.0
    assert abs(res["stress_GPa"][0]) < 0.5  # relaxed start is stress-free


@pytest.mark.slow
def test_stress_strain_to_20_percent(gcalc, tmp_path):
    res = strain.stress_strain(rectangular_monolayer("graphene", 3, 2), gcalc, "ref",
                               plot_path=str(tmp_path / "ss.png"))
    s = np.array(res["stress_GPa"])
    assert res["strain"][-1] == pytest.approx(0.20)
    assert np.all(np.diff(s[:10]) > 0)  # monotonic in the elastic range
    assert 50 < res["ultimate_stress_GPa"] < 200


def test_phonons_monolayer_acoustic_zero_and_units(gcalc, tmp_path):
    res = phonons.phonon_bands(_monolayer(), gcalc, "ref", supercell=(5, 5, 1),
                               symmetrize=False, plot_path=str(tmp_path / "ph.png"))
    assert res["acoustic_gamma_max_abs_THz"] < 0.05
    assert 40 < res["max_frequency_THz"] < 60  # G mode ~1600 cm^-1 ~ 48 THz
    assert res["gamma_frequencies_THz"][3] > 10  # ZO is optical
    assert res["stable"] and res["n_imaginary"] == 0
    assert os.path.exists(res["plots"]["bands"])


def test_phonons_ab_and_twisted_bilayer(gcalc):
    ab = phonons.phonon_bands(primitive_bilayer("graphene", 1.0, 3.4), gcalc, "ref",
                              supercell=(4, 4, 1), symmetrize=False, npoints=11)
    assert ab["acoustic_gamma_max_abs_THz"] < 0.05
    g = ab["gamma_frequencies_THz"]
    assert 0.2 < g[3] < 3.0  # interlayer shear mode, ~1 THz scale
    assert ab["stable"]
    tw = phonons.phonon_bands(structures.twisted_bilayer("graphene", m=1), gcalc, "ref",
                              supercell=(1, 1, 1), symmetrize=True, npoints=5)
    gt = np.array(tw["gamma_frequencies_THz"])
    assert tw["acoustic_gamma_max_abs_THz"] < 0.05
    # the only soft modes: the (nearly free) relative sliding pair of the twisted
    # layers; everything else real
    assert (gt < -0.1).sum() <= 2 and tw["min_frequency_THz"] > -0.5
    assert tw["max_frequency_THz"] > 40
    # 7.34° (244 atoms): relaxed, it is stable along Γ–M–K–Γ, acoustic modes at zero
    t7 = phonons.phonon_bands(structures.twisted_bilayer("graphene", m=4), gcalc, "ref",
                              supercell=(1, 1, 1), npoints=5, fmax=1e-3)
    assert t7["n_atoms"] == 244 and t7["acoustic_gamma_max_abs_THz"] < 0.05
    assert t7["stable"] and t7["n_imaginary"] == 0 and t7["max_frequency_THz"] > 40


def test_vacancy_neb_symmetric_path():
    from moire_al.analysis.calculators import intralayer_calculator

    # KC-full refuses atoms with > 3 same-layer neighbours (the hop's saddle), so the
    # monolayer path uses the reference's intralayer part (REBO) alone.
    calc = intralayer_calculator("graphene")
    res = neb.vacancy_migration(_monolayer().repeat((5, 5, 1)), calc, "rebo",
                                n_images=5, climb=False, steps=600)
    e = np.array(res["energies_rel"])
    assert all(res["endpoints_converged"])
    assert np.all(np.isfinite(e)) and np.isfinite(res["barrier"])
    assert abs(res["delta_e"]) < 1e-3  # symmetric end points
    assert np.allclose(e, e[::-1], atol=0.05)  # symmetric profile
    assert res["barrier"] == pytest.approx(res["barrier_reverse"], abs=1e-3)


def test_measured_period_is_the_fundamental_when_a_harmonic_dominates():
    """A field whose √3 harmonic (the domain-wall network) outweighs its fundamental
    still has the moiré period a / (2 sin θ/2), not that period / √3."""
    tb = structures.twisted_bilayer("graphene", m=5)
    idx = np.flatnonzero(tb.arrays["layer"] == 1)
    recip = 2 * np.pi * np.linalg.inv(tb.cell.array[:2, :2]).T
    gs = [i * recip[0] + j * recip[1] for i in range(-3, 4) for j in range(-3, 4) if (i, j) != (0, 0)]
    gmin = min(np.linalg.norm(g) for g in gs)

    def shell(f):
        return [g for g in gs if abs(np.linalg.norm(g) - f * gmin) < 1e-6 * gmin]

    xy = tb.positions[idx, :2]

    def field(f):
        return sum(np.cos(xy @ g) for g in shell(f))

    assert len(shell(1)) == 6 and len(shell(np.sqrt(3))) == 6
    values = 3.4 + 0.01 * field(1.0) + 0.03 * field(np.sqrt(3))
    period, _ = moire.measure_period(tb, idx, values, 2.46)
    assert period == pytest.approx(tb.info["moire_period"], rel=1e-9)
    # only the harmonic: then the field's period really is the shorter one
    period_h, _ = moire.measure_period(tb, idx, 3.4 + 0.03 * field(np.sqrt(3)), 2.46)
    assert period_h == pytest.approx(tb.info["moire_period"] / np.sqrt(3), rel=1e-9)


def test_aa_nodes_one_per_bump_and_not_in_domains():
    """A flat-topped AA bump counts once; small bumps inside the AB/BA domains
    (lower half of the d range) are not AA nodes."""
    tb = structures.twisted_bilayer("graphene", m=5)
    idx = np.flatnonzero(tb.arrays["layer"] == 1)
    recip = 2 * np.pi * np.linalg.inv(tb.cell.array[:2, :2]).T
    gs = [i * recip[0] + j * recip[1] for i in range(-2, 3) for j in range(-2, 3) if (i, j) != (0, 0)]
    gmin = min(np.linalg.norm(g) for g in gs)
    xy = tb.positions[idx, :2] - tb.positions[idx, :2][np.argmin(np.linalg.norm(tb.positions[idx, :2], axis=1))]
    f1 = sum(np.cos(xy @ g) for g in gs if abs(np.linalg.norm(g) - gmin) < 1e-6 * gmin)   # max 6 at AA
    bump = np.minimum(f1, 4.5)                      # flat top: many atoms share the maximum
    domain_bump = 0.06 * np.maximum(0.0, -f1 - 2.0)   # a local maximum at each AB/BA centre
    d = 3.4 + 0.04 * bump + domain_bump
    assert np.count_nonzero(d == d.max()) > 1
    nodes = moire.aa_nodes(tb, idx, d)
    assert len(nodes) == 1


def test_vacancy_formation_energy(gcalc):
    from moire_al.analysis.defects import defect_formation_energies

    res = defect_formation_energies(structures.twisted_bilayer("graphene", m=2), gcalc, "ref",
                                    kinds=("vacancy", "interstitial_interlayer"))
    assert 5.0 < res["formation_energies"]["vacancy"] < 9.0  # REBO ~7.5 eV
    assert res["defects"]["vacancy"]["dn"] == -1 and res["defects"]["vacancy"]["converged"]
    json.dumps(res)


def test_all_defects_with_kc_z_where_kc_full_cannot_build_normals():
    """KC-full stops at Stone-Wales and interstitial sites; REBO + KC/z takes all four."""
    from moire_al.analysis.calculators import get_calculator
    from moire_al.analysis.defects import defect_formation_energies
    import synthetic as S

    zc = get_calculator("reference-z", "graphene")
    full = reference_calculator("graphene")
    e = {}
    for name, c in (("z", zc), ("full", full)):
        for st, sh in (("AB", [1.42, 0.0]), ("AA", [0.0, 0.0])):
            at = S.stacked("graphene", 2, 3, d=3.4, shifts=[[0, 0], sh], rattle=0.0, seed=0)
            at.calc = c
            e[name, st] = at.get_potential_energy() / len(at)
    assert e["z", "AB"] < e["z", "AA"]                      # same physics as KC-full ...
    assert abs(e["z", "AB"] - e["full", "AB"]) < 0.005      # ... within a few meV/atom
    host = structures.twisted_bilayer("graphene", m=2)
    res = defect_formation_energies(host, zc, "reference:REBO+KC-z", fmax=0.02, steps=400)
    assert not res["errors"], res["errors"]
    ef = res["formation_energies"]
    assert 6.5 < ef["vacancy"] < 8.5                        # REBO ~7.5 eV
    assert 4.0 < ef["stone_wales"] < 8.0                    # REBO ~6 eV (DFT ~5 eV)
    assert 0.0 < ef["interstitial_intralayer"] < 12.0 and 0.0 < ef["interstitial_interlayer"] < 12.0
    assert all(d["converged"] for d in res["defects"].values())
    with pytest.raises(Exception, match="graphene only"):
        get_calculator("reference-z", "hbn")


def test_cli_parses_and_calculator_resolution(tmp_path):
    from moire_al.analysis.calculators import get_calculator
    from moire_al.cli import build_parser
    from moire_al.errors import MoireALError

    args = build_parser().parse_args(["analyse", "binding", "--calc", "reference",
                                      "--out", str(tmp_path)])
    assert args.func.__name__ == "_binding"
    with pytest.raises(MoireALError):
        get_calculator(str(tmp_path / "missing-model"), "graphene")


def test_comparison_mode_suite_and_relax(tmp_path, capsys):
    """Several calculators: one result each, comparison plots drawn together."""
    from moire_al.analysis.calculators import get_calculator
    from moire_al.analysis.suite import compare_suite
    from moire_al.cli import main
    from moire_al.structures import write_structures

    calcs = {"kc-full": get_calculator("reference"), "kc-z": get_calculator("reference-z")}
    res = compare_suite("graphene", calcs, str(tmp_path / "suite"), quick=True,
                        only=("binding", "stress_strain"))
    assert set(res["results"]) == {"kc-full", "kc-z"} and not any(res["errors"].values())
    assert set(res["plots"]) == {"binding", "stress_strain"}
    assert all(os.path.getsize(p) > 1000 for p in res["plots"].values())
    e = {n: r["results"]["binding"] for n, r in res["results"].items()}
    assert e["kc-full"] != e["kc-z"]        # two different potentials really ran
    path = tmp_path / "tb.xyz"
    write_structures(path, [structures.twisted_bilayer("graphene", m=1)])
    assert main(["analyse", "relax", str(path), "--calc", "reference,reference-z",
                 "--out", str(tmp_path / "relax")]) == 0
    out = json.load(open(tmp_path / "relax" / "relax.json"))
    assert set(out["results"]) == {"reference:REBO+KC-full", "reference:REBO+KC-z"}
    assert all(r["converged"] for r in out["results"].values())
    assert (tmp_path / "relax" / "reference_REBO_KC-z" / "relaxed.xyz").exists()


def test_fit_minimum_recovers_morse_and_brackets_a_non_morse_curve():
    """The binding-curve minimum fit (Morse on ±0.3 Å of the lowest sample): exact on
    Morse samples; on a Lennard-Jones curve (not Morse) within 0.01 Å of its analytic
    minimum 2^{1/6} σ, and the Morse/quartic difference is of the size of that error."""
    d = np.round(np.arange(3.0, 4.01, 0.1), 3)
    d = np.union1d(d, np.round(np.arange(3.35, 3.651, 0.025), 3))
    e = binding.morse(d, -0.001, 0.02, 1.7, 3.47)
    fit = binding.fit_minimum(d, e)
    assert fit["d_eq"] == pytest.approx(3.47, abs=1e-6)
    assert fit["e_min"] == pytest.approx(-0.021, abs=1e-8)
    assert fit["rms_residual"] < 1e-9 and fit["n_points"] >= 5
    sigma, eps = 3.1, 0.015
    e_lj = 4 * eps * ((sigma / d) ** 12 - (sigma / d) ** 6)
    lj = binding.fit_minimum(d, e_lj)
    true = 2 ** (1 / 6) * sigma
    err = abs(lj["d_eq"] - true)
    assert err < 0.01
    assert abs(lj["d_eq_quartic"] - true) < 0.01
    with pytest.raises(ValueError):
        binding.fit_minimum(d[:4], e[:4])   # the minimum is not inside the samples
    # a grid egg-box (period h = 26/264 Å, 0.3 meV as measured in CP2K) on a flat Morse
    # well: the fit with the egg-box term recovers d0 and the amplitude; without, it errs
    h = 26.0 / 264
    flat = binding.morse(d, -0.0, 0.02, 1.2, 3.6)
    noisy = flat + 3e-4 * np.cos(2 * np.pi * d / h + 0.7)
    fit = binding.fit_minimum(d, noisy, eggbox_period=h)
    assert fit["d_eq"] == pytest.approx(3.6, abs=1e-4)
    assert fit["eggbox_amplitude"] == pytest.approx(3e-4, rel=1e-3)
    plain = binding.fit_minimum(d, noisy)
    assert abs(plain["d_eq"] - 3.6) > 10 * abs(fit["d_eq"] - 3.6)


def test_labelled_binding_curves_match_the_calculator_path():
    """Binding curves read from labelled cells (REF_ keys, as data/dft/hbn_binding.extxyz)
    give the minimum the calculator path finds on the same curve (reference potential)."""
    from moire_al.conventions import put_label
    from moire_al.labelling.reference import reference_calculator

    calc = reference_calculator("hbn")
    ds = [round(3.2 + 0.05 * i, 3) for i in range(17)]
    cells = []
    for d in ds:
        at = binding.stacking_bilayer("hbn", "AA", d)
        at.calc = calc
        cells.append(put_label(at, at.get_potential_energy(), at.get_forces(), labeller="reference"))
        cells[-1].info["stacking"] = "AA"
    mono = binding._monolayer("hbn", 2.504)
    mono.calc = calc
    m = put_label(mono, mono.get_potential_energy(), mono.get_forces(), labeller="reference")
    m.info["stacking"] = "monolayer"
    res = binding.labelled_binding_curves(cells + [m])
    direct = binding.binding_curves("hbn", calc, stackings=["AA"], distances=ds)
    assert res["curves"]["AA"]["d"] == pytest.approx(ds, abs=1e-6)
    assert res["curves"]["AA"]["e_bind"] == pytest.approx(direct["curves"]["AA"]["e_bind"], abs=1e-9)
    assert res["equilibrium"]["AA"]["d_eq"] == pytest.approx(direct["equilibrium"]["AA"]["d_eq"],
                                                             abs=0.005)
    assert res["equilibrium"]["AA"]["e_min"] < 0
