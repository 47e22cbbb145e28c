"""The standard analysis suite and the comparison mode (several calculators)."""

from __future__ import annotations

import os
import time

from moire_al.analysis.common import jsonable, material_of, write_json


def run_suite(material: str, calc, calc_name: str, outdir: str, quick: bool = False,
              only=None) -> dict:
    """Run the standard analyses with one calculator; write ``<outdir>/<name>.json``
    and PNGs; return ``{"calc_name", "material", "quick", "results": {name: dict},
    "errors": {name: message}, "wall_time"}``.

    Standard set: relaxation + moiré analysis of a twisted bilayer (7.34°; quick:
    21.79°), binding curves, stress–strain of the monolayer (graphene: armchair to
    20 %; quick: 2 %), phonons of the monolayer and the AB bilayer (+ 7.34°
    twisted bilayer, 244 atoms in a 2×2 supercell: ~30 s with the reference potential), vacancy NEB in
    the monolayer, defect formation energies in
    the twisted bilayer, and (not quick) a moiré sweep over r = 1 angles m = 1..6.
    One failing analysis is recorded in ``errors``; the rest still run.
    ``only``: names of the steps to run (one analysis Firework runs one step).
    """
    from moire_al import structures
    from moire_al.analysis import binding, defects, moire, neb, phonons, strain
    from moire_al.analysis.common import primitive_bilayer, rectangular_monolayer

    material = material_of(None, material)
    os.makedirs(outdir, exist_ok=True)
    t0 = time.perf_counter()
    results, errors = {}, {}
    m_twist = 1 if quick else 4

    def step(name, fn):
        if only is not None and name not in only:
            return
        try:
            results[name] = fn()
            write_json(results[name], os.path.join(outdir, f"{name}.json"))
        except Exception as exc:  # keep going: the suite reports what failed
            errors[name] = f"{type(exc).__name__}: {exc}"

    def _moire():
        tb = structures.twisted_bilayer(material, m=m_twist)
        _, res = moire.relax_and_analyse(tb, calc, calc_name,
                                         plot_dir=os.path.join(outdir, "moire"))
        return res

    step("moire", _moire)
    quick_d = [3.0, 3.2, 3.3, 3.4, 3.5, 3.6, 3.7, 3.9, 4.2, 6.0]
    step("binding", lambda: binding.binding_curves(
        material, calc, calc_name, distances=quick_d if quick else binding.DEFAULT_DISTANCES,
        plot_path=os.path.join(outdir, "binding.png")))
    step("stress_strain", lambda: strain.stress_strain(
        rectangular_monolayer(material, 3, 2), calc, calc_name,
        max_strain=0.02 if quick else 0.20,
        plot_path=os.path.join(outdir, "stress_strain.png")))
    mono = primitive_bilayer(material, 0.0, 3.4)
    del mono[[2, 3]]
    step("phonons_monolayer", lambda: phonons.phonon_bands(
        mono, calc, calc_name, supercell=(5, 5, 1),
        plot_path=os.path.join(outdir, "phonons_monolayer.png")))
    if not quick:
        step("phonons_ab", lambda: phonons.phonon_bands(
            primitive_bilayer(material, 1.0, 3.4), calc, calc_name, supercell=(5, 5, 1),
            plot_path=os.path.join(outdir, "phonons_ab.png")))
        step("phonons_twisted", lambda: phonons.phonon_bands(
            structures.twisted_bilayer(material, m=4), calc, calc_name, supercell=(2, 2, 1),
            npoints=21, fmax=1e-3, plot_path=os.path.join(outdir, "phonons_twisted.png")))
    step("neb_vacancy", lambda: neb.vacancy_migration(
        mono.repeat((5, 5, 1)), calc, calc_name, climb=not quick, n_images=5 if quick else 7,
        plot_path=os.path.join(outdir, "neb_vacancy.png")))
    def _defects():
        dcalc, dname = calc, calc_name
        from moire_al.labelling.reference import ReferencePotential, reference_calculator

        if isinstance(calc, ReferencePotential) and material == "graphene":
            # KC-full builds no layer normals at Stone-Wales and interstitial sites:
            # host and every defect use REBO + KC/z, so the energies stay consistent
            dcalc, dname = reference_calculator("graphene-z"), "reference:REBO+KC-z"
        return defects.defect_formation_energies(
            structures.twisted_bilayer(material, m=m_twist), dcalc, dname,
            plot_path=os.path.join(outdir, "defects.png"))

    step("defects", _defects)
    if not quick:
        step("moire_sweep", lambda: moire.moire_sweep(
            material, calc, calc_name, ms=(1, 2, 3, 4, 5, 6),
            plot_dir=os.path.join(outdir, "sweep")))
    summary = {"calc_name": calc_name, "material": material, "quick": bool(quick),
               "results": results, "errors": errors,
               "wall_time": time.perf_counter() - t0}
    write_json(summary, os.path.join(outdir, "suite.json"))
    return jsonable(summary)


