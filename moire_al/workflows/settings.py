"""Parameters of a hyperactive learning loop: one small, validated dataclass.

The same settings travel as a plain dict in a Firework spec (and in the ready YAML
files of ``workflows/``), so ``from_dict`` rejects unknown keys and bad values with a
message naming the parameter: a typo in a workflow file fails the first Firework
with that name in its error, instead of running a silently different loop.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from moire_al.errors import MoireALError, SettingsError

MATERIALS = ("graphene", "hbn")
LABELLERS = ("reference", "cp2k", "gpaw", "dataset")
#: keys of a pool read from a labelled file: ``{"file": path, "layers": [1, 2, 3]}``
POOL_FILE_KEYS = ("file", "layers")
CRITERIA = ("rel_force_unc", "max_force_std")

__all__ = ["LoopSettings", "SettingsError", "MATERIALS", "LABELLERS", "CRITERIA"]


def loop_labellers() -> tuple:
    """Labellers a loop can use: the built-in ones that label, and registered ones."""
    from moire_al.labelling import labeller_names

    return LABELLERS + tuple(n for n in labeller_names() if n not in LABELLERS and n != "vasp-inputs")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass
class LoopSettings:
    material: str = "graphene"
    pool: dict | str = "small"          # a PoolRecipe dict, "small" / "paper", or {"file": path}
    labeller: str = "reference"
    labeller_settings: dict = field(default_factory=dict)
    model: dict = field(default_factory=dict)   # ACEModel hyperparameters (committee_size etc.)
    n_initial: int = 10
    n_test: int = 10
    batch_size: int = 50
    threshold: float = 0.02             # eV/Å: stop when max_i ‖σ F_i‖ over the pool is below it
    criterion: str = "rel_force_unc"    # ranking of candidates: relative or absolute force uncertainty
    max_rounds: int = 10
    chunk_size: int = 1                 # structures per labelling Firework
    seed: int = 0
    name: str = ""
    #: an ``explore`` step per round >= 1 (off when empty): uncertainty-biased MD with the
    #: previous round's model from ``n_starts`` training structures; its finds join the
    #: candidates scored that round. Keys: ``n_starts`` and ExploreSettings fields
    #: (temperatures_K, steps, tau_rel, ramp_steps, tolerance, seed, timestep_fs, friction_per_fs).
    explore: dict = field(default_factory=dict)
    #: fit each round as this many shard Fireworks (category ``fit``: partial normal equations
    #: to GridFS, in parallel on the workers that reach the database) and a reduce; 1 fits
    #: in the round's own Firework. Either way the same model (to round-off).
    fit_shards: int = 1

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        def bad(name, why):
            raise SettingsError(f"loop parameter '{name}': {why}")

        if self.material not in MATERIALS:
            bad("material", f"{self.material!r} is not one of {MATERIALS}")
        if self.labeller not in loop_labellers():
            bad("labeller", f"{self.labeller!r} is not one of {loop_labellers()}")
        if self.criterion not in CRITERIA:
            bad("criterion", f"{self.criterion!r} is not one of {CRITERIA}")
        if not isinstance(self.pool, (dict, str)):
            bad("pool", "must be 'small', 'paper' or a PoolRecipe mapping")
        if isinstance(self.pool, str) and self.pool not in ("small", "paper"):
            bad("pool", f"{self.pool!r} is not 'small', 'paper' or a PoolRecipe mapping")
        if self.pool_file is not None:
            extra = sorted(set(self.pool) - set(POOL_FILE_KEYS))
            if extra:
                bad("pool", f"a pool from a file takes only {POOL_FILE_KEYS}, not {extra}")
            if not isinstance(self.pool["file"], str) or not self.pool["file"]:
                bad("pool", "'file' must be the path of a structure file")
            layers = self.pool.get("layers")
            if layers is not None and (not isinstance(layers, list) or not layers or not all(
                    isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in layers)):
                bad("pool", f"'layers' must be a list of layer counts, got {layers!r}")
        for name in ("n_initial", "batch_size", "max_rounds", "chunk_size", "fit_shards"):
            v = getattr(self, name)
            if not _is_int(v) or v < 1:
                bad(name, f"must be a positive integer, got {v!r}")
        if not _is_int(self.n_test) or self.n_test < 0:
            bad("n_test", f"must be a non-negative integer, got {self.n_test!r}")
        if not _is_int(self.seed):
            bad("seed", f"must be an integer, got {self.seed!r}")
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)) \
                or not self.threshold > 0:
            bad("threshold", f"must be a positive number, got {self.threshold!r}")
        if not isinstance(self.name, str):
            bad("name", f"must be a string, got {self.name!r}")
        if not isinstance(self.labeller_settings, dict):
            bad("labeller_settings", "must be a mapping")
        if not isinstance(self.model, dict):
            bad("model", "must be a mapping of ACEModel hyperparameters")
        if not isinstance(self.explore, dict):
            bad("explore", "must be a mapping (n_starts and explore settings), empty for no exploration")
        if self.explore:
            try:
                self.explore_settings()
            except (TypeError, MoireALError) as exc:
                bad("explore", str(exc))
        # The nested parameters too, so a bad one fails here and not on a worker after
        # the pool is stored and labels are computed.
        if self.pool_file is None:
            self.pool_recipe()
        try:
            self.labeller_obj()
        except (MoireALError, ValueError, TypeError) as exc:
            bad("labeller_settings", str(exc))
        from moire_al.models.ace import ACEModel

        try:
            ACEModel.check_params(self.model)
        except (MoireALError, ValueError, TypeError) as exc:
            bad("model", str(exc))

    def explore_settings(self, round_: int = 0):
        """(n_starts, ExploreSettings) of the explore step of round ``round_`` (its own seed)."""
        import dataclasses

        from moire_al.analysis.explore import ExploreSettings

        opts = dict(self.explore)
        n_starts = opts.pop("n_starts", 2)
        if not isinstance(n_starts, int) or isinstance(n_starts, bool) or n_starts < 1:
            raise MoireALError(f"n_starts must be a positive integer, got {n_starts!r}")
        known = {f.name for f in dataclasses.fields(ExploreSettings)}
        unknown = sorted(set(opts) - known)
        if unknown:
            raise MoireALError(f"unknown explore setting(s) {unknown}; known: n_starts, {', '.join(sorted(known))}")
        es = ExploreSettings(**opts).validate()
        es.seed = es.seed + self.seed + 1000 * round_
        return n_starts, es

    @classmethod
    def from_dict(cls, d: dict) -> "LoopSettings":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise SettingsError(
                f"unknown loop parameter(s) {', '.join(repr(k) for k in unknown)}; "
                f"known: {', '.join(sorted(known))}")
        return cls(**d)

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def pool_file(self) -> str | None:
        """The structure file the pool is read from, or None for a generated pool."""
        return self.pool.get("file") if isinstance(self.pool, dict) and "file" in self.pool else None

    def pool_recipe(self):
        from moire_al.structures.pool import PoolRecipe

        if isinstance(self.pool, dict):
            try:
                return PoolRecipe.from_dict(self.pool)
            except (TypeError, ValueError, MoireALError) as exc:
                raise SettingsError(f"loop parameter 'pool': {exc}") from None
        return PoolRecipe.small() if self.pool == "small" else PoolRecipe.paper()

    def labeller_obj(self):
        """The loop's labeller (constructing it checks ``labeller_settings``)."""
        from moire_al.labelling import get_labeller

        return get_labeller(self.labeller, self.labeller_settings)


