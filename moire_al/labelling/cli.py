"""``moire-al label``: batch labelling, resumable, written atomically.

Only stdlib imports at module top; the labellers load inside the handler.
"""

from __future__ import annotations

import json
import os


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "label",
        help="label structures with a DFT code or the reference potential",
        description=(
            "Label every structure in IN with LABELLER and write them to OUT (extxyz, REF_ "
            "keys). Resumable: structures already in OUT (same label key = structure + "
            "settings) are skipped, failures (OUT.failures.json) are retried. OUT is "
            "rewritten atomically after each structure."
        ),
    )
    p.add_argument("input", help="structures (extxyz or anything ase reads)")
    p.add_argument("-o", "--output", required=True, help="labelled structures (extxyz)")
    from moire_al.labelling import labeller_names

    p.add_argument("--labeller", default="cp2k", choices=labeller_names(),
                   help="dataset: replay labels from a labelled file (--settings with {\"path\": ...})")
    p.add_argument("--settings", help="JSON (or YAML) file with labeller settings")
    p.add_argument("--workdir", default=None, help="run directories (default: OUT.runs/)")
    p.set_defaults(func=handler)


def _read_settings(path):
    """Labeller settings from a JSON or YAML file: a mapping, or one clear line."""
    from moire_al.errors import SettingsError

    if not path:
        return None
    try:
        with open(path) as fh:
            text = fh.read()
    except OSError as exc:
        raise SettingsError(f"--settings {path}: {exc.strerror or exc}") from None
    try:
        data = json.loads(text)
    except ValueError:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            where = getattr(exc, "problem_mark", None)
            raise SettingsError(f"--settings {path}: neither JSON nor YAML"
                                + (f" (line {where.line + 1})" if where else "")) from None
    if data is None:
        return None
    if not isinstance(data, dict):
        raise SettingsError(f"--settings {path}: expected a mapping of labeller settings, got {type(data).__name__}")
    return data


def _read_input(path):
    """Structures to label, validated (cells, overlaps, species, NaN)."""
    from moire_al.structures import read_structures

    return read_structures(path)


def _atomic_json(path, data):
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as fh:
        json.dump(data, fh, indent=1)
    os.replace(tmp, path)


def handler(args) -> int:
    from tqdm import tqdm

    from moire_al.labelling import get_labeller
    from moire_al.labelling.base import LabelFailure, structure_name
    from moire_al.labelling.cache import LabelCache

    labeller = get_labeller(args.labeller, _read_settings(args.settings))
    images = _read_input(args.input)
    workdir = args.workdir or f"{args.output}.runs"
    fail_path = f"{args.output}.failures.json"

    cache = LabelCache(args.output)
    failures = {}
    n_fail = 0
    for atoms in tqdm(images, desc=f"label ({labeller.name})", unit="structure"):
        result = cache.label(labeller, atoms, workdir)
        if isinstance(result, LabelFailure):
            failures[result.key] = result.as_dict() | {"structure": structure_name(atoms)}
            n_fail += 1
            _atomic_json(fail_path, list(failures.values()))
    n_new, done = cache.n_new, cache.images
    if failures:
        _atomic_json(fail_path, list(failures.values()))
    elif os.path.exists(fail_path):
        os.remove(fail_path)
    print(f"labelled {n_new} new, {len(done)} in {args.output}, {n_fail} failed"
          + (f" (see {fail_path})" if n_fail else ""))
    return 1 if n_fail else 0
