"""Configurations, labels, models and learning rounds in MongoDB.

The store lives in the same database as the FireWorks LaunchPad, so a Firetask
reaches it as ``Store(launchpad.db)`` and the web GUI as ``Store(app.lp.db)``.
Identities are content hashes (:mod:`moire_al.conventions`): a structure is stored
once, and a label is stored once per (structure, labeller, settings), enforced by a
unique index, so concurrent or repeated labelling can never duplicate a label.
"""

from __future__ import annotations

import datetime as _dt
import io
import json
import logging
import tarfile
import tempfile
import time
import uuid
from pathlib import Path
from typing import Iterable

import numpy as np
from ase import Atoms

from moire_al.conventions import structure_hash
from moire_al.store.documents import FinetuneDoc, LoopDoc, RoundDoc
from moire_al.errors import DatabaseError, LabelError, NotFoundError
from moire_al.conventions import plain as _jsonable

MODEL_BUCKET = "model_files"
#: GridFS bucket of a sharded fit's partial normal equations
PARTIAL_BUCKET = "fit_partials"


def _loop_query(loop_id):
    """A loop id; one that is a number also matches a loop stored with an int id."""
    if isinstance(loop_id, str) and loop_id.lstrip("-").isdigit():
        return {"$in": [loop_id, int(loop_id)]}
    return loop_id
# One attempt to reach an unreachable server (s); between attempts the store backs off
# from RETRY_FIRST_S, doubling up to RETRY_MAX_S, for as long as the client waits to
# select a server (serverSelectionTimeoutMS).
ATTEMPT_S = 10.0
RETRY_FIRST_S = 0.5
RETRY_MAX_S = 15.0

log = logging.getLogger(__name__)


def _retrying(method):
    """Retry a store operation while the job database is unreachable (a restart, a
    dropped connection), with backoff and one log line per attempt; a
    :class:`DatabaseError` once the client's server-selection timeout has passed (the
    LaunchPad's: :func:`moire_al.config.db_wait_s` for workers, seconds for commands).

    Store writes are upserts or inserts under a unique key, so sending one again after
    its reply was lost stores nothing twice (a counter may count that attempt twice).
    """
    import functools

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        import pymongo
        from pymongo.errors import AutoReconnect

        client = self.db.client
        deadline, delay, t0 = None, RETRY_FIRST_S, time.monotonic()
        while True:
            try:
                if deadline is not None or not client.topology_description.has_writable_server():
                    with pymongo.timeout(ATTEMPT_S):  # do not wait silently for the whole selection timeout
                        client.admin.command("ping")
                out = method(self, *args, **kwargs)
                if deadline is not None:
                    log.warning("job database reachable again after %.0f s; %s goes on",
                                time.monotonic() - t0, method.__name__)
                return out
            except AutoReconnect as exc:
                now = time.monotonic()
                if deadline is None:
                    deadline = t0 + float(client.options.server_selection_timeout)
                if now >= deadline:
                    raise DatabaseError(f"the job database has been unreachable for {now - t0:.0f} s "
                                        f"({type(exc).__name__}); giving up on {method.__name__}") from None
                wait = min(delay, deadline - now)
                log.warning("job database unreachable (%s); retrying %s in %.1f s (waited %.0f of %.0f s)",
                            str(exc).split(",")[0][:120], method.__name__, wait, now - t0, deadline - t0)
                time.sleep(wait)
                delay = min(2 * delay, RETRY_MAX_S)

    return wrapper


def utcnow() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc).replace(tzinfo=None)


def atoms_to_doc(atoms: Atoms) -> dict:
    """A BSON-friendly document of a structure (no labels)."""
    doc = {
        "hash": structure_hash(atoms),
        "numbers": atoms.numbers.tolist(),
        "positions": atoms.positions.tolist(),
        "cell": atoms.cell.array.tolist(),
        "pbc": [bool(x) for x in atoms.pbc],
        "n_atoms": len(atoms),
        "info": {k: _jsonable(v) for k, v in atoms.info.items() if not k.startswith("REF_")},
    }
    if "layer" in atoms.arrays:
        doc["layer"] = atoms.arrays["layer"].astype(int).tolist()
    return doc


def doc_to_atoms(doc: dict) -> Atoms:
    atoms = Atoms(numbers=doc["numbers"], positions=doc["positions"], cell=doc["cell"], pbc=doc["pbc"])
    atoms.info.update(doc.get("info", {}))
    if "layer" in doc:
        atoms.arrays["layer"] = np.asarray(doc["layer"], dtype=int)
    return atoms