def _from_dict(cls, d: dict, what: str):
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d or {}) - known)
    if unknown:
        raise SettingsError(f"unknown {what} parameter(s) {', '.join(repr(k) for k in unknown)}; "
                            f"known: {', '.join(sorted(known))}")
    return cls(**(d or {}))


def _check_labeller(labeller, labeller_settings, what: str) -> None:
    if labeller not in loop_labellers():
        raise SettingsError(f"{what} parameter 'labeller': {labeller!r} is not one of {loop_labellers()}")
    if not isinstance(labeller_settings, dict):
        raise SettingsError(f"{what} parameter 'labeller_settings': must be a mapping")
    from moire_al.labelling import get_labeller

    try:
        get_labeller(labeller, labeller_settings)
    except (MoireALError, ValueError, TypeError) as exc:
        raise SettingsError(f"{what} parameter 'labeller_settings': {exc}") from None


@dataclass
class FinetuneSettings:
    """A fine-tuning job as Fireworks (``moire_al.workflows.finetuning``): label ``task``
    (structure hashes in the store) with the labeller, refit model ``model_id`` (store
    id) on its training labels ``train`` + the task labels, store the new model."""

    model_id: str = ""
    task: list = field(default_factory=list)       # structure hashes
    train: list = field(default_factory=list)      # [structure hash, label key] of the base model's training set
    test: list = field(default_factory=list)       # [hash, key] of the original held-out set ([]: train stands in)
    labeller: str = "cp2k"
    labeller_settings: dict = field(default_factory=dict)
    chunk_size: int = 1
    finetune_id: str = ""
    name: str = ""

    def __post_init__(self) -> None:
        for name in ("model_id", "finetune_id", "name"):
            if not isinstance(getattr(self, name), str):
                raise SettingsError(f"finetune parameter '{name}': must be a string")
        for name in ("task", "train", "test"):
            if not isinstance(getattr(self, name), list):
                raise SettingsError(f"finetune parameter '{name}': must be a list")
        if not all(isinstance(p, (list, tuple)) and len(p) == 2 for p in self.train + self.test):
            raise SettingsError("finetune parameters 'train' and 'test': [structure hash, label key] pairs")
        if not _is_int(self.chunk_size) or self.chunk_size < 1:
            raise SettingsError(f"finetune parameter 'chunk_size': must be a positive integer, got {self.chunk_size!r}")
        _check_labeller(self.labeller, self.labeller_settings, "finetune")

    @classmethod
    def from_dict(cls, d: dict) -> "FinetuneSettings":
        return _from_dict(cls, d, "finetune")

    def as_dict(self) -> dict:
        return asdict(self)


