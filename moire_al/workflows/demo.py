"""The main job: a small real hyperactive loop, end to end, through FireWorks.

Starts the job database (unless ``MOIRE_AL_DB_URI`` points elsewhere), adds a loop
workflow, runs ``rlaunch`` workers as separate processes until the loop stops,
then prints the per-round table and writes the report (plots, rounds, model).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import yaml

from moire_al import config, dbserver


def run_demo(material: str = "graphene", labeller: str = "reference", max_rounds: int = 4,
             batch_size: int = 10, workers: int = 1, runs_dir: Path = Path("runs")) -> int:
    from moire_al.store.mongo import Store
    from moire_al.workflows.builders import hyperactive_loop
    from moire_al.workflows.manage import fw_states, status_table, write_report
    from moire_al.workflows.settings import LoopSettings

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
    settings = LoopSettings(material=material, labeller=labeller, max_rounds=max_rounds, batch_size=batch_size,
                            name=f"demo {material} ({labeller})")
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
            rounds = [r for r in store.get_rounds(loop_id) if "n_train" in r]
            if rounds and rounds[-1]["round"] != seen:
                r = rounds[-1]
                seen = r["round"]
                print(f"  round {seen}: {r['n_train']} labelled, force RMSE "
                      f"{(r.get('rmse') or {}).get('F', float('nan')):.4f} eV/Å, max σF {r['max_sigma_f']:.4g}"
                      f" [{time.time() - t0:.0f} s]", flush=True)
            loop = store.get_loop(loop_id) or {}
            states = fw_states(lp, loop_id)
            active = sum(states.get(s, 0) for s in ("READY", "RESERVED", "RUNNING"))
            if loop.get("state") == "COMPLETED" and active == 0:
                break
            init_state = lp.get_fw_by_id(wf_id).state
            if init_state == "FIZZLED" or (active == 0 and states.get("WAITING", 0) == 0 and time.time() - t0 > 30
                                           and loop.get("state") != "COMPLETED"):
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
    report = write_report(store, loop_id, run_dir / "report")
    print(f"\nreport: {report}  (learning_curve.png, sigma_f.png, parity.png, rounds.json, model/)")
    print(f"workflow {wf_id} in the job database: `lpad -l launchpad.yaml get_wflows -i {wf_id}`;"
          " web GUI: `moire-al webgui` then http://127.0.0.1:5000/")
    return 0
