"""``moire-al analyse ...``: the analyses from the command line.

Each subcommand reads a structure (where it needs one), builds the calculator
from ``--calc`` (``reference`` or a model directory; several comma-separated
specs run the comparison mode), writes ``<out>/<analysis>.json`` and PNG plots.
Heavy imports happen inside the handlers.
"""

from __future__ import annotations

import json
import os


def _calcs(args, material):
    from moire_al.analysis.calculators import calculator_name, get_calculator

    specs = [s for s in args.calc.split(",") if s]
    return {calculator_name(s, material): get_calculator(s, material) for s in specs}


def _read(path):
    from moire_al.structures import read_structures

    return read_structures(path)[0]


def _material(args, atoms=None):
    from moire_al.analysis.common import material_of

    return material_of(atoms, getattr(args, "material", None))


def _emit(args, name, result):
    from moire_al.analysis.common import write_json

    path = write_json(result, os.path.join(args.out, f"{name}.json"))
    print(json.dumps({"result": path, "plots": result.get("plots", {})}, default=str))
    return 0


def _run(args, name, fn, target, material, plot_ext=".png", **kw):
    from moire_al.analysis.suite import compare

    calcs = _calcs(args, material)
    os.makedirs(args.out, exist_ok=True)
    if len(calcs) == 1:
        (cname, calc), = calcs.items()
        res = fn(target, calc, calc_name=cname, **kw)
    else:
        res = compare(fn, target, calcs, outdir=args.out, **kw)
    return _emit(args, name, res)


def _relax(args):
    from moire_al.analysis.moire import moire_analysis
    from moire_al.analysis.relax import relax
    from moire_al.structures import write_structures

    atoms = _read(args.structure)
    material = _material(args, atoms)
    calcs = _calcs(args, material)
    results = {}
    for cname, calc in calcs.items():   # several: one sub-directory each
        out = args.out if len(calcs) == 1 else os.path.join(
            args.out, "".join(c if c.isalnum() or c in "-_." else "_" for c in cname))
        relaxed, res = relax(atoms, calc, fmax=args.fmax, steps=args.steps,
                             optimizer=args.optimizer, relax_cell=args.cell, calc_name=cname)
        os.makedirs(out, exist_ok=True)
        write_structures(os.path.join(out, "relaxed.xyz"), [relaxed])
        res["relaxed_path"] = os.path.join(out, "relaxed.xyz")
        if args.moire:
            res = {"relax": res, "moire": moire_analysis(relaxed, reference=atoms, calc_name=cname,
                                                         plot_dir=out)}
        results[cname] = res
    return _emit(args, "relax", results[cname] if len(calcs) == 1 else
                 {"analysis": "relax", "results": results, "plots": {}})


def _moire(args):
    from moire_al.analysis.moire import moire_analysis

    atoms = _read(args.structure)
    ref = _read(args.reference) if args.reference else None
    res = moire_analysis(atoms, reference=ref, calc_name=args.calc_name,
                         theta_deg=args.theta, plot_dir=args.out)
    return _emit(args, "moire", res)


def _sweep(args):
    from moire_al.analysis.moire import moire_sweep

    return _run(args, "moire_sweep", moire_sweep, args.material, args.material,
                ms=tuple(args.m), fmax=args.fmax, plot_dir=args.out)


def _binding(args):
    from moire_al.analysis.binding import binding_curves

    return _run(args, "binding", binding_curves, args.material, args.material,
                plot_path=os.path.join(args.out, "binding.png"))


def _strain(args):
    from moire_al.analysis.common import rectangular_monolayer
    from moire_al.analysis.strain import stress_strain

    atoms = _read(args.structure) if args.structure else rectangular_monolayer(args.material, 3, 2)
    return _run(args, "stress_strain", stress_strain, atoms, _material(args, atoms),
                max_strain=args.max_strain, direction=args.direction,
                plot_path=os.path.join(args.out, "stress_strain.png"))


def _phonons(args):
    from moire_al.analysis.phonons import phonon_bands

    atoms = _read(args.structure)
    return _run(args, "phonons", phonon_bands, atoms, _material(args, atoms),
                supercell=tuple(args.supercell), plot_path=os.path.join(args.out, "phonons.png"))


