"""Where moire-al keeps its data, how it reaches the job database, and every
``MOIRE_AL_*`` environment variable (:class:`Environment`, the one place that reads them).

Resolution order for the database URI:

1. ``MOIRE_AL_DB_URI`` (e.g. a production ``mongod`` or MongoDB Atlas),
2. the local server started by ``moire-al db start`` (its ``server.json``),
3. ``mongodb://127.0.0.1:27117/?directConnection=true``.

The database name is ``MOIRE_AL_DB_NAME`` (default ``moire_al``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields
from pathlib import Path

DEFAULT_PORT = 27117
DEFAULT_DB_NAME = "moire_al"
# How long a worker (rlaunch and the Firetasks in it) waits for an unreachable job
# database before giving up: long enough to ride out a server restart.
DEFAULT_DB_WAIT_S = 300.0
# How long an interactive command (status, resume, webgui, ...) waits: fail fast.
INTERACTIVE_DB_WAIT_S = 10.0


@dataclass(frozen=True)
class Environment:
    """moire-al's settings from ``MOIRE_AL_*`` environment variables.

    Each field's metadata names its variable and says what it does; ``docs/architecture.md``
    lists the same table (a test keeps them equal). Read with :func:`environment` (at
    call time, so a changed variable takes effect in the next call).
    """

    data: Path                     # MOIRE_AL_DATA
    db_path: Path                  # MOIRE_AL_DB_PATH
    db_uri: str | None             # MOIRE_AL_DB_URI
    db_name: str                   # MOIRE_AL_DB_NAME
    db_wait_s: float               # MOIRE_AL_DB_WAIT
    secantusd: str | None          # MOIRE_AL_SECANTUSD
    ace_evaluator: str | None      # MOIRE_AL_ACE_EVALUATOR
    jax_cache: str | None          # MOIRE_AL_JAX_CACHE
    webgui_password: str | None    # MOIRE_AL_WEBGUI_PASSWORD
    labeller_plugins: tuple        # MOIRE_AL_LABELLER_PLUGINS
    d3_table: str | None           # MOIRE_AL_D3_TABLE
    d3_backend: str                # MOIRE_AL_D3_BACKEND
    native_cache: str | None       # MOIRE_AL_NATIVE_CACHE
    threads: int | None            # MOIRE_AL_THREADS

    @classmethod
    def from_environ(cls, environ=None) -> "Environment":
        env = os.environ if environ is None else environ

        def get(name):
            v = env.get(VARIABLES[name][0])
            return v if v else None

        data = Path(get("data") or Path.home() / ".moire-al").expanduser()
        wait = get("db_wait_s")
        try:
            wait_s = float(wait) if wait else DEFAULT_DB_WAIT_S
        except ValueError:
            from moire_al.errors import SettingsError

            raise SettingsError(f"MOIRE_AL_DB_WAIT={wait!r}: expected seconds") from None
        return cls(
            data=data,
            db_path=Path(get("db_path") or data / "db").expanduser(),
            db_uri=get("db_uri"),
            db_name=get("db_name") or DEFAULT_DB_NAME,
            db_wait_s=wait_s,
            secantusd=get("secantusd"),
            ace_evaluator=(get("ace_evaluator") or "").lower() or None,
            jax_cache=get("jax_cache"),
            webgui_password=get("webgui_password"),
            labeller_plugins=tuple(m.strip() for m in (get("labeller_plugins") or "").split(",") if m.strip()),
            d3_table=get("d3_table"),
            d3_backend=(get("d3_backend") or "auto").lower(),
            native_cache=get("native_cache"),
            threads=_positive_int("MOIRE_AL_THREADS", get("threads")),
        )


#: field -> (variable, default, meaning); the documented table of docs/architecture.md
VARIABLES = {
    "data": ("MOIRE_AL_DATA", "~/.moire-al", "root of local state: database files, JAX cache"),
    "db_path": ("MOIRE_AL_DB_PATH", "$MOIRE_AL_DATA/db", "data directory of the local job database server"),
    "db_uri": ("MOIRE_AL_DB_URI", "the local server", "job database URI (a production mongod); "
               "overrides the local server"),
    "db_name": ("MOIRE_AL_DB_NAME", DEFAULT_DB_NAME, "database name (FireWorks and the store)"),
    "db_wait_s": ("MOIRE_AL_DB_WAIT", f"{DEFAULT_DB_WAIT_S:.0f}", "seconds a worker waits for an "
                  "unreachable job database (written into launchpad files)"),
    "secantusd": ("MOIRE_AL_SECANTUSD", "secantusd-py beside python", "the job database server program"),
    "ace_evaluator": ("MOIRE_AL_ACE_EVALUATOR", "auto", "ACE posterior-mean evaluator: auto, kernel or jax"),
    "jax_cache": ("MOIRE_AL_JAX_CACHE", "$MOIRE_AL_DATA/jax-cache", "XLA compilation cache directory; "
                  "`none` disables it"),
    "webgui_password": ("MOIRE_AL_WEBGUI_PASSWORD", "unset", "password of `moire-al webgui --username`"),
    "labeller_plugins": ("MOIRE_AL_LABELLER_PLUGINS", "unset", "comma-separated modules imported before a "
                         "labeller name is looked up; they call `moire_al.labelling.register_labeller`"),
    "d3_table": ("MOIRE_AL_D3_TABLE", "/usr/share/cp2k/dftd3.dat", "the D3 reference C6 table of the D3 kernel"),
    "d3_backend": ("MOIRE_AL_D3_BACKEND", "auto", "D3(BJ) backend: auto (the kernel when it builds), kernel "
                   "or dftd3 (the library)"),
    "native_cache": ("MOIRE_AL_NATIVE_CACHE", "$MOIRE_AL_DATA/native", "where the C++ kernels are compiled to"),
    "threads": ("MOIRE_AL_THREADS", "the cores this process may use", "threads of the compiled ACE rows and "
                "committee scoring (1 in each worker of a sharded fit on one node)"),
}
assert set(VARIABLES) == {f.name for f in fields(Environment)}


def _positive_int(var: str, value: str | None) -> int | None:
    if value is None:
        return None
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        from moire_al.errors import SettingsError

        raise SettingsError(f"{var}={value!r}: expected a positive whole number")
    return n


def environment() -> Environment:
    """The current :class:`Environment` (read now from ``os.environ``)."""
    return Environment.from_environ()


def data_dir() -> Path:
    """Root of moire-al's local state (database files, coupling cache, reports)."""
    return environment().data