def apply_label(atoms: Atoms, label: dict) -> Atoms:
    """A copy of ``atoms`` with the REF_ keys of a stored label record
    (:meth:`moire_al.labelling.LabelRecord.apply_to`, which checks it)."""
    from moire_al.labelling.base import LabelRecord

    return LabelRecord.from_dict(label).apply_to(atoms)


class Store:
    """moire-al's collections in one MongoDB database."""

    def __init__(self, db):
        self.db = db
        self.structures = db["structures"]
        self.members = db["members"]
        self.labels = db["labels"]
        self.failures = db["label_failures"]
        self.models = db["models"]
        self.rounds = db["rounds"]
        self.loops = db["loops"]
        self.ensure_indexes()

    @classmethod
    def from_launchpad(cls, lp) -> "Store":
        return cls(lp.db)

    @classmethod
    def from_uri(cls, uri: str, name: str) -> "Store":
        import pymongo

        return cls(pymongo.MongoClient(uri, serverSelectionTimeoutMS=20000)[name])

    @_retrying
    def ensure_indexes(self) -> None:
        self.structures.create_index("hash", unique=True)
        self.members.create_index([("loop_id", 1), ("hash", 1)], unique=True)
        self.labels.create_index("key", unique=True)
        self.failures.create_index("key")
        self.rounds.create_index([("loop_id", 1), ("round", 1)], unique=True)
        self.loops.create_index("loop_id", unique=True)
        self.models.create_index("model_id", unique=True)
        self.db["finetunes"].create_index("finetune_id", unique=True)

    # ------------------------------------------------------------ structures

    @_retrying
    def put_structures(self, atoms_list: Iterable[Atoms]) -> list[str]:
        """Store structures (once each); returns their hashes in order."""
        from pymongo import UpdateOne

        hashes, ops = [], []
        for atoms in atoms_list:
            doc = atoms_to_doc(atoms)
            hashes.append(doc["hash"])
            ops.append(UpdateOne({"hash": doc["hash"]}, {"$setOnInsert": doc}, upsert=True))
        if ops:
            self.structures.bulk_write(ops, ordered=False)
        return hashes

    @_retrying
    def get_structures(self, hashes: list[str]) -> list[Atoms]:
        docs = {d["hash"]: d for d in self.structures.find({"hash": {"$in": list(hashes)}}, {"_id": 0})}
        missing = [h for h in hashes if h not in docs]
        if missing:
            raise NotFoundError(f"structures not in the store: {missing[:5]}")
        return [doc_to_atoms(docs[h]) for h in hashes]

    # ------------------------------------------------------------ loop membership

    @_retrying
    def add_members(self, loop_id: str, hashes: list[str], role: str) -> None:
        from pymongo import UpdateOne

        ops = [UpdateOne({"loop_id": loop_id, "hash": h},
                         {"$setOnInsert": {"loop_id": loop_id, "hash": h, "role": role, "selected_round": None}},
                         upsert=True) for h in hashes]
        if ops:
            self.members.bulk_write(ops, ordered=False)

    @_retrying
    def mark_selected(self, loop_id: str, hashes: list[str], round_: int) -> None:
        """Mark pool members as selected for labelling in ``round_`` (first selection wins)."""
        self.members.update_many({"loop_id": loop_id, "hash": {"$in": list(hashes)}, "selected_round": None},
                                 {"$set": {"selected_round": round_}})

    @_retrying
    def member_hashes(self, loop_id: str, role: str | None = None, selected: bool | None = None,
                      upto_round: int | None = None) -> list[str]:
        q: dict = {"loop_id": loop_id}
        if role:
            q["role"] = role
        if selected is True:
            q["selected_round"] = {"$ne": None} if upto_round is None else {"$ne": None, "$lte": upto_round}
        elif selected is False:
            q["selected_round"] = None
        return [d["hash"] for d in self.members.find(q, {"hash": 1}).sort("hash", 1)]

    # ------------------------------------------------------------ labels

    @_retrying
    def get_label(self, key: str) -> dict | None:
        return self.labels.find_one({"key": key}, {"_id": 0})

    @_retrying
    def label_keys_present(self, keys) -> set:
        """Which of ``keys`` have a stored label."""
        return set(self.labels.distinct("key", {"key": {"$in": list(keys)}}))

    @_retrying
    def put_label(self, record: dict, **extra) -> bool:
        """Insert a label record; False when that label key is already stored."""
        from pymongo.errors import DuplicateKeyError

        forces = np.asarray(record.get("forces"), dtype=float)
        if not np.all(np.isfinite(forces)) or not np.isfinite(float(record.get("energy", np.nan))):
            raise LabelError(f"refusing to store label {record.get('key')}: non-finite energy or forces")
        doc = {**_jsonable(record), **extra, "created": utcnow()}
        try:
            self.labels.insert_one(doc)
            return True
        except DuplicateKeyError:
            return False

    @_retrying
    @_retrying
    def count_label_run(self, loop_id: str, hash_: str) -> None:
        """Count one labelling attempt of a loop member (``label_runs``)."""
        self.members.update_one({"loop_id": loop_id, "hash": hash_}, {"$inc": {"label_runs": 1}})

    @_retrying
    def resolve_failures(self, key: str) -> None:
        """Mark the stored failures of a label key as resolved (the label is in)."""
        self.failures.update_many({"key": key}, {"$set": {"resolved": True}})

    @_retrying
    def unresolved_failures(self, loop_id: str) -> list[dict]:
        return list(self.failures.find({"loop_id": loop_id, "resolved": False}, {"_id": 0}))

    @_retrying
    def count_labels(self, loop_id: str, round_: int | None = None) -> int:
        q: dict = {"loop_id": loop_id}
        if round_ is not None:
            q["round"] = round_
        return int(self.labels.count_documents(q))

    def put_failure(self, failure: dict, **extra) -> None:
        self.failures.update_one({"key": failure["key"]},
                                 {"$set": {**_jsonable(failure), **extra, "updated": utcnow()},
                                  "$inc": {"attempts": 1}}, upsert=True)

    @_retrying
    def labelled_atoms(self, hashes: list[str], keys: list[str]) -> tuple[list[Atoms], list[str]]:
        """Structures with their labels applied, for the given (hash, label key) pairs.

        Returns the labelled structures and the hashes that have no label yet.
        """
        labels = {d["key"]: d for d in self.labels.find({"key": {"$in": list(keys)}}, {"_id": 0})}
        have = [(h, k) for h, k in zip(hashes, keys) if k in labels]
        atoms = self.get_structures([h for h, _ in have])
        out = [apply_label(a, labels[k]) for a, (_, k) in zip(atoms, have)]
        missing = [h for h, k in zip(hashes, keys) if k not in labels]
        return out, missing

    # ------------------------------------------------------------ models

    @_retrying
    def put_model(self, model_dir: str | Path, **metadata) -> str:
        """Store a model directory as a tar.gz in GridFS; returns its model_id.

        Storing a model id again (a rerun fit) replaces its file: no orphaned tar.gz."""
        import gridfs

        model_id = metadata.pop("model_id", None) or uuid.uuid4().hex[:12]
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            tar.add(str(model_dir), arcname="model")
        fs = gridfs.GridFSBucket(self.db, bucket_name=MODEL_BUCKET)
        file_id = fs.upload_from_stream(f"{model_id}.tar.gz", buf.getvalue(), metadata={"model_id": model_id})
        self.models.update_one({"model_id": model_id},
                               {"$set": {**_jsonable(metadata), "model_id": model_id, "file_id": file_id,
                                         "created": utcnow()}}, upsert=True)
        for old in self.db[f"{MODEL_BUCKET}.files"].find({"metadata.model_id": model_id, "_id": {"$ne": file_id}},
                                                         {"_id": 1}):
            fs.delete(old["_id"])
        return model_id

    @_retrying
    def has_model(self, model_id: str) -> bool:
        return self.models.count_documents({"model_id": model_id}, limit=1) > 0

    @_retrying
    def get_model_dir(self, model_id: str, dest: str | Path | None = None) -> Path:
        """Unpack a stored model into ``dest`` (a temp dir by default); returns the model dir."""
        import gridfs

        meta = self.models.find_one({"model_id": model_id})
        if meta is None:
            raise NotFoundError(f"no model {model_id!r} in the store")
        fs = gridfs.GridFSBucket(self.db, bucket_name=MODEL_BUCKET)
        data = fs.open_download_stream(meta["file_id"]).read()
        dest = Path(dest or tempfile.mkdtemp(prefix=f"moire-al-model-{model_id}-"))
        dest.mkdir(parents=True, exist_ok=True)
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            tar.extractall(dest, filter="data")
        return dest / "model"

    def put_partial(self, data: bytes, **metadata) -> str:
        """Store a shard's partial normal equations (bytes) in GridFS; returns the file id."""
        import gridfs

        fs = gridfs.GridFSBucket(self.db, bucket_name=PARTIAL_BUCKET)
        return str(fs.upload_from_stream(f"{metadata.get('fit_id', 'fit')}-{metadata.get('shard', 0)}.npz",
                                         data, metadata=_jsonable(metadata)))

    def get_partial(self, file_id: str) -> bytes:
        import gridfs
        from bson import ObjectId

        fs = gridfs.GridFSBucket(self.db, bucket_name=PARTIAL_BUCKET)
        return fs.open_download_stream(ObjectId(file_id)).read()

    # ------------------------------------------------------------ loops and rounds

    @_retrying
    def put_loop(self, loop_id: str, params: dict) -> None:
        self.loops.update_one({"loop_id": loop_id},
                              {"$setOnInsert": {"loop_id": loop_id, "params": _jsonable(params),
                                                "material": params.get("material"), "state": "RUNNING",
                                                "created": utcnow()}}, upsert=True)

    @_retrying
    def get_loop(self, loop_id: str) -> LoopDoc | None:
        d = self.loops.find_one({"loop_id": _loop_query(loop_id)}, {"_id": 0})
        return None if d is None else LoopDoc.from_dict(d)

    @_retrying
    def get_loops(self) -> list[LoopDoc]:
        """Every loop, oldest first."""
        return [LoopDoc.from_dict(d) for d in self.loops.find({}, {"_id": 0}).sort("created", 1)]

    @_retrying
    def loop_ids(self) -> list[str]:
        """Every loop id, oldest first."""
        return [d["loop_id"] for d in self.loops.find({}, {"loop_id": 1}).sort("created", 1)]

    @_retrying
    def put_analysis(self, doc: dict) -> None:
        """One analysis result of a model (``analyses`` collection)."""
        self.db["analyses"].insert_one(_jsonable(doc))

    @_retrying
    def get_analyses(self, **query) -> list[dict]:
        """Analysis results matching ``query`` (e.g. ``analysis="md", series=...``)."""
        return list(self.db["analyses"].find(query, {"_id": 0}))

    @_retrying
    def put_finetune(self, doc: FinetuneDoc) -> None:
        """Write (or update: the fields not None) a fine-tuning job's document."""
        d = {k: v for k, v in doc.as_dict().items() if v is not None}
        self.db["finetunes"].update_one({"finetune_id": doc.finetune_id}, {"$set": _jsonable(d)}, upsert=True)

    @_retrying
    def get_finetune(self, finetune_id: str) -> FinetuneDoc | None:
        d = self.db["finetunes"].find_one({"finetune_id": finetune_id}, {"_id": 0})
        return None if d is None else FinetuneDoc.from_dict(d)

    @_retrying
    def count_finetunes(self) -> int:
        return self.db["finetunes"].count_documents({})

    @_retrying
    def get_finetunes(self) -> list[FinetuneDoc]:
        """Every fine-tuning job, oldest first."""
        return [FinetuneDoc.from_dict(d) for d in self.db["finetunes"].find({}, {"_id": 0}).sort("created", 1)]

    @_retrying
    def set_loop_state(self, loop_id: str, state: str, **extra) -> None:
        self.loops.update_one({"loop_id": loop_id}, {"$set": {"state": state, **_jsonable(extra)}})

    @_retrying
    def put_round(self, doc: RoundDoc) -> None:
        self.rounds.update_one({"loop_id": doc.loop_id, "round": doc.round},
                               {"$set": _jsonable(doc.as_dict())}, upsert=True)  # datetimes stay BSON dates

    @_retrying
    def get_round(self, loop_id: str, round_: int) -> RoundDoc | None:
        d = self.rounds.find_one({"loop_id": _loop_query(loop_id), "round": round_}, {"_id": 0})
        return None if d is None else RoundDoc.from_dict(d)

    @_retrying
    def get_rounds(self, loop_id: str | None = None, fields: list[str] | None = None) -> list[RoundDoc]:
        """Round documents of a loop (every loop: None), by round; ``fields``: only those
        (the others None), to leave out the long lists."""
        projection = {f: 1 for f in {"loop_id", "round", *(fields or ())}} if fields else {}
        projection["_id"] = 0
        q = {} if loop_id is None else {"loop_id": _loop_query(loop_id)}
        docs = [RoundDoc.from_dict(d) for d in self.rounds.find(q, projection)
                if d.get("loop_id") is not None and d.get("round") is not None]
        return sorted(docs, key=lambda d: (str(d.loop_id), d.round))


def dumps_params(params: dict) -> str:
    return json.dumps(_jsonable(params), sort_keys=True)
