"""Start, stop and inspect the local job database server.

Locally and in tests the job database is SecantusDB, a MongoDB-wire-protocol server
from PyPI. It is GPL-licensed, so moire-al never imports it: like ``mongod`` it is a
program we start as a separate process (``secantusd-py``) and talk to with pymongo.
In production, point ``MOIRE_AL_DB_URI`` at a real ``mongod`` instead.

State lives in the data directory next to the database files:
``server.json`` (pid, host, port, uri, started), ``secantusd.log``.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from moire_al import config
from moire_al.errors import DatabaseError

SERVER_EXE = "secantusd-py"
START_TIMEOUT = 60.0
LOCK_GRACE = 5.0  # seconds a lock of a process that just died may take to go


@dataclass
class ServerInfo:
    pid: int
    host: str
    port: int
    uri: str
    path: str
    started: float

    @classmethod
    def read(cls, path: Path) -> "ServerInfo | None":
        f = Path(path) / "server.json"
        if not f.exists():
            return None
        try:
            return cls(**json.loads(f.read_text()))
        except (ValueError, TypeError):
            return None

    def write(self) -> None:
        f = Path(self.path) / "server.json"
        config.write_private(f, json.dumps(asdict(self), indent=1))


def _find_server_exe() -> str:
    exe = config.environment().secantusd
    if exe:
        return exe
    beside = Path(sys.executable).with_name(SERVER_EXE)
    if beside.exists():
        return str(beside)
    found = shutil.which(SERVER_EXE)
    if found:
        return found
    raise DatabaseError(
        f"'{SERVER_EXE}' not found: install the job database server with "
        "`pip install 'secantusdb==0.7.0b3'` (or run scripts/setup.sh), "
        "or set MOIRE_AL_DB_URI to an existing MongoDB."
    )


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0). Look at every thread: after SIGKILL the group
    # leader turns zombie while its other threads (which share the open files, and
    # so the storage lock) may still be exiting.
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return True
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as fh:
                if fh.read().split(")")[-1].split()[0] not in ("Z", "X"):
                    return True
        except OSError:
            continue
    return False


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _dir_locked(path: Path) -> bool:
    """True when another process holds the storage engine's lock on ``path``."""
    lock = path / "WiredTiger.lock"
    if not lock.exists():
        return False
    try:
        fd = os.open(lock, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 0)
    except OSError:
        return True
    else:
        fcntl.lockf(fd, fcntl.LOCK_UN, 1, 0)
        return False
    finally:
        os.close(fd)


def ping(uri: str, timeout_ms: int = 1500) -> bool:
    import pymongo

    client = pymongo.MongoClient(uri, serverSelectionTimeoutMS=timeout_ms, connectTimeoutMS=timeout_ms)
    try:
        client.admin.command("ping")
        return True
    except Exception:
        return False
    finally:
        client.close()


def _log_tail(log: Path, n: int = 6) -> str:
    try:
        lines = log.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-n:])


def init_job_database(uri: str) -> bool:
    """Set up FireWorks' id counters in a database that was never used, so `lpad add`
    works on a new server at once (as the README says). Never resets one that holds
    anything. True when it did."""
    from fireworks import LaunchPad

    lp = LaunchPad(host=uri, name=config.db_name(), uri_mode=True, strm_lvl="ERROR",
                   mongoclient_kwargs={"serverSelectionTimeoutMS": 10000})
    try:
        return config.ensure_initialized(lp)
    finally:
        lp.connection.close()


def status(path: Path | None = None) -> dict:
    path = Path(path or config.db_dir())
    info = ServerInfo.read(path)
    if info is None:
        return {"running": False, "path": str(path)}
    alive = pid_alive(info.pid)
    return {
        "running": alive and ping(info.uri),
        "pid_alive": alive,
        **asdict(info),
    }


