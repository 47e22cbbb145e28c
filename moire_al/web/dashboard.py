"""The learning dashboard: a Flask blueprint on FireWorks' web GUI app.

``/learning``                      every active-learning loop (collection ``loops``)
``/learning/<loop_id>``            the per-round table and plots of one loop
``/learning/<loop_id>/<plot>.png`` the plots, drawn server-side with matplotlib (Agg):
                                   ``learning_curve``, ``sigma_f``, ``parity``
``/learning/<loop_id>/json``       the round documents without the long arrays
``/learning/finetunes``            every fine-tuning job (collection ``finetunes``)
``/learning/finetunes/<id>``       one job: errors before/after per layer count, the NEB
                                   profiles (``neb.png``) of the NEB workflow; ``.../json``

Everything is rendered on the server (PNG via matplotlib's Agg canvas, plain HTML
tables), so the page needs no JavaScript library and works with the network off.
The data come from the store (:class:`moire_al.store.mongo.Store` on the LaunchPad's
database, ``current_app.lp.db``) as :class:`~moire_al.store.documents.LoopDoc` and
:class:`~moire_al.store.documents.RoundDoc`; see docs/interfaces.md for the round
document. Missing fields are shown as a dash.
"""

from __future__ import annotations

import datetime as _dt
import io
import math
from typing import Any

from flask import Blueprint, Response, abort, current_app, jsonify, render_template, request

from moire_al.conventions import plain
from moire_al.store.documents import FinetuneDoc, LoopDoc, RoundDoc
from moire_al.workflows import report
from moire_al.workflows.report import _num, _rmse

blueprint = Blueprint("learning", __name__, url_prefix="/learning", template_folder="templates")

PLOTS = ("learning_curve", "sigma_f", "parity")
# What the per-round table needs; sigma_f and parity can be thousands of numbers.
ROUND_FIELDS = [
    "loop_id", "round", "started", "finished", "wall_time", "n_train", "n_new", "n_failed",
    "model_id", "rmse", "n_pool", "max_sigma_f", "median_sigma_f", "threshold", "selected",
    "converged", "stop_reason",
]
LOOP_HIDDEN = {"_id", "loop_id", "material", "state", "created", "params"}
#: the round fields of the index page
INDEX_FIELDS = ["rmse", "max_sigma_f", "n_train", "converged"]


# --------------------------------------------------------------------------- access


@blueprint.before_request
def _basic_auth():
    """The same HTTP basic auth as the FireWorks pages (``--username``; the password from
    the environment or a file)."""
    user = current_app.config.get("WEBGUI_USERNAME")
    password = current_app.config.get("WEBGUI_PASSWORD")
    if user is None or password is None:
        return None
    auth = request.authorization
    if auth and auth.username == user and auth.password == password:
        return None
    return Response("login required", 401, {"WWW-Authenticate": 'Basic realm="Login Required"'})


def _store():
    """The store on the app's LaunchPad database (made once per database)."""
    from moire_al.store.mongo import Store

    db = current_app.lp.db
    cached = current_app.extensions.get("moire_al_store")
    if cached is None or cached.db is not db:
        cached = current_app.extensions["moire_al_store"] = Store(db)
    return cached


def _get_loop(loop_id: str) -> LoopDoc:
    """The loop document; 404 when neither ``loops`` nor ``rounds`` knows the id."""
    store = _store()
    loop = store.get_loop(loop_id)
    if loop is None:
        if not store.get_rounds(loop_id, fields=["round"]):
            abort(404, description=f"no active-learning loop {loop_id!r}")
        loop = LoopDoc(loop_id=loop_id)
    return loop


def _rounds(loop_id: str, fields: list[str] | None = None) -> list[RoundDoc]:
    return sorted(_store().get_rounds(loop_id, fields=fields), key=lambda d: _num(d.round, math.inf))


# --------------------------------------------------------------------------- values


@blueprint.app_template_filter("al_num")
def _fmt_num(value: Any, digits: int = 3) -> str:
    x = _num(value)
    if x is None:
        return "–"
    if x == int(x) and abs(x) < 1e12 and not isinstance(value, float):
        return str(int(x))
    return f"{x:.{digits}g}" if (abs(x) >= 1e4 or (x != 0 and abs(x) < 1e-3)) else f"{x:.{digits}f}"


@blueprint.app_template_filter("al_time")
def _fmt_time(value: Any, short: bool = False) -> str:
    if value in (None, ""):
        return "–"
    text = value.isoformat() if isinstance(value, _dt.datetime) else str(value)
    text = text[:19].replace("T", " ")
    return text[5:16] if short and len(text) >= 16 else text


