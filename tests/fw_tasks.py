"""A Firetask for the job-database tests, imported by ``rlaunch`` workers (this directory
is on their ``PYTHONPATH``, see ``conftest.py``).

Like every moire-al Firetask, its module imports :mod:`moire_al.workflows`, which is what
makes FireWorks' id counters exact on the local job database (``moire_al/workflows/ids.py``).
"""

from __future__ import annotations

import time

from fireworks import FiretaskBase, explicit_serialize

import moire_al.workflows  # noqa: F401  (as the modules of moire-al's own Firetasks do)


@explicit_serialize
class AppendLineTask(FiretaskBase):
    """Sleep ``sleep`` s, then append ``line`` to the file ``path``."""

    required_params = ["path", "line"]
    optional_params = ["sleep"]

    def run_task(self, fw_spec):
        time.sleep(float(self.get("sleep", 0.0)))
        with open(self["path"], "a") as fh:
            fh.write(f"{self['line']}\n")


def take_ids(host: str, name: str, n: int, queue) -> None:
    """In a separate process: ``n`` launch ids and ``n`` blocks of 3 Firework ids, taken
    through FireWorks' own ``LaunchPad`` methods (as ``rlaunch`` and ``add_wf`` do)."""
    from fireworks import LaunchPad

    lp = LaunchPad(host=host, name=name, uri_mode=True, strm_lvl="ERROR")
    launch = [lp.get_new_launch_id() for _ in range(n)]
    fw = [lp.get_new_fw_id(quantity=3) for _ in range(n)]
    queue.put((launch, fw))