def start(port: int | None = None, path: Path | None = None, host: str = "127.0.0.1") -> ServerInfo:
    """Start the server (or return the one already running on ``path``).

    Raises :class:`DatabaseError` with a one-line reason when the port is taken,
    the data directory is held by another server, or the server does not answer.
    """
    path = Path(path or config.db_dir()).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)  # the server has no authentication: only its owner may read the files
    existing = ServerInfo.read(path)
    if existing and pid_alive(existing.pid):
        if port not in (None, existing.port):
            raise DatabaseError(
                f"data dir {path} is in use by the server with pid {existing.pid} on port "
                f"{existing.port}; stop it first (`moire-al db stop --path {path}`)"
            )
        if ping(existing.uri, 5000):
            init_job_database(existing.uri)
            return existing
        raise DatabaseError(
            f"a server (pid {existing.pid}) holds {path} but does not answer on "
            f"{existing.uri}; see {path / 'secantusd.log'}"
        )
    deadline = time.time() + LOCK_GRACE
    while _dir_locked(path):  # a server that just died may still be releasing it
        if time.time() > deadline:
            raise DatabaseError(f"data dir {path} is locked by another database process; stop it or choose --path")
        time.sleep(0.2)
    port = port or config.DEFAULT_PORT
    if port_in_use(port, host):
        raise DatabaseError(f"port {port} on {host} is already in use; choose another with --port")

    log = path / "secantusd.log"
    if not log.exists():
        log.touch(mode=0o600)
    # --sync-on-commit: without it a write acknowledged just before a crash (SIGKILL)
    # is lost (seen in tests/test_jobdb.py); a job database's writes are few and small.
    cmd = [_find_server_exe(), "--host", host, "--port", str(port), "--storage-path", str(path),
           "--sync-on-commit"]
    with open(log, "ab") as fh:
        fh.write(f"\n--- moire-al db start {time.ctime()}: {' '.join(cmd)}\n".encode())
        fh.flush()
        proc = subprocess.Popen(
            cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            cwd=path, start_new_session=True, umask=0o077,  # database files 0600
        )
    info = ServerInfo(pid=proc.pid, host=host, port=port, uri=config.local_uri(port, host),
                      path=str(path), started=time.time())
    deadline = time.time() + START_TIMEOUT
    while time.time() < deadline:
        rc = proc.poll()
        if rc is not None:
            tail = _log_tail(log)
            reason = "the server exited"
            if "Address already in use" in tail:
                reason = f"port {port} is already in use"
            elif "resource busy" in tail or "WiredTiger.lock" in tail:
                reason = f"data dir {path} is locked by another database process"
            raise DatabaseError(f"{reason} (exit code {rc}); log: {log}")
        if ping(info.uri, 500):
            info.write()
            init_job_database(info.uri)
            return info
        time.sleep(0.2)
    proc.kill()
    raise DatabaseError(f"the server did not answer within {START_TIMEOUT:.0f} s; log: {log}")


def stop(path: Path | None = None, timeout: float = 20.0) -> bool:
    """Stop the server on ``path``; True when one was running."""
    path = Path(path or config.db_dir()).expanduser().resolve()
    info = ServerInfo.read(path)
    if info is None or not pid_alive(info.pid):
        (path / "server.json").unlink(missing_ok=True)
        return False
    os.kill(info.pid, signal.SIGTERM)
    deadline = time.time() + timeout
    while time.time() < deadline and pid_alive(info.pid):
        time.sleep(0.1)
    if pid_alive(info.pid):
        os.kill(info.pid, signal.SIGKILL)
        while pid_alive(info.pid):
            time.sleep(0.05)
    (path / "server.json").unlink(missing_ok=True)
    return True


# ---------------------------------------------------------------- CLI


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("db", help="start/stop/status of the local job database server")
    dsub = p.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    for name, func, helptext in (
        ("start", _cmd_start, "start the server (waits until it answers)"),
        ("stop", _cmd_stop, "stop the server"),
        ("status", _cmd_status, "is it running, where, on which port"),
    ):
        q = dsub.add_parser(name, help=helptext)
        q.add_argument("--path", type=Path, default=None,
                       help=f"data directory (default {config.db_dir()})")
        if name == "start":
            q.add_argument("--port", type=int, default=None,
                           help=f"TCP port on 127.0.0.1 (default {config.DEFAULT_PORT})")
        q.set_defaults(func=func)


def _cmd_start(args) -> int:
    info = start(port=args.port, path=args.path)
    print(f"job database running: pid {info.pid}, {info.uri}, data in {info.path}")
    return 0


def _cmd_stop(args) -> int:
    print("stopped" if stop(args.path) else "not running")
    return 0


def _cmd_status(args) -> int:
    st = status(args.path)
    if st["running"]:
        print(f"running: pid {st['pid']}, {st['uri']}, data in {st['path']}")
        return 0
    if st.get("pid_alive"):
        print(f"process {st['pid']} alive but not answering on {st['uri']}; log in {st['path']}")
        return 1
    print(f"not running (data dir {st['path']})")
    return 3
