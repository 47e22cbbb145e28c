"""A labeller for the fault tests: the reference potential with fault hooks.

Registered as ``"faulty-reference"`` (:func:`moire_al.labelling.register_labeller`).
``conftest.py`` imports it for the test process and names it in
``MOIRE_AL_LABELLER_PLUGINS`` (with this directory on ``PYTHONPATH``), so workers
started as subprocesses (rlaunch) have it too.

Hooks (taken out of the settings, so they never change a label key; a rerun without
them labels the same keys):

- ``fail_on``: structure hashes (or ``"*"``) to fail on; also ``$MOIRE_AL_TEST_FAIL_ON``
  (comma-separated);
- ``fail_mode``: ``"failure"`` (return a :class:`LabelFailure`, ``error_type="InjectedFault"``)
  or ``"raise"`` (raise :class:`LabelError`, like a crashing labeller);
- ``sleep``: seconds to sleep before labelling (also ``$MOIRE_AL_TEST_SLEEP``), so a
  worker can be killed mid-label.
"""

from __future__ import annotations

import os
import time

from moire_al import conventions as conv
from moire_al.errors import LabelError, SettingsError
from moire_al.labelling import register_labeller
from moire_al.labelling.base import failure_from_exception
from moire_al.labelling.reference import ReferenceLabeller

NAME = "faulty-reference"
FAIL_ON_ENV = "MOIRE_AL_TEST_FAIL_ON"
SLEEP_ENV = "MOIRE_AL_TEST_SLEEP"


class InjectedFault(LabelError):
    """A failure asked for by the ``fail_on`` hook."""


class FaultyReferenceLabeller(ReferenceLabeller):
    """The reference potential (not DFT), failing or sleeping on request."""

    name = NAME

    def __init__(self, settings: dict | None = None):
        settings = dict(settings or {})
        self.fail_on = settings.pop("fail_on", None)
        self.fail_mode = settings.pop("fail_mode", "failure")
        self.sleep = float(settings.pop("sleep", 0.0) or 0.0)
        if self.fail_mode not in ("failure", "raise"):
            raise SettingsError("fail_mode must be 'failure' or 'raise'")
        super().__init__(settings)

    def _fail_set(self) -> set:
        out = set()
        if self.fail_on:
            out |= {self.fail_on} if isinstance(self.fail_on, str) else set(self.fail_on)
        out |= {h.strip() for h in os.environ.get(FAIL_ON_ENV, "").split(",") if h.strip()}
        return out

    def label(self, atoms, workdir=None):
        t0 = time.perf_counter()
        spec = self.check(atoms)
        sleep = self.sleep or float(os.environ.get(SLEEP_ENV, "0") or 0)
        if sleep > 0:
            time.sleep(sleep)
        h = conv.structure_hash(atoms)
        fail = self._fail_set()
        if h in fail or "*" in fail:
            exc = InjectedFault(f"injected fault for structure {h}")
            if self.fail_mode == "raise":
                raise LabelError(str(exc))
            return failure_from_exception(atoms, self, exc, wall_time=time.perf_counter() - t0, workdir=workdir)
        return self.compute(atoms, spec, workdir, t0)


register_labeller(NAME, FaultyReferenceLabeller)