@blueprint.app_template_filter("al_duration")
def _fmt_duration(value: Any) -> str:
    s = _num(value)
    if s is None:
        return "–"
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.2f} h"


def _params(loop: LoopDoc) -> dict:
    """The loop's parameters: its ``params`` sub-document and any other field."""
    out = {}
    if isinstance(loop.params, dict):
        out.update(loop.params)
    out.update({k: v for k, v in loop.as_dict().items() if k not in LOOP_HIDDEN and v is not None})
    return out


def _short(value: Any, limit: int = 80) -> str:
    text = _fmt_time(value) if isinstance(value, _dt.datetime) else str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _status(doc: RoundDoc) -> str:
    if doc.stop_reason:
        return str(doc.stop_reason)
    if doc.converged:
        return "converged"
    return "–"


# --------------------------------------------------------------------------- pages


@blueprint.route("")
@blueprint.route("/")
def index():
    store = _store()
    loops = store.get_loops()
    counts: dict[str, int] = {}
    latest: dict[str, RoundDoc] = {}
    for doc in store.get_rounds(None, fields=INDEX_FIELDS):
        key = str(doc.loop_id)
        counts[key] = counts.get(key, 0) + 1
        if key not in latest or _num(doc.round, -1) >= _num(latest[key].round, -1):
            latest[key] = doc
    known = {str(lp.loop_id) for lp in loops}
    loops += [LoopDoc(loop_id=k) for k in sorted(counts) if k not in known]  # rounds without a loop doc

    def created_key(lp):
        c = lp.created
        return c.isoformat() if isinstance(c, _dt.datetime) else str(c or "")

    loops.sort(key=created_key, reverse=True)
    n_finetunes = store.count_finetunes()
    rows = []
    for lp in loops:
        key = str(lp.loop_id)
        last = latest.get(key) or RoundDoc(loop_id=key, round=-1)
        rows.append({
            "loop_id": key,
            "material": lp.material,
            "state": lp.state,
            "created": lp.created,
            "n_rounds": counts.get(key, 0),
            "n_train": last.n_train,
            "rmse_f": _rmse(last, "F"),
            "max_sigma_f": last.max_sigma_f,
            "params": ", ".join(f"{k}={_short(v, 40)}" for k, v in _params(lp).items()),
        })
    return render_template("learning_index.html", rows=rows, n_finetunes=n_finetunes)


def _get_finetune(finetune_id: str) -> FinetuneDoc:
    doc = _store().get_finetune(finetune_id)
    if doc is None:
        abort(404, description=f"no fine-tuning job {finetune_id!r}")
    return doc


def _finetune_state(doc: FinetuneDoc) -> str:
    if doc.new_model_id and (doc.neb_before is None or doc.neb_after is not None):
        return "finished"
    if doc.new_model_id:
        return "refitted, NEB after pending"
    return "labelling / refit pending" if doc.task else "started"


def _finetune_row(doc: FinetuneDoc) -> dict:
    return {
        "finetune_id": doc.finetune_id, "state": _finetune_state(doc), "labels": doc.labels or doc.labeller,
        "model_id": doc.model_id, "new_model_id": doc.new_model_id,
        "n_task": len(doc.task) if isinstance(doc.task, list) else doc.n_task,
        "n_failed": doc.n_failed, "n_train": doc.n_train,
        "task_f": (report.table_f_rmse(doc.task_before), report.table_f_rmse(doc.task_after)),
        "test_f": (report.table_f_rmse(doc.test_before), report.table_f_rmse(doc.test_after)),
        "test_set": doc.test_set,
        "forgetting": doc.forgetting_F_ratio,
        "barrier": (doc.barrier_before, doc.barrier_after, doc.barrier_labels),
        "created": doc.created, "wall_time": doc.wall_time,
    }


@blueprint.route("/finetunes")
def finetunes_page():
    rows = [_finetune_row(d) for d in reversed(_store().get_finetunes())]
    return render_template("learning_finetunes.html", rows=rows)


