"""The job database server and FireWorks on it, from separate processes."""

from __future__ import annotations

import datetime
import os
import subprocess
import time
from pathlib import Path

import pymongo
import pytest
from fireworks import Firework, FWorker, ScriptTask, Workflow
from fireworks.core.rocket_launcher import launch_rocket

from moire_al import dbserver
from moire_al.errors import DatabaseError


def run(cmd, cwd, timeout=120, env=None):
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


# ------------------------------------------------------------------ server


def test_server_answers_and_keeps_data_after_sigkill(tmp_path):
    path = tmp_path / "db"
    port = dbserver.free_port()
    info = dbserver.start(port=port, path=path)
    try:
        client = pymongo.MongoClient(info.uri, serverSelectionTimeoutMS=5000)
        client.t.c.insert_one({"x": 42})
        client.close()
        assert dbserver.status(path)["running"]
        os.kill(info.pid, 9)
        while dbserver.pid_alive(info.pid):
            time.sleep(0.05)
        assert not dbserver.status(path)["running"]
        info2 = dbserver.start(port=port, path=path)
        assert info2.pid != info.pid
        client = pymongo.MongoClient(info2.uri, serverSelectionTimeoutMS=5000)
        assert client.t.c.find_one({"x": 42}) is not None
        client.close()
    finally:
        dbserver.stop(path)
    assert not dbserver.status(path)["running"]


def test_start_on_port_in_use_is_a_clear_error(tmp_path, db_server):
    with pytest.raises(DatabaseError, match=f"port {db_server.port} .*in use"):
        dbserver.start(port=db_server.port, path=tmp_path / "other")


