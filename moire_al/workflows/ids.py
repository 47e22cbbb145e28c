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

_MESSAGES = {
    "next_fw_id": "Could not get next FW id! If you have not yet initialized the database, "
                  "please do so by performing a database reset (e.g., lpad reset)",
    "next_launch_id": "Could not get next launch id! If you have not yet initialized the "
                      "database, please do so by performing a database reset (e.g., lpad reset)",
}


def take(counters, key: str, quantity: int = 1) -> int:
    """The first of ``quantity`` new ids of counter ``key`` in the collection ``counters``."""
    doc = counters.find_one_and_update({}, {"$inc": {key: quantity}}, return_document=ReturnDocument.AFTER)
    if doc is None or key not in doc:
        raise ValueError(_MESSAGES.get(key, f"no counter {key!r}"))  # FireWorks' own error and words
    return doc[key] - quantity


def _get_new_fw_id(self, quantity=1):
    return take(self.fw_id_assigner, "next_fw_id", quantity)


def _get_new_launch_id(self):
    return take(self.fw_id_assigner, "next_launch_id")


def install() -> None:
    """Make FireWorks' ``LaunchPad`` take its ids from the post-image (idempotent)."""
    from fireworks.core.launchpad import LaunchPad

    LaunchPad.get_new_fw_id = _get_new_fw_id
    LaunchPad.get_new_launch_id = _get_new_launch_id