@blueprint.route("/finetunes/<finetune_id>")
def finetune_page(finetune_id: str):
    doc = _get_finetune(finetune_id)
    tables = []
    for name, before, after in (("task", doc.task_before, doc.task_after), ("original test set", doc.test_before,
                                                                             doc.test_after)):
        before, after = before or {}, after or {}
        for group in sorted(set(before) | set(after), key=lambda g: (g == "all", g)):
            b, a = before.get(group, {}), after.get(group, {})
            tables.append({"set": name, "group": group, "n": b.get("n_structures", a.get("n_structures")),
                           "e": (b.get("E_meV_per_atom"), a.get("E_meV_per_atom")),
                           "f": (b.get("F_eV_per_A"), a.get("F_eV_per_A"))})
    return render_template("learning_finetune.html", row=_finetune_row(doc), tables=tables,
                           failed_keys=doc.failed_keys or [],
                           neb=doc.neb_before is not None or doc.neb_after is not None)


@blueprint.route("/finetunes/<finetune_id>/json")
def finetune_json(finetune_id: str):
    return jsonify(_jsonable(_get_finetune(finetune_id).as_dict()))


@blueprint.route("/finetunes/<finetune_id>/neb.png")
def finetune_neb_png(finetune_id: str):
    fig = report.neb_profile_figure(_get_finetune(finetune_id))
    return _png(fig) if fig is not None else _placeholder("no NEB stored for this job")


@blueprint.route("/<loop_id>")
def loop_page(loop_id: str):
    loop = _get_loop(loop_id)
    rounds = _rounds(loop_id, ROUND_FIELDS)
    rows = [{
        "round": d.round,
        "n_train": d.n_train,
        "n_new": d.n_new,
        "n_failed": d.n_failed,
        "rmse_e": _rmse(d, "E_meV_atom"),
        "rmse_f": _rmse(d, "F"),
        "rmse_f_in": _rmse(d, "F_inplane"),
        "rmse_f_out": _rmse(d, "F_outofplane"),
        "n_pool": d.n_pool,
        "max_sigma_f": d.max_sigma_f,
        "median_sigma_f": d.median_sigma_f,
        "threshold": d.threshold,
        "n_selected": len(d.selected) if isinstance(d.selected, list) else None,
        "wall_time": d.wall_time,
        "finished": d.finished,
        "model_id": d.model_id,
        "status": _status(d),
    } for d in rounds]
    return render_template(
        "learning_loop.html",
        loop_id=loop_id,
        material=loop.material,
        state=loop.state,
        created=loop.created,
        params={k: _short(v) for k, v in _params(loop).items()},
        rows=rows,
        plots=PLOTS if rounds else (),
    )


@blueprint.route("/<loop_id>/json")
def loop_json(loop_id: str):
    loop = _get_loop(loop_id)
    rounds = [{k: v for k, v in d.as_dict().items() if k in ROUND_FIELDS} for d in _rounds(loop_id, ROUND_FIELDS)]
    return jsonify({"loop": _jsonable(loop.as_dict()), "rounds": _jsonable(rounds)})


def _jsonable(obj: Any) -> Any:
    return plain(obj, iso_dates=True)


# --------------------------------------------------------------------------- plots
# The figures themselves live in moire_al.workflows.report (shared with the report).


def _png(fig) -> Response:
    buf = io.BytesIO()
    report.save_png(fig, buf)
    resp = Response(buf.getvalue(), mimetype="image/png")
    resp.headers["Cache-Control"] = "no-store"
    return resp


def _placeholder(message: str, width: float = 6.0, height: float = 3.0) -> Response:
    fig = report._figure(width, height)
    ax = fig.add_subplot()
    ax.set_axis_off()
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=13, color="0.4",
            transform=ax.transAxes)
    return _png(fig)


@blueprint.route("/<loop_id>/learning_curve.png")
def learning_curve_png(loop_id: str):
    _get_loop(loop_id)
    docs = _rounds(loop_id, ["round", "n_train", "rmse", "max_sigma_f", "median_sigma_f", "threshold"])
    fig = report.learning_curve_figure(docs)
    return _png(fig) if fig is not None else _placeholder("no rounds yet")


@blueprint.route("/<loop_id>/sigma_f.png")
def sigma_f_png(loop_id: str):
    _get_loop(loop_id)
    docs = _rounds(loop_id, ["round", "sigma_f", "threshold"])
    fig = report.sigma_f_figure(docs)
    return _png(fig) if fig is not None else _placeholder("no σ_F scores yet" if docs else "no rounds yet")


@blueprint.route("/<loop_id>/parity.png")
def parity_png(loop_id: str):
    """Force parity of the latest round with parity data (or ``?round=N``)."""
    _get_loop(loop_id)
    docs = _rounds(loop_id, ["round", "parity", "rmse"])
    fig = report.parity_figure(docs, request.args.get("round", type=int))
    return _png(fig) if fig is not None else _placeholder("no parity data yet" if docs else "no rounds yet")