#: NEB options of the fine-tuning workflow (keyword arguments of vacancy_migration)
NEB_OPTIONS = ("n_images", "fmax", "steps", "relax_fmax", "climb", "layer")


@dataclass
class NebFinetuneSettings:
    """Seed 003's fine-tuning example as one workflow: a base model fitted on the
    labels of ``train_file`` (replayed), a vacancy NEB in the twisted bilayer
    (``m``, ``r``) with it, the images labelled, the model refitted on the union,
    the NEB again with the new model. ``rounds`` > 1 repeats label → refit → NEB on
    each new path (round k's task: the images of round k−1's NEB; its labels give the
    labeller's barrier along that path, the check of the previous model), until
    ``rounds`` or until the model's barrier on a path agrees with its labels' to
    ``barrier_tol`` eV."""

    material: str = "graphene"
    m: int = 2                                  # twisted bilayer cell: m = 2, r = 1 is 76 atoms (75 with the vacancy)
    r: int = 1
    labeller: str = "cp2k"
    labeller_settings: dict = field(default_factory=dict)
    train_file: str = "data/dft/graphene.extxyz"   # the base model's labels (replayed by hash)
    model: dict = field(default_factory=dict)      # ACEModel hyperparameters of the base model
    neb: dict = field(default_factory=lambda: {"n_images": 3, "fmax": 0.05, "steps": 300, "relax_fmax": 0.01})
    seed: int = 0
    rounds: int = 1                             # label → refit → NEB rounds at most
    barrier_tol: float = 0.05                   # eV: stop when a model's barrier matches its path's labels
    finetune_id: str = ""
    name: str = ""

    def __post_init__(self) -> None:
        what = "NEB fine-tuning"
        if not _is_int(self.rounds) or self.rounds < 1:
            raise SettingsError(f"{what} parameter 'rounds': must be a positive integer")
        if isinstance(self.barrier_tol, bool) or not isinstance(self.barrier_tol, (int, float)) \
                or not self.barrier_tol >= 0:
            raise SettingsError(f"{what} parameter 'barrier_tol': must be a number >= 0 (eV)")
        if self.material not in MATERIALS:
            raise SettingsError(f"{what} parameter 'material': {self.material!r} is not one of {MATERIALS}")
        for name in ("m", "r"):
            if not _is_int(getattr(self, name)) or getattr(self, name) < 1:
                raise SettingsError(f"{what} parameter '{name}': must be a positive integer")
        if not _is_int(self.seed):
            raise SettingsError(f"{what} parameter 'seed': must be an integer")
        if not isinstance(self.train_file, str) or not self.train_file:
            raise SettingsError(f"{what} parameter 'train_file': the labelled file of the base model's training set")
        if not isinstance(self.neb, dict) or set(self.neb) - set(NEB_OPTIONS):
            raise SettingsError(f"{what} parameter 'neb': a mapping with keys among {NEB_OPTIONS}")
        if not isinstance(self.model, dict):
            raise SettingsError(f"{what} parameter 'model': must be a mapping of ACEModel hyperparameters")
        from moire_al.models.ace import ACEModel

        try:
            ACEModel.check_params(self.model)
        except (MoireALError, ValueError, TypeError) as exc:
            raise SettingsError(f"{what} parameter 'model': {exc}") from None
        _check_labeller(self.labeller, self.labeller_settings, what)

    @classmethod
    def from_dict(cls, d: dict) -> "NebFinetuneSettings":
        return _from_dict(cls, d, "NEB fine-tuning")

    def as_dict(self) -> dict:
        return asdict(self)
