"""Does the local job database hand out each id once under concurrent clients?

FireWorks takes its Firework and Launch ids from ``find_one_and_update({}, {"$inc": ...})``
returning the document *before* the update. Three processes each take 400 ids that way
from a fresh local server (``moire-al db start``'s program, in a temporary directory), and
the same with the document after the update. Prints one line per form and exits 1 when an
id was handed out twice (SecantusDB 0.7.0b3 does: docs/architecture.md). A mongod should
pass, since it documents findAndModify as atomic; this was not checked here. The script
tests the server with plain pymongo; moire-al's FireWorks ids take the exact *after* form
(``moire_al/workflows/ids.py``).

Usage: .venv/bin/python scripts/db_atomicity.py [--clients 3] [--ids 400]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import tempfile
from pathlib import Path


def _take(uri: str, after: bool, n: int, q) -> None:
    from pymongo import MongoClient, ReturnDocument

    ids = MongoClient(uri)["atomicity"]["ids"]
    ret = ReturnDocument.AFTER if after else ReturnDocument.BEFORE
    q.put([ids.find_one_and_update({}, {"$inc": {"next": 1}}, return_document=ret)["next"] for _ in range(n)])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=3)
    ap.add_argument("--ids", type=int, default=400)
    args = ap.parse_args(argv)
    from pymongo import MongoClient

    from moire_al import dbserver

    path = Path(tempfile.mkdtemp(prefix="moire-al-atomicity-"))
    info = dbserver.start(port=dbserver.free_port(), path=path)
    bad = False
    try:
        ids = MongoClient(info.uri)["atomicity"]["ids"]
        ctx = mp.get_context("spawn")
        for after in (False, True):
            ids.delete_many({})
            ids.insert_one({"next": 1})
            q = ctx.Queue()
            procs = [ctx.Process(target=_take, args=(info.uri, after, args.ids, q)) for _ in range(args.clients)]
            for p in procs:
                p.start()
            got = sum((q.get() for _ in procs), [])
            for p in procs:
                p.join()
            final = ids.find_one()["next"]
            distinct = len(set(got))
            bad |= distinct < len(got)
            print(f"return_document={'AFTER' if after else 'BEFORE'}: {len(got)} ids taken by {args.clients} clients, "
                  f"{distinct} distinct, counter ends at {final} (expected {len(got) + 1})")
    finally:
        dbserver.stop(path)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
