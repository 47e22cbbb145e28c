"""The main job: a small real hyperactive loop, end to end, through FireWorks.

Starts the job database (unless ``MOIRE_AL_DB_URI`` points elsewhere), adds a loop
workflow, runs ``rlaunch`` workers as separate processes until the loop stops,
then prints the per-round table and writes the report (plots, rounds, model).

By default the loop learns on DFT: its pool is the committed CP2K reference set
(``data/dft/<material>.extxyz``, mono/bi/trilayers) and its labels are those CP2K
labels replayed (``dataset`` labeller), so a round costs only its fit. With
``labeller="cp2k"`` the same loop computes its labels live (hours on 2 cores);
``labeller="reference"`` runs the classical baseline on a generated pool.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import yaml

from moire_al import config, dbserver


#: the round fields the demo prints (not the long lists)
SHORT_FIELDS = ["n_train", "rmse", "max_sigma_f"]


def demo_settings(material: str, labeller: str, max_rounds: int, batch_size: int):
    """The demo loop: on the committed DFT set (replayed or live), or the classical baseline."""
    from moire_al.workflows.settings import LoopSettings

    name = f"demo {material} ({labeller})"
    if labeller == "reference":
        return LoopSettings(material=material, labeller=labeller, max_rounds=max_rounds,
                            batch_size=batch_size, name=name)
    data = f"data/dft/{material}.extxyz"
    labeller_settings = {"path": data} if labeller == "dataset" else {}
    return LoopSettings(material=material, pool={"file": data, "layers": [1, 2, 3]}, labeller=labeller,
                        labeller_settings=labeller_settings, model={},  # the default basis (docs/model.md)
                        n_initial=10, n_test=25, max_rounds=max_rounds, batch_size=batch_size,
                        threshold=0.02, name=name)


def learning_verdict(rmses: list[float]) -> tuple[bool, str]:
    """The demo's promise: each round's held-out force RMSE at most 5 % above the previous
    one, and the last at most half the first."""
    if len(rmses) < 2:
        return False, "fewer than two rounds: no learning curve"
    rises = [k for k in range(1, len(rmses)) if rmses[k] > 1.05 * rmses[k - 1]]
    halved = rmses[-1] <= 0.5 * rmses[0]
    ok = not rises and halved
    text = (f"held-out force RMSE {rmses[0]:.3f} -> {rmses[-1]:.3f} eV/Å ({rmses[-1] / rmses[0]:.2f} of the first"
            f" round; goal <= 0.5)" + (f"; rose by > 5 % at round(s) {rises}" if rises else ""))
    return ok, ("falling learning curve: " if ok else "learning curve NOT as promised: ") + text


def run_demo(material: str = "graphene", labeller: str = "dataset", max_rounds: int = 4,
             batch_size: int = 10, workers: int = 1, runs_dir: Path = Path("runs")) -> int:
    from moire_al.store.mongo import Store
    from moire_al.workflows.builders import hyperactive_loop
    from moire_al.workflows.loop import labels_description
    from moire_al.workflows.manage import fw_states, status_table, write_report

    if not config.environment().db_uri:
        info = dbserver.start()
        print(f"job database: {info.uri} (data in {info.path})", flush=True)
    lp = config.get_launchpad()
    if config.ensure_initialized(lp):
        print("initialised the new job database (FireWorks ids)", flush=True)
    store = Store.from_launchpad(lp)

    stamp = time.strftime("%Y%m%d-%H%M%S")
    loop_id = f"demo-{material}-{stamp}"
    run_dir = (runs_dir / loop_id).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    settings = demo_settings(material, labeller, max_rounds, batch_size)
    print(f"labels: {labels_description(settings)}", flush=True)
    wf = hyperactive_loop(settings, loop_id=loop_id)
    ids = lp.add_wf(wf)
    wf_id = min(ids.values())
    print(f"added workflow {wf_id}: {wf.name}; loop id {loop_id}", flush=True)

    lp_file = run_dir / "launchpad.yaml"
    config.write_launchpad_file(lp_file)  # 0600: the URI may hold a password
    fw_file = run_dir / "fworker.yaml"
    fw_file.write_text(yaml.safe_dump({"name": "demo worker", "category": ["dft", "fit", "analysis"],
                                       "query": "{}"}))
    rlaunch = str(Path(sys.executable).with_name("rlaunch"))
    procs = []
    for k in range(workers):
        wd = run_dir / f"worker{k}"
        wd.mkdir(exist_ok=True)
        log = open(wd / "rlaunch.log", "w")
        procs.append(subprocess.Popen(
            [rlaunch, "-l", str(lp_file), "-w", str(fw_file), "rapidfire", "--nlaunches", "infinite",
             "--sleep", "2", "--timeout", "3600"],
            cwd=wd, stdout=log, stderr=subprocess.STDOUT))
    t0, seen = time.time(), -1
    try:
        while True:
            time.sleep(2)
            rounds = [r for r in store.get_rounds(loop_id, fields=SHORT_FIELDS) if r.finished_fit]
            if rounds and rounds[-1].round != seen:
                r = rounds[-1]
                seen = r.round
                rmse_f = r.rmse_f if r.rmse_f is not None else float("nan")
                print(f"  round {seen}: {r.n_train} labelled, force RMSE {rmse_f:.4f} eV/Å, "
                      f"max σF {r.max_sigma_f:.4g} [{time.time() - t0:.0f} s]", flush=True)
            loop = store.get_loop(loop_id)
            state = loop.state if loop is not None else None
            states = fw_states(lp, loop_id)
            active = sum(states.get(s, 0) for s in ("READY", "RESERVED", "RUNNING"))
            if state == "COMPLETED" and active == 0:
                break
            init_state = lp.get_fw_by_id(wf_id).state
            if init_state == "FIZZLED" or (active == 0 and states.get("WAITING", 0) == 0 and time.time() - t0 > 30
                                           and state != "COMPLETED"):
                print("the loop stopped without finishing; see `moire-al status` and the rlaunch logs in "
                      f"{run_dir}", flush=True)
                return 1
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()

    print()
    print(status_table(store, loop_id))
    states = fw_states(lp, loop_id)
    print("fireworks: " + ", ".join(f"{k} {v}" for k, v in sorted(states.items())))
    rmses = [r.rmse_f for r in store.get_rounds(loop_id, fields=SHORT_FIELDS) if r.finished_fit]
    ok, verdict = learning_verdict([float(x) for x in rmses if x is not None])
    print("\n" + verdict)
    report = write_report(store, loop_id, run_dir / "report")
    (report / "verdict.txt").write_text(f"labels: {labels_description(settings)}\n{verdict}\n")
    print(f"\nreport: {report}  (learning_curve.png, sigma_f.png, parity.png, rounds.json, model/)")
    print(f"workflow {wf_id} in the job database: `lpad -l launchpad.yaml get_wflows -i {wf_id}`;"
          " web GUI: `moire-al webgui` then http://127.0.0.1:5000/")
    return 0