def db_dir() -> Path:
    return environment().db_path


def db_name() -> str:
    return environment().db_name


def db_wait_s() -> float:
    """Seconds a worker waits for an unreachable job database (``MOIRE_AL_DB_WAIT``)."""
    return environment().db_wait_s


def local_uri(port: int, host: str = "127.0.0.1") -> str:
    return f"mongodb://{host}:{port}/?directConnection=true"


def db_uri() -> str:
    uri = environment().db_uri
    if uri:
        return uri
    info = db_dir() / "server.json"
    if info.exists():
        try:
            return json.loads(info.read_text())["uri"]
        except (ValueError, KeyError):
            pass
    return local_uri(DEFAULT_PORT)


def launchpad_dict(uri: str | None = None, name: str | None = None, wait_s: float | None = None) -> dict:
    """The LaunchPad settings (``launchpad.yaml`` content) for a URI.

    Every operation waits up to ``wait_s`` (default :func:`db_wait_s`) for the server,
    so a worker rides out a database restart instead of dying with its Firework RUNNING.
    """
    wait_s = db_wait_s() if wait_s is None else wait_s
    return {
        "host": uri or db_uri(),
        "name": name or db_name(),
        "uri_mode": True,
        "logdir": None,
        "strm_lvl": "WARNING",
        "mongoclient_kwargs": {"serverSelectionTimeoutMS": int(wait_s * 1000)},
    }


def write_private(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically, readable by its owner only (0600): for
    files that may hold a database URI with a password."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(tmp, 0o600)
    tmp.replace(path)
    return path


def write_launchpad_file(path: str | os.PathLike, d: dict | None = None) -> Path:
    """A ``launchpad.yaml`` (default: :func:`launchpad_dict`), mode 0600 (its URI may
    carry a password)."""
    import yaml

    return write_private(path, yaml.safe_dump(d or launchpad_dict()))


def get_launchpad(launchpad_file: str | os.PathLike | None = None, wait_s: float | None = None):
    """A FireWorks LaunchPad from a launchpad file, else from :func:`db_uri`.

    ``wait_s``: how long an operation waits for an unreachable server (default: the
    file's setting, else :func:`db_wait_s`); interactive commands pass
    :data:`INTERACTIVE_DB_WAIT_S`.
    """
    from fireworks import LaunchPad

    if not launchpad_file:
        return LaunchPad.from_dict(launchpad_dict(wait_s=wait_s))
    if wait_s is None:
        return LaunchPad.from_file(str(launchpad_file))
    from monty.serialization import loadfn

    from moire_al.errors import MoireALError

    try:
        d = loadfn(str(launchpad_file))
    except (OSError, ValueError) as exc:
        raise MoireALError(f"cannot read the launchpad file {launchpad_file}: {exc}") from None
    d = dict(d or {})
    d["mongoclient_kwargs"] = {**(d.get("mongoclient_kwargs") or {}), "serverSelectionTimeoutMS": int(wait_s * 1000)}
    return LaunchPad.from_dict(d)


def ensure_initialized(lp) -> bool:
    """Initialise a LaunchPad that was never set up (no id counters, no workflows).

    Returns True when it did. A database that holds anything is never reset.
    """
    if lp.fw_id_assigner.count_documents({}) or lp.workflows.count_documents({}) or \
            lp.fireworks.count_documents({}):
        return False
    lp.reset("", require_password=False, max_reset_wo_password=0)
    return True


def project_root() -> Path:
    """The checkout moire-al runs from (where ``data/dft`` lies)."""
    return Path(__file__).resolve().parent.parent


def resolve_data_path(path: str | os.PathLike) -> str:
    """An absolute path for a data file named in a loop or labeller setting.

    Absolute paths stay; a relative one is taken from the current directory when it
    exists there, else from the project root, so ``data/dft/graphene.extxyz`` in a
    workflow file means the same to a worker running in a launcher directory.
    """
    p = Path(os.path.expanduser(os.fspath(path)))
    if p.is_absolute() or p.exists():
        return str(p.resolve())
    return str((project_root() / p).resolve())
