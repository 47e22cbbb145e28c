"""Per-structure wall time vs atom count for the labellers.

    .venv/bin/python benchmarks/labelling.py [reference] [cp2k] [gpaw-lcao] [gpaw-pw]
                                             [--full] [--max-layers N] [--ranks N]

Prints one line per (labeller, structure). ``reference`` runs the whole pool
(monolayer-stacked and twisted 21.79° cells up to ``--max-layers`` layers, 200-atom
10x10 bilayers). The DFT rows (``cp2k``, ``gpaw-lcao``, ``gpaw-pw``) use each
labeller's production defaults (CP2K 280/40 Ry; GPAW PW 500 eV or LCAO dzp; k
spacing 0.3 Å⁻¹) on the 4-atom AB graphene / hBN cells by default (~20-70 s per
structure and code on 2 cores); ``--full`` adds 16-atom 2x2 AB cells, the 28-atom
twisted bilayers and a 24-atom ABA trilayer (tens of minutes). ``--ranks`` sets GPAW's MPI
ranks (OpenMPI's /usr/bin/mpiexec).
"""

import sys
import tempfile

import scaffold  # benchmarks/scaffold.py: the tests' structures
from moire_al.labelling import LabelRecord, get_labeller

samples = scaffold.samples()

DFT = {
    "cp2k": ("cp2k", {}),
    "gpaw-lcao": ("gpaw", {"mode": "lcao"}),
    "gpaw-pw": ("gpaw", {"mode": "pw"}),
}


def pool(max_layers=3):
    out = []
    for mat in ("graphene", "hbn"):
        out.append(samples.stacked(mat, "AB"))
        for n in range(2, max_layers + 1):
            out.append(samples.twisted_21_79(mat, n_layers=n))
        out.append(samples.stacked(mat, "AB", n=10))
    return out


def dft_pool(full=False):
    out = [samples.stacked(mat, "AB") for mat in ("graphene", "hbn")]
    if full:
        for mat in ("graphene", "hbn"):
            out.append(samples.stacked(mat, "AB", n=2))
            out.append(samples.twisted_21_79(mat, n_layers=2))
        out.append(samples.stacked("graphene", "ABA", n=2))
    return sorted(out, key=len)


def _opt(argv, flag, default):
    if flag in argv:
        return int(argv[argv.index(flag) + 1])
    return default


def main(argv):
    skip = {i + 1 for i, a in enumerate(argv) if a in ("--max-layers", "--ranks")}
    names = [a for i, a in enumerate(argv) if not a.startswith("-") and i not in skip]
    names = names or ["reference"]
    full = "--full" in argv
    ranks = _opt(argv, "--ranks", 1)
    for name in names:
        if name in DFT:
            code, settings = DFT[name]
            if code == "gpaw":
                settings = settings | {"ranks": ranks}
            lab = get_labeller(code, settings)
            structures = dft_pool(full)
        else:
            lab = get_labeller(name)
            structures = pool(_opt(argv, "--max-layers", 3))
        for at in structures:
            with tempfile.TemporaryDirectory() as tmp:
                rec = lab.label(at, tmp)
            ok = isinstance(rec, LabelRecord)
            print(f"{name:10s} {at.info['material']:9s} {len(at):5d} atoms "
                  f"{rec.wall_time:8.3f} s {'ok' if ok else 'FAILED ' + rec.message}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
