"""``moire-al build ...``: write structures to extxyz (optionally a PNG picture).

Only stdlib imports at module level so ``moire-al --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import os
import time


def _common(p: argparse.ArgumentParser, material: bool = True) -> None:
    if material:
        p.add_argument("--material", default="graphene", choices=["graphene", "hbn"])
        p.add_argument("--a", type=float, default=None, help="lattice constant, Å (default 2.46 / 2.504)")
    p.add_argument("-o", "--output", required=True, help="output file (extxyz)")
    p.add_argument("--png", nargs="?", const="", default=None,
                   help="also draw a top view + local stacking map (default: OUTPUT with .png)")


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.replace(",", " ").split()]


def _finish(args, atoms_list, t0) -> int:
    from moire_al.structures.io import write_structures

    write_structures(args.output, atoms_list)
    n = sum(len(a) for a in atoms_list)
    print(f"wrote {len(atoms_list)} structure(s), {n} atoms, to {args.output} in {time.perf_counter() - t0:.2f} s")
    if args.png is not None:
        from moire_al.structures.plot import draw

        png = args.png or os.path.splitext(args.output)[0] + ".png"
        draw(atoms_list[0], png)
        print(f"picture: {png}")
    return 0


def _twisted(args) -> int:
    t0 = time.perf_counter()
    from moire_al.errors import StructureError
    from moire_al.structures import twisted_multilayer

    if args.m is None and args.angle is None:
        raise StructureError("give --angle or --m")
    at = twisted_multilayer(args.material, args.layers, m=args.m, r=args.r, angle=args.angle,
                            distances=_floats(args.d), stacking=args.stacking, a=args.a,
                            _generator="twisted_bilayer" if args.layers == 2 else "twisted_multilayer")
    print(f"theta = {at.info['theta_deg']:.4f} deg (m={at.info['m']}, r={at.info['r']}), "
          f"moire period {at.info['moire_period']:.2f} A")
    return _finish(args, [at], t0)


def _multilayer(args) -> int:
    t0 = time.perf_counter()
    from moire_al.structures import multilayer

    shifts = None if args.shifts is None else [_floats(s) for s in args.shifts]
    at = multilayer(args.material, args.stacking, _floats(args.d), n=args.n, a=args.a,
                    shifts=shifts, n_layers=args.layers)
    return _finish(args, [at], t0)


def _local(args) -> int:
    t0 = time.perf_counter()
    from moire_al.structures import locally_twisted

    shift = None if args.shift is None else _floats(args.shift)
    at = locally_twisted(args.material, args.theta_local, m=args.m, r=args.r, shifts=shift, r1=args.r1,
                         r2=args.r2, n_layers=args.layers, distances=_floats(args.d),
                         supercell=args.supercell, stacking=args.stacking, a=args.a)
    print(f"theta_c = {at.info['theta_deg']:.4f} deg, theta_local = {args.theta_local} deg, "
          f"r1 = {at.info['r1']:.2f} A, r2 = {at.info['r2']:.2f} A")
    return _finish(args, [at], t0)


def _pool(args) -> int:
    t0 = time.perf_counter()
    from moire_al.structures.pool import PoolRecipe, make_pool

    if args.recipe in ("small", "paper"):
        recipe = getattr(PoolRecipe, args.recipe)()
    else:
        with open(args.recipe) as fh:
            recipe = PoolRecipe.from_dict(json.load(fh))
    pool = make_pool(args.material, recipe, args.seed)
    return _finish(args, pool, t0)


def _defect(args) -> int:
    t0 = time.perf_counter()
    from moire_al.structures import defects
    from moire_al.structures.io import read_structures

    atoms = read_structures(args.input)[0]
    site = None
    if args.site is not None:
        vals = _floats(args.site)
        site = int(vals[0]) if len(vals) == 1 else vals[:2]
    func = {"vacancy": defects.vacancy, "stone-wales": defects.stone_wales,
            "interstitial-intralayer": defects.interstitial_intralayer,
            "interstitial-interlayer": defects.interstitial_interlayer}[args.kind]
    return _finish(args, [func(atoms, layer=args.layer, site=site)], t0)


def register(subparsers) -> None:
    build = subparsers.add_parser("build", help="build structures (twisted, local, multilayer, pool, defect)")
    sub = build.add_subparsers(dest="build_command", metavar="KIND")

    p = sub.add_parser("twisted", help="commensurate twisted bilayer / alternating multilayer")
    p.add_argument("--angle", type=float, help="twist angle (deg); nearest commensurate cell of family r")
    p.add_argument("--m", type=int)
    p.add_argument("--r", type=int, default=1)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--d", default="3.4", help="interlayer distance(s), Å (comma separated)")
    p.add_argument("--stacking", default="AA", help="AA or AA' (hBN: B over N)")
    _common(p)
    p.set_defaults(func=_twisted)

    p = sub.add_parser("multilayer", help="untwisted multilayer (AA, AB, BA, ABC, SP, Mid, AA', ...)")
    p.add_argument("--stacking", default="AB")
    p.add_argument("--layers", type=int, default=None)
    p.add_argument("--d", default="3.35", help="interlayer distance(s), Å (comma separated)")
    p.add_argument("--n", type=int, default=1, help="n x n supercell")
    p.add_argument("--shifts", nargs="*", help="extra shift per layer, 'x,y' in Å")
    _common(p)
    p.set_defaults(func=_multilayer)

    p = sub.add_parser("local", help="locally twisted cell (seed 003 §II.3.1)")
    p.add_argument("--theta-local", type=float, required=True)
    p.add_argument("--m", type=int)
    p.add_argument("--r", type=int, default=1)
    p.add_argument("--supercell", type=int, help="untwisted n x n parent instead of (m, r)")
    p.add_argument("--shift", help="disregistry of layer 1, 'x,y' Å")
    p.add_argument("--r1", type=float)
    p.add_argument("--r2", type=float)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--d", default="3.4")
    p.add_argument("--stacking", default=None)
    _common(p)
    p.set_defaults(func=_local)

    p = sub.add_parser("pool", help="candidate pool (seeded)")
    p.add_argument("--recipe", default="small", help="small, paper, or a JSON file of PoolRecipe fields")
    p.add_argument("--seed", type=int, default=0)
    _common(p)
    p.set_defaults(func=_pool)

    p = sub.add_parser("defect", help="add a point defect to a structure file")
    p.add_argument("input")
    p.add_argument("--kind", required=True,
                   choices=["vacancy", "stone-wales", "interstitial-intralayer", "interstitial-interlayer"])
    p.add_argument("--layer", type=int, default=0)
    p.add_argument("--site", help="atom index, or 'x,y' Å (default: atom nearest the cell centre)")
    _common(p, material=False)
    p.set_defaults(func=_defect)

    build.set_defaults(func=lambda args: (build.print_help(), 2)[1])
