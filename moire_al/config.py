"""Where moire-al keeps its data and how it reaches the job database.

Resolution order for the database URI:

1. ``MOIRE_AL_DB_URI`` (e.g. a production ``mongod`` or MongoDB Atlas),
2. the local server started by ``moire-al db start`` (its ``server.json``),
3. ``mongodb://127.0.0.1:27117/?directConnection=true``.

The database name is ``MOIRE_AL_DB_NAME`` (default ``moire_al``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

DEFAULT_PORT = 27117
DEFAULT_DB_NAME = "moire_al"


def data_dir() -> Path:
    """Root of moire-al's local state (database files, coupling cache, reports)."""
    return Path(os.environ.get("MOIRE_AL_DATA", Path.home() / ".moire-al")).expanduser()


def db_dir() -> Path:
    return Path(os.environ.get("MOIRE_AL_DB_PATH", data_dir() / "db")).expanduser()


def db_name() -> str:
    return os.environ.get("MOIRE_AL_DB_NAME", DEFAULT_DB_NAME)


def local_uri(port: int, host: str = "127.0.0.1") -> str:
    return f"mongodb://{host}:{port}/?directConnection=true"


def db_uri() -> str:
    uri = os.environ.get("MOIRE_AL_DB_URI")
    if uri:
        return uri
    info = db_dir() / "server.json"
    if info.exists():
        try:
            return json.loads(info.read_text())["uri"]
        except (ValueError, KeyError):
            pass
    return local_uri(DEFAULT_PORT)


def launchpad_dict(uri: str | None = None, name: str | None = None) -> dict:
    """The LaunchPad settings (``launchpad.yaml`` content) for a URI."""
    return {
        "host": uri or db_uri(),
        "name": name or db_name(),
        "uri_mode": True,
        "logdir": None,
        "strm_lvl": "WARNING",
        "mongoclient_kwargs": {"serverSelectionTimeoutMS": 10000},
    }


def get_launchpad(launchpad_file: str | os.PathLike | None = None):
    """A FireWorks LaunchPad from a launchpad file, else from :func:`db_uri`."""
    from fireworks import LaunchPad

    if launchpad_file:
        return LaunchPad.from_file(str(launchpad_file))
    return LaunchPad.from_dict(launchpad_dict())


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
