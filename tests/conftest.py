"""Shared fixtures: a real job database server for the whole test run.

``db_server`` starts SecantusDB (a MongoDB-wire-protocol server) as a separate
process on a free port in a temporary directory and stops it at the end, exactly as
``moire-al db start`` does for users. Tests that need a LaunchPad get one on their
own database name so they never see each other's workflows.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from moire_al import dbserver

# The tests' own labeller (faulty_labeller.py), for this process and for the workers
# tests start as subprocesses (rlaunch), which import it through the plugin variable.
TESTS_DIR = Path(__file__).resolve().parent
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS_DIR), os.environ.get("PYTHONPATH", "")) if p)
os.environ["MOIRE_AL_LABELLER_PLUGINS"] = "faulty_labeller"
import faulty_labeller  # noqa: E402,F401  (registers "faulty-reference")


@dataclass
class DBServer:
    path: Path
    port: int

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/?directConnection=true"

    @property
    def pid(self) -> int:
        return dbserver.ServerInfo.read(self.path).pid

    def start(self) -> None:
        dbserver.start(port=self.port, path=self.path)

    def stop(self) -> None:
        dbserver.stop(self.path)

    def kill(self) -> None:
        """SIGKILL the server, as a crash would."""
        pid = self.pid
        os.kill(pid, signal.SIGKILL)
        while dbserver.pid_alive(pid):
            time.sleep(0.05)

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture(scope="session")
def db_server(tmp_path_factory) -> DBServer:
    path = tmp_path_factory.mktemp("jobdb")
    server = DBServer(path=path, port=dbserver.free_port())
    server.start()
    os.environ["MOIRE_AL_DB_URI"] = server.uri
    yield server
    server.stop()


@pytest.fixture
def db_name() -> str:
    return f"t_{uuid.uuid4().hex[:10]}"


@pytest.fixture
def launchpad(db_server, db_name):
    from fireworks import LaunchPad

    lp = LaunchPad(host=db_server.uri, name=db_name, uri_mode=True, strm_lvl="ERROR",
                   mongoclient_kwargs={"serverSelectionTimeoutMS": 20000})
    lp.reset("", require_password=False)
    yield lp
    try:
        lp.connection.drop_database(db_name)
    except Exception:
        pass  # a test may leave the server down on purpose


@pytest.fixture
def launchpad_file(launchpad, tmp_path) -> Path:
    """A launchpad.yaml for subprocesses (lpad, rlaunch) pointing at ``launchpad``'s DB."""
    f = tmp_path / "launchpad.yaml"
    f.write_text(yaml.safe_dump({
        "host": launchpad.host, "name": launchpad.name, "uri_mode": True, "strm_lvl": "ERROR",
        "mongoclient_kwargs": {"serverSelectionTimeoutMS": 20000},
    }))
    return f


@pytest.fixture
def bin_dir() -> Path:
    """The directory of this interpreter's console scripts (lpad, rlaunch, moire-al)."""
    import sys

    return Path(sys.executable).parent
