"""The cluster path for real: a single-node SLURM on localhost (Debian's slurm-wlm and
munge, started as processes in a temporary directory) runs labelling Fireworks of a
loop submitted by ``qlaunch`` with the repository's ``queue/slurm_dft.yaml``.

A job cancelled with ``scancel`` mid-label leaves its Firework RUNNING, like a killed
worker, and is recovered the same way (``detect_lostruns --rerun``): the label lands once.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import faulty_labeller
import pytest
import yaml
from fireworks import FWorker
from fireworks.core.rocket_launcher import launch_rocket, rapidfire

from moire_al import config, dbserver
from moire_al.store.mongo import Store

ROOT = Path(__file__).resolve().parents[1]
NEEDED = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "scontrol")


def _wait(predicate, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """munged + slurmctld + slurmd for this host; yields the environment for its clients."""
    missing = [exe for exe in NEEDED if shutil.which(exe) is None]
    if missing:  # scripts/setup.sh installs them (Debian slurmctld slurmd slurm-client munge)
        pytest.skip(f"SLURM is not installed here (missing {', '.join(missing)})")
    d = tmp_path_factory.mktemp("slurm")
    (d / "state").mkdir()
    (d / "spool").mkdir()
    key = d / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    sock = d / "munge.sock"
    subprocess.run(["munged", f"--key-file={key}", f"--socket={sock}", f"--pid-file={d / 'munged.pid'}",
                    f"--log-file={d / 'munged.log'}", f"--seed-file={d / 'munge.seed'}", "--force"], check=True)
    host = socket.gethostname().split(".")[0]
    conf = d / "slurm.conf"
    conf.write_text("\n".join([
        "ClusterName=moiretest", f"SlurmctldHost={host}(127.0.0.1)",
        f"SlurmctldPort={dbserver.free_port()}", f"SlurmdPort={dbserver.free_port()}",
        "SlurmUser=root", "SlurmdUser=root", "AuthType=auth/munge", f"AuthInfo=socket={sock}",
        "CredType=cred/munge", f"StateSaveLocation={d / 'state'}", f"SlurmdSpoolDir={d / 'spool'}",
        f"SlurmctldPidFile={d / 'slurmctld.pid'}", f"SlurmdPidFile={d / 'slurmd.pid'}",
        f"SlurmctldLogFile={d / 'slurmctld.log'}", f"SlurmdLogFile={d / 'slurmd.log'}",
        "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "SchedulerType=sched/builtin",
        "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core", "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none", "MpiDefault=none", "ReturnToService=2",
        f"NodeName={host} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} State=UNKNOWN",
        f"PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP", ""]))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    procs = [subprocess.Popen([exe, "-D"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for exe in ("slurmctld", "slurmd")]
    try:
        def idle():
            r = subprocess.run(["sinfo", "-h", "-o", "%t"], env=env, capture_output=True, text=True)
            return r.stdout.strip() == "idle"

        _wait(idle, 60, "the SLURM node to come up idle")
        yield env
    finally:
        subprocess.run(["scancel", "--user", "root"], env=env, capture_output=True)
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        pid = int((d / "munged.pid").read_text().strip())
        os.kill(pid, 15)


def _cluster_root(tmp_path, launchpad, db_server) -> Path:
    """A stand-in for the repository root on a cluster: launchpad.yaml (this test's
    database), fworkers/dft.yaml and .venv (this interpreter's), as the queue file expects."""
    root = tmp_path / "root"
    (root / "fworkers").mkdir(parents=True)
    config.write_launchpad_file(root / "launchpad.yaml", config.launchpad_dict(db_server.uri, launchpad.name))
    shutil.copy(ROOT / "fworkers" / "dft.yaml", root / "fworkers" / "dft.yaml")
    venv = Path(os.environ.get("VIRTUAL_ENV") or Path(os.sys.executable).parents[1])
    (root / ".venv").symlink_to(venv)
    q = yaml.safe_load((ROOT / "queue" / "slurm_dft.yaml").read_text())
    q.update(ntasks=1, cpus_per_task=1, walltime="00:10:00")  # the repository's file, sized for this node
    (root / "slurm.yaml").write_text(yaml.safe_dump(q))
    return root


def _qlaunch(root, env, n=1):
    r = subprocess.run([str(Path(os.sys.executable).with_name("qlaunch")), "-l", str(root / "launchpad.yaml"),
                        "-w", str(root / "fworkers" / "dft.yaml"), "-q", str(root / "slurm.yaml"),
                        "rapidfire", "--nlaunches", str(n)],
                       cwd=root, env={**env, "MOIRE_AL_ROOT": str(root)}, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    return r


def test_qlaunch_labels_through_slurm_and_a_cancelled_job_is_recovered(slurm, launchpad, db_server, tmp_path,
                                                                       monkeypatch):
    from test_loop import WORKER, add_loop, assert_labelled_once, tiny_settings

    monkeypatch.chdir(tmp_path)
    add_loop(launchpad, tiny_settings(max_rounds=1))
    launch_rocket(launchpad, WORKER)  # init: adds the labelling Fireworks of round 0 (category dft)
    store = Store.from_launchpad(launchpad)
    root = _cluster_root(tmp_path, launchpad, db_server)

    # 1. One job through the queue labels one structure, once.
    _qlaunch(root, slurm)
    _wait(lambda: store.labels.count_documents({}) == 1 and not launchpad.get_fw_ids({"state": "RUNNING"}),
          120, "the SLURM job to label a structure")
    done = launchpad.get_fw_ids({"state": "COMPLETED", "spec._category": "dft"})
    assert len(done) == 1
    launch = launchpad.launches.find_one({"fw_id": done[0]})
    assert launch["launch_dir"].startswith(str(root))  # it ran in qlaunch's launcher directory, under SLURM

    # 2. A job cancelled mid-label: its Firework stays RUNNING, like a killed worker.
    _qlaunch(root, {**slurm, faulty_labeller.SLEEP_ENV: "120"})
    _wait(lambda: store.members.count_documents({"label_runs": {"$gte": 1}}) == 2, 120,
          "the second job to start labelling")
    running = launchpad.get_fw_ids({"state": "RUNNING"})
    assert len(running) == 1
    jobs = subprocess.run(["squeue", "-h", "-o", "%i"], env=slurm, capture_output=True, text=True).stdout.split()
    assert len(jobs) == 1
    subprocess.run(["scancel", jobs[0]], env=slurm, check=True)
    _wait(lambda: not subprocess.run(["squeue", "-h", "-o", "%i"], env=slurm, capture_output=True,
                                     text=True).stdout.strip(), 60, "the cancelled job to leave the queue")
    assert launchpad.get_fw_by_id(running[0]).state == "RUNNING"  # nobody told the database
    _, lost_fws, _ = launchpad.detect_lostruns(expiration_secs=0, rerun=True)
    assert lost_fws == running

    # 3. The rest of the round's labels (the rerun one included) on a local dft worker: each once.
    rapidfire(launchpad, FWorker(name="local", category=["dft"]), nlaunches=0, sleep_time=0, max_loops=1)
    assert {d["state"] for d in launchpad.fireworks.find({"spec._category": "dft"})} == {"COMPLETED"}
    assert_labelled_once(store)
    runs = {m["hash"]: m["label_runs"] for m in store.members.find({"label_runs": {"$gte": 1}})}
    assert sorted(runs.values()) == [1] * (len(runs) - 1) + [2]  # only the cancelled one ran twice