def _neb(args):
    from moire_al.analysis.neb import vacancy_migration

    atoms = _read(args.structure)
    return _run(args, "neb_vacancy", vacancy_migration, atoms, _material(args, atoms),
                layer=args.layer, n_images=args.images, climb=not args.no_climb,
                plot_path=os.path.join(args.out, "neb.png"))


def _defects(args):
    from moire_al.analysis.defects import defect_formation_energies

    atoms = _read(args.structure)
    return _run(args, "defects", defect_formation_energies, atoms, _material(args, atoms),
                layer=args.layer, plot_path=os.path.join(args.out, "defects.png"))


def _polarization_options(args) -> dict:
    from moire_al.analysis.tightbinding import SlaterKoster

    extra = {} if args.aa_distance is None else {"c": args.aa_distance}
    return {"model": SlaterKoster(cutoff=args.cutoff, a=args.a, convention=args.convention,
                                  **extra),
            "method": args.method, "n_moments": args.moments,
            "probe_radius": args.probe_radius if args.probe_radius > 0 else None,
            "min_width": args.min_width, "height": args.height}


def _polarization(args):
    from moire_al.analysis.polarization import (SWEEP_MS, polarization_analysis,
                                                polarization_sweep)
    from moire_al.errors import MoireALError

    opts = _polarization_options(args)
    if args.sweep:
        if args.structure:
            raise MoireALError("--sweep builds its own cells: give no STRUCTURE")
        return _run(args, "polarization_sweep", polarization_sweep, "hbn", "hbn",
                    ms=tuple(args.m or SWEEP_MS), fmax=args.fmax, d=args.d, plot_dir=args.out,
                    **opts)
    if not args.structure:
        raise MoireALError("give a STRUCTURE file, or --sweep")
    atoms = _read(args.structure)
    ref = _read(args.reference) if args.reference else None
    os.makedirs(args.out, exist_ok=True)
    res = polarization_analysis(atoms, calc_name=args.calc_name, reference=ref,
                                plot_dir=args.out,
                                sites_path=os.path.join(args.out, "polarization_sites.xyz"),
                                **opts)
    return _emit(args, "polarization", res)


def _md(args):
    from moire_al.analysis.md import md_analysis, md_temperatures
    from moire_al.errors import MoireALError

    atoms = _read(args.structure)
    material = _material(args, atoms)
    if len([c for c in args.calc.split(",") if c.strip()]) != 1:
        raise MoireALError("analyse md takes one calculator (--calc), not a comma-separated list")
    (cname, calc), = _calcs(args, material).items()
    opts = dict(steps=args.steps, ensemble=args.ensemble, relax_first=args.relax, pin_aa=args.pin_aa,
                phonon_dos=args.phonon_dos, phonon_supercell=tuple(args.phonon_supercell),
                kappa_runs=args.kappa_runs, kappa_steps=args.kappa_steps,
                kappa_equil_steps=args.kappa_equil_steps, timestep_fs=args.timestep,
                friction_per_fs=args.friction, seed=args.seed, sample_every=args.sample_every,
                traj_every=args.traj_every, sigma_f_limit=args.sigma_f_limit,
                uncertainty_every=args.uncertainty_every)
    os.makedirs(args.out, exist_ok=True)
    if args.temperatures:
        try:
            temps = [float(t) for t in args.temperatures.split(",") if t.strip()]
        except ValueError:
            raise MoireALError(f"--temperatures {args.temperatures!r}: expected comma-separated kelvin, "
                               "e.g. 300,500,700,1000") from None
        res = md_temperatures(atoms, calc, temps, calc_name=cname, outdir=args.out, **opts)
        for r in res["runs"].values():       # each run's own md.json is in its sub-directory
            r.pop("vacf", None), r.pop("vdos", None)
    else:
        res = md_analysis(atoms, calc, cname, temperature=args.temperature, outdir=args.out, **opts)
    from moire_al.analysis.common import write_json

    path = write_json(res, os.path.join(args.out, "md.json"))
    print(json.dumps({"result": path, "stable": res["stable"],
                      "stop_step": res.get("stop_step"), "reason": res.get("reason"),
                      "plots": res.get("plots", {})}, default=str))
    return 0


