"""Per-structure wall time vs atom count for the labellers.

    .venv/bin/python benchmarks/labelling.py [reference] [cp2k] [--max-layers N]

Prints one line per (labeller, structure). GPAW LCAO/PW rows are added when the
gpaw labeller exists.
"""

import sys
import tempfile

from moire_al.labelling import LabelRecord, get_labeller, samples


def pool(max_layers=3):
    out = []
    for mat in ("graphene", "hbn"):
        out.append(samples.stacked(mat, "AB"))
        for n in range(2, max_layers + 1):
            out.append(samples.twisted_21_79(mat, n_layers=n))
        out.append(samples.stacked(mat, "AB", n=10))
    return out


def main(argv):
    names = [a for a in argv if not a.startswith("-")] or ["reference"]
    for name in names:
        lab = get_labeller(name)
        for at in pool():
            with tempfile.TemporaryDirectory() as tmp:
                rec = lab.label(at, tmp)
            ok = isinstance(rec, LabelRecord)
            print(f"{name:10s} {at.info['material']:9s} {len(at):5d} atoms "
                  f"{rec.wall_time:8.3f} s {'ok' if ok else 'FAILED ' + rec.message}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
