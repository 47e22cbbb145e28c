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
import tarfile
import tempfile
import uuid
from pathlib import Path
from typing import Iterable

import numpy as np
from ase import Atoms

from moire_al.conventions import REF_D3, REF_ENERGY, REF_FORCES, REF_LABELLER, REF_STRESS, structure_hash
from moire_al.errors import LabelError
from moire_al.conventions import plain as _jsonable

MODEL_BUCKET = "model_files"
#: GridFS bucket of a sharded fit's partial normal equations
PARTIAL_BUCKET = "fit_partials"


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
    """A copy of ``atoms`` with the REF_ keys of a stored label record."""
    forces = np.asarray(label["forces"], dtype=float)
    if forces.shape != (len(atoms), 3) or not np.all(np.isfinite(forces)):
        raise LabelError(f"label {label.get('key')} has forces of shape {forces.shape} or non-finite values")
    out = atoms.copy()
    out.info[REF_ENERGY] = float(label["energy"])
    out.arrays[REF_FORCES] = forces
    if label.get("stress") is not None:
        out.info[REF_STRESS] = np.asarray(label["stress"], dtype=float)
    out.info[REF_D3] = bool(label.get("d3_included", False))
    out.info[REF_LABELLER] = label.get("labeller", "")
    return out


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

    def ensure_indexes(self) -> None:
        self.structures.create_index("hash", unique=True)
        self.members.create_index([("loop_id", 1), ("hash", 1)], unique=True)
        self.labels.create_index("key", unique=True)
        self.failures.create_index("key")
        self.rounds.create_index([("loop_id", 1), ("round", 1)], unique=True)
        self.loops.create_index("loop_id", unique=True)
        self.models.create_index("model_id", unique=True)

    # ------------------------------------------------------------ structures

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

    def get_structures(self, hashes: list[str]) -> list[Atoms]:
        docs = {d["hash"]: d for d in self.structures.find({"hash": {"$in": list(hashes)}}, {"_id": 0})}
        missing = [h for h in hashes if h not in docs]
        if missing:
            raise KeyError(f"structures not in the store: {missing[:5]}")
        return [doc_to_atoms(docs[h]) for h in hashes]

    # ------------------------------------------------------------ loop membership

    def add_members(self, loop_id: str, hashes: list[str], role: str) -> None:
        from pymongo import UpdateOne

        ops = [UpdateOne({"loop_id": loop_id, "hash": h},
                         {"$setOnInsert": {"loop_id": loop_id, "hash": h, "role": role, "selected_round": None}},
                         upsert=True) for h in hashes]
        if ops:
            self.members.bulk_write(ops, ordered=False)

    def mark_selected(self, loop_id: str, hashes: list[str], round_: int) -> None:
        """Mark pool members as selected for labelling in ``round_`` (first selection wins)."""
        self.members.update_many({"loop_id": loop_id, "hash": {"$in": list(hashes)}, "selected_round": None},
                                 {"$set": {"selected_round": round_}})

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

    def get_label(self, key: str) -> dict | None:
        return self.labels.find_one({"key": key}, {"_id": 0})

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

    def put_failure(self, failure: dict, **extra) -> None:
        self.failures.update_one({"key": failure["key"]},
                                 {"$set": {**_jsonable(failure), **extra, "updated": utcnow()},
                                  "$inc": {"attempts": 1}}, upsert=True)

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

    def put_model(self, model_dir: str | Path, **metadata) -> str:
        """Store a model directory as a tar.gz in GridFS; returns its model_id."""
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
        return model_id

    def get_model_dir(self, model_id: str, dest: str | Path | None = None) -> Path:
        """Unpack a stored model into ``dest`` (a temp dir by default); returns the model dir."""
        import gridfs

        meta = self.models.find_one({"model_id": model_id})
        if meta is None:
            raise KeyError(f"no model {model_id!r} in the store")
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

    def put_loop(self, loop_id: str, params: dict) -> None:
        self.loops.update_one({"loop_id": loop_id},
                              {"$setOnInsert": {"loop_id": loop_id, "params": _jsonable(params),
                                                "material": params.get("material"), "state": "RUNNING",
                                                "created": utcnow()}}, upsert=True)

    def set_loop_state(self, loop_id: str, state: str, **extra) -> None:
        self.loops.update_one({"loop_id": loop_id}, {"$set": {"state": state, **_jsonable(extra)}})

    def put_round(self, doc: dict) -> None:
        self.rounds.update_one({"loop_id": doc["loop_id"], "round": doc["round"]},
                               {"$set": _jsonable(doc)}, upsert=True)  # datetimes stay BSON dates

    def get_round(self, loop_id: str, round_: int) -> dict | None:
        return self.rounds.find_one({"loop_id": loop_id, "round": round_}, {"_id": 0})

    def get_rounds(self, loop_id: str) -> list[dict]:
        return list(self.rounds.find({"loop_id": loop_id}, {"_id": 0}).sort("round", 1))


def dumps_params(params: dict) -> str:
    return json.dumps(_jsonable(params), sort_keys=True)