def _suite(args):
    from moire_al.analysis.calculators import calculator_name, get_calculator
    from moire_al.analysis.suite import run_suite

    calcs = _calcs(args, args.material)
    if len(calcs) > 1:
        from moire_al.analysis.suite import compare_suite

        res = compare_suite(args.material, calcs, args.out, quick=args.quick)
        failed = {n: e for n, e in res["errors"].items() if e}
        print(json.dumps({"outdir": args.out, "errors": failed, "plots": res["plots"]}))
        return 0 if not failed else 1
    res = run_suite(args.material, get_calculator(args.calc, args.material),
                    args.calc_name or calculator_name(args.calc, args.material), args.out,
                    quick=args.quick)
    print(json.dumps({"outdir": args.out, "errors": res["errors"],
                      "wall_time": res["wall_time"]}))
    return 0 if not res["errors"] else 1


def register(subparsers) -> None:
    p = subparsers.add_parser("analyse", help="analyses with a fitted model or the reference "
                              "potential (relax, moire, binding, strain, phonons, neb, defects, md)")
    sub = p.add_subparsers(dest="analysis", metavar="ANALYSIS")

    def add(name, func, help, structure=True, optional_structure=False):
        q = sub.add_parser(name, help=help)
        if structure:
            q.add_argument("structure", nargs="?" if optional_structure else None,
                           help="structure file (extxyz)")
        q.add_argument("--calc", default="reference",
                       help="'reference' or a model directory; comma-separated = compare")
        q.add_argument("--material", default=None, choices=["graphene", "hbn"])
        q.add_argument("--out", default="analysis", help="output directory")
        q.set_defaults(func=func)
        return q

    q = add("relax", _relax, "relax a structure (positions, optionally in-plane cell)")
    q.add_argument("--fmax", type=float, default=1e-3)
    q.add_argument("--steps", type=int, default=1000)
    q.add_argument("--optimizer", default="LBFGS", choices=["LBFGS", "FIRE", "BFGS"])
    q.add_argument("--cell", action="store_true", help="also relax the in-plane cell")
    q.add_argument("--moire", action="store_true", help="run the moiré analysis afterwards")

    q = sub.add_parser("moire", help="moiré analysis of a relaxed bilayer (no calculator)")
    q.add_argument("structure")
    q.add_argument("--reference", help="unrelaxed (rigid twist) structure for displacements")
    q.add_argument("--theta", type=float, default=None)
    q.add_argument("--calc-name", default=None)
    q.add_argument("--out", default="analysis")
    q.set_defaults(func=_moire)

    q = add("sweep", _sweep, "relax + moiré analysis over commensurate angles", structure=False)
    q.set_defaults(material="graphene")
    q.add_argument("--m", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    q.add_argument("--fmax", type=float, default=1e-3)

    q = add("binding", _binding, "binding curves of high-symmetry stackings", structure=False)
    q.set_defaults(material="graphene")

    q = add("strain", _strain, "uniaxial stress-strain, Young's modulus",
            optional_structure=True)
    q.set_defaults(material="graphene")
    q.add_argument("--max-strain", type=float, default=0.2)
    q.add_argument("--direction", default="armchair", choices=["armchair", "zigzag"])

    q = add("phonons", _phonons, "phonon bands Γ-M-K-Γ (phonopy)")
    q.add_argument("--supercell", type=int, nargs=3, default=[4, 4, 1])

    q = add("neb", _neb, "vacancy migration barrier (climbing-image NEB)")
    q.add_argument("--layer", type=int, default=None)
    q.add_argument("--images", type=int, default=5)
    q.add_argument("--no-climb", action="store_true")

    q = add("defects", _defects, "defect formation energies")
    q.add_argument("--layer", type=int, default=None)

    q = add("polarization", _polarization, "induced charge, surface potential and P_max of a "
            "twisted hBN bilayer (p_z tight binding, seed 000); --sweep: relaxed vs rigid over θ",
            optional_structure=True)
    q.add_argument("--sweep", action="store_true",
                   help="relax (--calc) and evaluate r = 1 cells --m (21.8° .. 1.08°), relaxed vs rigid")
    q.add_argument("--m", type=int, nargs="+", default=None,
                   help="r = 1 cells (default: the seed's angles, m = 1 .. 30)")
    q.add_argument("--d", type=float, default=3.4, help="interlayer distance of the built cells (Å)")
    q.add_argument("--fmax", type=float, default=1e-3)
    q.add_argument("--reference", default=None,
                   help="reference structure (same atoms) instead of the isolated layers")
    q.add_argument("--method", default="kpm", choices=["kpm", "exact"])
    q.add_argument("--moments", type=int, default=128, help="KPM moments")
    q.add_argument("--probe-radius", type=float, default=20.0,
                   help="KPM probing distance (Å); 0 = exact per-site moments")
    q.add_argument("--height", type=float, default=3.35,
                   help="height of the potential map above the top layer (Å)")
    q.add_argument("--aa-distance", type=float, default=None,
                   help="c of the model: the AA interlayer distance (Å; default: the PBE+D3(BJ) "
                        "AA minimum, moire_al.analysis.tightbinding.DEFAULT_C)")
    q.add_argument("--a", type=float, default=None,
                   help="lattice parameter of the model (Å; default: the structure's)")
    q.add_argument("--cutoff", type=float, default=6.0, help="hopping cut-off (Å)")
    q.add_argument("--convention", default="seed", choices=["seed", "slater-koster"],
                   help="hopping sign: H_ij = -t(r) as the seed's C2 (default) or +t(r)")
    q.add_argument("--min-width", type=float, default=40.0,
                   help="repeat the cell in-plane until this wide (Å): the k-point sampling")
    q.add_argument("--calc-name", default=None)


    q = add("md", _md, "molecular dynamics: stability, D(T), VACF and vibrational DOS, Green-Kubo κ, "
            "time-averaged structure")
    q.add_argument("--temperature", type=float, default=300.0, help="K (default 300)")
    q.add_argument("--temperatures", default=None,
                   help="comma-separated K, e.g. 300,500,700,1000: one run each, D(T) and an Arrhenius plot")
    q.add_argument("--steps", type=int, default=1000)
    q.add_argument("--ensemble", default="langevin", choices=["langevin", "nve"])
    q.add_argument("--timestep", type=float, default=1.0, help="fs (default 1)")
    q.add_argument("--friction", type=float, default=0.01, help="Langevin friction, 1/fs (default 0.01)")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--sample-every", type=int, default=2,
                   help="keep positions/velocities every n steps for MSD/VACF (0: none)")
    q.add_argument("--traj-every", type=int, default=10, help="trajectory frames (DIR/md.traj) every n steps")
    q.add_argument("--relax", action="store_true", help="relax (1e-3 eV/Å) before the run")
    q.add_argument("--pin-aa", action="store_true", help="hold the AA-node atoms fixed (seed 000)")
    q.add_argument("--phonon-dos", action="store_true",
                   help="phonopy DOS of the same calculator under the vibrational DOS")
    q.add_argument("--phonon-supercell", type=int, nargs=3, default=[1, 1, 1])
    q.add_argument("--kappa-runs", type=int, default=0, help="Green-Kubo κ from this many independent runs")
    q.add_argument("--kappa-steps", type=int, default=5000, help="NVE steps per κ run")
    q.add_argument("--kappa-equil-steps", type=int, default=1000, help="Langevin steps before each κ run")
    q.add_argument("--sigma-f-limit", type=float, default=None,
                   help="stop when the committee's max force std exceeds this (eV/Å; ACE models)")
    q.add_argument("--uncertainty-every", type=int, default=10)

    q = add("suite", _suite, "the standard analysis suite with one calculator",
            structure=False)
    q.set_defaults(material="graphene")
    q.add_argument("--calc-name", default=None)
    q.add_argument("--quick", action="store_true")