def test_start_on_locked_data_dir_is_a_clear_error(tmp_path, bin_dir):
    """A server we did not start (no server.json) holds the directory."""
    path = tmp_path / "db"
    path.mkdir()
    port = dbserver.free_port()
    proc = subprocess.Popen([str(bin_dir / "secantusd-py"), "--host", "127.0.0.1", "--port", str(port),
                             "--storage-path", str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 30
        while not dbserver.ping(dbserver.config.local_uri(port)) and time.time() < deadline:
            time.sleep(0.2)
        with pytest.raises(DatabaseError, match="locked"):
            dbserver.start(port=dbserver.free_port(), path=path)
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_db_cli_start_status_stop(tmp_path, bin_dir):
    env = {"MOIRE_AL_DATA": str(tmp_path)}
    port = str(dbserver.free_port())
    moire = str(bin_dir / "moire-al")
    r = run([moire, "db", "start", "--port", port], tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    assert f"127.0.0.1:{port}" in r.stdout
    try:
        r = run([moire, "db", "status"], tmp_path, env=env)
        assert r.returncode == 0 and "running" in r.stdout
        r = run([moire, "db", "start", "--port", str(dbserver.free_port())], tmp_path, env=env)
        assert r.returncode == 1 and "in use by the server" in r.stderr
    finally:
        r = run([moire, "db", "stop"], tmp_path, env=env)
    assert "stopped" in r.stdout
    r = run([moire, "db", "status"], tmp_path, env=env)
    assert r.returncode == 3 and "not running" in r.stdout


# ------------------------------------------------------------------ FireWorks


def test_lpad_reset_add_rlaunch_from_separate_processes(launchpad_file, tmp_path, bin_dir):
    out = tmp_path / "hello.txt"
    wf = Workflow([Firework(ScriptTask.from_str(f"echo hello >> {out}"), name="hello")], name="hello-wf")
    wf_file = tmp_path / "wf.yaml"
    wf.to_file(str(wf_file))
    today = datetime.datetime.now().strftime("%Y-%m-%d")
    lpad, rlaunch = str(bin_dir / "lpad"), str(bin_dir / "rlaunch")
    r = run([lpad, "-l", str(launchpad_file), "reset", "--password", today], tmp_path)
    assert r.returncode == 0, r.stderr
    r = run([lpad, "-l", str(launchpad_file), "add", str(wf_file)], tmp_path)
    assert r.returncode == 0, r.stderr
    r = run([rlaunch, "-l", str(launchpad_file), "rapidfire"], tmp_path)
    assert r.returncode == 0, r.stderr
    r = run([lpad, "-l", str(launchpad_file), "get_fws", "-s", "COMPLETED", "-d", "count"], tmp_path)
    assert r.stdout.strip() == "1", r.stdout + r.stderr
    assert out.read_text() == "hello\n"


def test_fizzled_firework_and_rerun(launchpad, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "second-try"
    # Fails the first time (no marker yet), succeeds when rerun.
    task = ScriptTask.from_str(f"test -f {marker} || (touch {marker}; exit 3)")
    fw = Firework(task, name="flaky")
    child = Firework(ScriptTask.from_str("true"), name="child", parents=[fw])
    launchpad.add_wf(Workflow([fw, child]))
    fw_id = launchpad.get_fw_ids({"name": "flaky"})[0]
    child_id = launchpad.get_fw_ids({"name": "child"})[0]
    launch_rocket(launchpad, FWorker())
    assert launchpad.get_fw_by_id(fw_id).state == "FIZZLED"
    assert launchpad.get_fw_by_id(child_id).state == "WAITING"
    launchpad.rerun_fw(fw_id)
    assert launchpad.get_fw_by_id(fw_id).state == "READY"
    launch_rocket(launchpad, FWorker())
    launch_rocket(launchpad, FWorker())
    assert launchpad.get_fw_by_id(fw_id).state == "COMPLETED"
    assert launchpad.get_fw_by_id(child_id).state == "COMPLETED"


def test_concurrent_clients_get_distinct_ids(launchpad):
    """Three processes take ids at once through FireWorks' LaunchPad methods: each id is
    handed out once, and the counters end where they should (moire_al/workflows/ids.py;
    the local server's pre-image gave ~900 distinct of 1,200)."""
    import multiprocessing as mp

    from fw_tasks import take_ids

    n, k = 300, 3
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=take_ids, args=(launchpad.host, launchpad.name, n, q)) for _ in range(k)]
    for p in procs:
        p.start()
    got = [q.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(60)
    launch = sorted(x for g, _ in got for x in g)
    assert launch == list(range(1, k * n + 1))
    fw = sorted(x + d for _, g in got for x in g for d in range(3))   # each block of 3 ids
    assert fw == list(range(1, 3 * k * n + 1))
    counters = launchpad.fw_id_assigner.find_one()
    assert (counters["next_launch_id"], counters["next_fw_id"]) == (k * n + 1, 3 * k * n + 1)


def test_ids_without_a_counter_document_leave_the_error_to_fireworks(launchpad):
    """The installed id methods count from the post-image (the counters advance), and on a
    database with no counter document (never reset) FireWorks' own methods raise its own
    ValueError, words included."""
    import moire_al.workflows  # noqa: F401  (installs them)
    from moire_al.workflows import ids

    assert type(launchpad).get_new_fw_id is ids._get_new_fw_id
    assert (launchpad.get_new_fw_id(quantity=2), launchpad.get_new_fw_id(), launchpad.get_new_launch_id()) == (1, 3, 1)
    launchpad.fw_id_assigner.delete_many({})
    with pytest.raises(ValueError, match="Could not get next FW id"):
        launchpad.get_new_fw_id()
    with pytest.raises(ValueError, match="Could not get next launch id"):
        launchpad.get_new_launch_id()


def test_two_concurrent_rlaunch_run_each_firework_once(launchpad, launchpad_file, tmp_path, bin_dir):
    """Two stock ``rlaunch`` workers on moire-al Firetasks: each Firework runs once, with
    a launch document of its own. With FireWorks' pre-image ids the local server gave two
    launches one id about one run in ten (11 launch documents for 12 Fireworks)."""
    from fw_tasks import AppendLineTask

    log = tmp_path / "runs.log"
    n = 12
    fws = [Firework(AppendLineTask(path=str(log), line=i, sleep=0.5), name=f"job{i}") for i in range(n)]
    launchpad.add_wf(Workflow(fws, name="many"))
    procs = []
    for k in range(2):
        wd = tmp_path / f"worker{k}"
        wd.mkdir()
        procs.append(subprocess.Popen([str(bin_dir / "rlaunch"), "-l", str(launchpad_file), "rapidfire"],
                                      cwd=wd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    lines = sorted(int(x) for x in log.read_text().split())
    assert lines == list(range(n)), "every firework ran exactly once"
    assert launchpad.get_fw_ids({"state": "COMPLETED"}, count_only=True) == n
    assert launchpad.launches.count_documents({}) == n
    assert sorted(launchpad.launches.distinct("launch_id")) == list(range(1, n + 1))
    # Both workers took part, so the fireworks really were contended.
    worker_dirs = {Path(d["launch_dir"]).parts[-2] for d in launchpad.launches.find({}, {"launch_dir": 1})}
    assert worker_dirs == {"worker0", "worker1"}


def test_readme_steps_on_fresh_database_db_start_then_lpad_add(tmp_path, bin_dir):
    """README "Using it": `moire-al db start`, then `lpad -l launchpad.yaml add ...` at once."""
    import yaml

    from moire_al.workflows.builders import workflow_files_dir

    env = {k: v for k, v in os.environ.items() if k != "MOIRE_AL_DB_URI"}
    env["MOIRE_AL_DATA"] = str(tmp_path / "data")
    port = dbserver.free_port()
    r = subprocess.run([str(bin_dir / "moire-al"), "db", "start", "--port", str(port)], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr
    try:
        lp_file = tmp_path / "launchpad.yaml"
        lp_file.write_text(yaml.safe_dump({"host": dbserver.config.local_uri(port), "name": "moire_al",
                                           "uri_mode": True, "strm_lvl": "ERROR"}))
        r = subprocess.run([str(bin_dir / "lpad"), "-l", str(lp_file), "add",
                            str(workflow_files_dir() / "graphene_hyperactive.yaml")], cwd=tmp_path,
                           capture_output=True, text=True, timeout=120, env=env)
        assert r.returncode == 0, r.stdout + r.stderr
        client = pymongo.MongoClient(dbserver.config.local_uri(port), serverSelectionTimeoutMS=5000)
        assert client.moire_al.fireworks.count_documents({}) == 1
        client.close()
    finally:
        dbserver.stop(tmp_path / "data" / "db")


def test_commands_without_a_database_fail_in_one_line(tmp_path, bin_dir):
    """No server on the URI: `status`/`resume` say so in one line after a short wait."""
    uri = dbserver.config.local_uri(dbserver.free_port())
    for cmd in (["status"], ["resume"]):  # run() times out long before a worker's 300 s wait
        r = run([str(bin_dir / "moire-al"), *cmd], tmp_path, env={"MOIRE_AL_DB_URI": uri}, timeout=90)
        assert r.returncode == 1, r.stdout + r.stderr
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert "job database" in r.stderr
