"""FireWorks' id counters, taken from the post-image of the increment.

FireWorks hands out Firework and Launch ids with
``find_one_and_update({}, {"$inc": ...})`` and reads the id from the document *before*
the update. On the local job database (SecantusDB 0.7.0b3) that pre-image can be stale
when several clients increment at once: the counter ends right, but two clients are
told the same id (``scripts/db_atomicity.py``; docs/architecture.md). Two ``rlaunch``
workers then write one launch document over the other.

The document *after* the update comes from the write itself on that server, and is
exact on both it and ``mongod``: the first of ``n`` new ids is ``after - n``, the same
number the pre-image gives when it is right. :func:`install` makes FireWorks' own
``LaunchPad.get_new_fw_id`` / ``get_new_launch_id`` read it that way. It runs when
:mod:`moire_al.workflows` is imported, so also inside a stock ``rlaunch``: FireWorks
imports a Firework's tasks (all in this package) before it asks for its launch id.
"""

from __future__ import annotations

from pymongo import ReturnDocument

#: FireWorks' own methods, kept by :func:`install` for the case they already handle: no
#: counter document (a database never reset), where they raise FireWorks' own ValueError.
_FIREWORKS: dict = {}


def take(counters, key: str, quantity: int = 1) -> int | None:
    """The first of ``quantity`` new ids of counter ``key`` in the collection ``counters``,
    or None if it holds no counter document. (``$inc`` creates a missing field, so a
    document after the update always holds ``key``.)"""
    doc = counters.find_one_and_update({}, {"$inc": {key: quantity}}, return_document=ReturnDocument.AFTER)
    return None if doc is None else doc[key] - quantity


def _get_new_fw_id(self, quantity=1):
    first = take(self.fw_id_assigner, "next_fw_id", quantity)
    return _FIREWORKS["get_new_fw_id"](self, quantity) if first is None else first


def _get_new_launch_id(self):
    first = take(self.fw_id_assigner, "next_launch_id")
    return _FIREWORKS["get_new_launch_id"](self) if first is None else first


def install() -> None:
    """Make FireWorks' ``LaunchPad`` take its ids from the post-image (idempotent)."""
    from fireworks.core.launchpad import LaunchPad

    for name, ours in (("get_new_fw_id", _get_new_fw_id), ("get_new_launch_id", _get_new_launch_id)):
        if getattr(LaunchPad, name) is not ours:
            _FIREWORKS[name] = getattr(LaunchPad, name)
            setattr(LaunchPad, name, ours)