def compare(analysis, target, calcs: dict, outdir: str | None = None, **options) -> dict:
    """Run one analysis function with several calculators and plot them together.

    ``analysis``: a function ``f(target, calc, calc_name=..., **options) -> dict``
    (e.g. :func:`binding.binding_curves` with ``target`` = material,
    :func:`strain.stress_strain` with ``target`` = atoms); ``calcs``:
    ``{name: calculator}``. Returns ``{"analysis", "results": {name: dict},
    "errors": {name: message}, "plots"}``; the comparison plot is written to
    ``outdir`` when the analysis has a plotting function.
    """
    from moire_al.analysis import plots

    results, errors = {}, {}
    for name, calc in calcs.items():
        try:
            results[name] = analysis(target, calc, calc_name=name, **options)
        except Exception as exc:
            errors[name] = f"{type(exc).__name__}: {exc}"
    kind = next(iter(results.values()))["analysis"] if results else None
    out = {"analysis": kind, "results": results, "errors": errors, "plots": {}}
    if outdir and results:
        os.makedirs(outdir, exist_ok=True)
        plotters = _plotters()
        if kind in plotters:
            out["plots"][kind] = plotters[kind](results, os.path.join(outdir, f"compare_{kind}.png"))
        elif kind == "moire_sweep":
            out["plots"] = plots.plot_moire_sweep(results, outdir, prefix="compare_sweep")
        elif kind == "polarization_sweep":
            out["plots"] = plots.plot_polarization_sweep(results, outdir,
                                                         prefix="compare_polarization_sweep")
    return jsonable(out)


def _plotters():
    """The comparison plotter of each analysis kind."""
    from moire_al.analysis import plots

    return {"binding": plots.plot_binding, "stress_strain": plots.plot_stress_strain,
            "phonons": plots.plot_phonons, "neb_vacancy": plots.plot_neb,
            "defects": plots.plot_defects}


def compare_suite(material: str, calcs: dict, outdir: str, quick: bool = False, only=None) -> dict:
    """The standard suite with each of ``calcs`` ({name: calculator}) into
    ``<outdir>/<name>/``, then one comparison plot per step that two or more of them
    finished (``<outdir>/compare_<step>.png``). Returns ``{"results": {name: suite
    summary}, "errors": {name: {step: message}}, "plots": {step: path}}``."""
    from moire_al.analysis import plots

    os.makedirs(outdir, exist_ok=True)
    runs = {}
    for name, calc in calcs.items():
        sub = os.path.join(outdir, "".join(c if c.isalnum() or c in "-_." else "_" for c in name))
        runs[name] = run_suite(material, calc, name, sub, quick=quick, only=only)
    steps = sorted({st for r in runs.values() for st in r["results"]})
    out_plots = {}
    for st in steps:
        per = {name: r["results"][st] for name, r in runs.items() if st in r["results"]}
        if len(per) < 2:
            continue
        kind = next(iter(per.values())).get("analysis")
        if kind in _plotters():
            out_plots[st] = _plotters()[kind](per, os.path.join(outdir, f"compare_{st}.png"))
        elif kind == "moire_sweep":
            out_plots[st] = plots.plot_moire_sweep(per, outdir, prefix="compare_sweep")
    return jsonable({"results": runs, "errors": {n: r["errors"] for n, r in runs.items()},
                     "plots": out_plots})
