"""The learning dashboard: a Flask blueprint on FireWorks' web GUI app.

``/learning``                      every active-learning loop (collection ``loops``)
``/learning/<loop_id>``            the per-round table and plots of one loop
``/learning/<loop_id>/<plot>.png`` the plots, drawn server-side with matplotlib (Agg):
                                   ``learning_curve``, ``sigma_f``, ``parity``
``/learning/<loop_id>/json``       the round documents without the long arrays

Everything is rendered on the server (PNG via matplotlib's Agg canvas, plain HTML
tables), so the page needs no JavaScript library and works with the network off.
The data come from the ``loops`` and ``rounds`` collections of the store, which
lives in the LaunchPad's database (``current_app.lp.db``); see docs/interfaces.md
for the ``rounds`` document schema. Missing fields are shown as a dash.
"""

from __future__ import annotations

import datetime as _dt
import io
import math
from typing import Any

from flask import Blueprint, Response, abort, current_app, jsonify, render_template, request

blueprint = Blueprint("learning", __name__, url_prefix="/learning", template_folder="templates")

PLOTS = ("learning_curve", "sigma_f", "parity")
# What the per-round table needs; sigma_f and parity can be thousands of numbers.
ROUND_FIELDS = [
    "loop_id", "round", "started", "finished", "wall_time", "n_train", "n_new", "n_failed",
    "model_id", "rmse", "n_pool", "max_sigma_f", "median_sigma_f", "threshold", "selected",
    "converged", "stop_reason",
]
LOOP_HIDDEN = {"_id", "loop_id", "material", "state", "created", "params"}


# --------------------------------------------------------------------------- access


@blueprint.before_request
def _basic_auth():
    """The same HTTP basic auth as the FireWorks pages (``--username/--password``)."""
    user = current_app.config.get("WEBGUI_USERNAME")
    password = current_app.config.get("WEBGUI_PASSWORD")
    if user is None or password is None:
        return None
    auth = request.authorization
    if auth and auth.username == user and auth.password == password:
        return None
    return Response("login required", 401, {"WWW-Authenticate": 'Basic realm="Login Required"'})


def _db():
    return current_app.lp.db


def _loop_id_query(loop_id: str) -> Any:
    """Match ``loop_id`` stored as a string, or as an int when the URL is a number."""
    if loop_id.lstrip("-").isdigit():
        return {"$in": [loop_id, int(loop_id)]}
    return loop_id


def _get_loop(loop_id: str) -> dict:
    """The loop document; 404 when neither ``loops`` nor ``rounds`` knows the id."""
    db = _db()
    q = _loop_id_query(loop_id)
    loop = db.loops.find_one({"loop_id": q})
    if loop is None:
        if db.rounds.find_one({"loop_id": q}, projection={"_id": 1}) is None:
            abort(404, description=f"no active-learning loop {loop_id!r}")
        loop = {"loop_id": loop_id}
    return loop


def _rounds(loop_id: str, fields: list[str] | None = None) -> list[dict]:
    projection = {f: 1 for f in fields} if fields else None
    docs = list(_db().rounds.find({"loop_id": _loop_id_query(loop_id)}, projection=projection))
    docs.sort(key=lambda d: _num(d.get("round"), math.inf))
    return docs


# --------------------------------------------------------------------------- values


def _num(value: Any, default: float | None = None) -> float | None:
    """``value`` as a finite float, else ``default``."""
    if isinstance(value, bool) or value is None:
        return default
    try:
        x = float(value)
    except (TypeError, ValueError):
        return default
    return x if math.isfinite(x) else default


def _rmse(doc: dict, key: str) -> float | None:
    rmse = doc.get("rmse")
    return _num(rmse.get(key)) if isinstance(rmse, dict) else None


def _floats(values: Any) -> list[float]:
    if not isinstance(values, (list, tuple)):
        return []
    out = (_num(v) for v in values)
    return [v for v in out if v is not None]


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


def _params(loop: dict) -> dict:
    """The loop's parameters: its ``params`` sub-document and any other extra field."""
    out = {}
    if isinstance(loop.get("params"), dict):
        out.update(loop["params"])
    out.update({k: v for k, v in loop.items() if k not in LOOP_HIDDEN})
    return out


def _short(value: Any, limit: int = 80) -> str:
    text = _fmt_time(value) if isinstance(value, _dt.datetime) else str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _status(doc: dict) -> str:
    if doc.get("stop_reason"):
        return str(doc["stop_reason"])
    if doc.get("converged"):
        return "converged"
    return "–"


# --------------------------------------------------------------------------- pages


@blueprint.route("")
@blueprint.route("/")
def index():
    db = _db()
    loops = list(db.loops.find({}))
    counts: dict[str, int] = {}
    latest: dict[str, dict] = {}
    for doc in db.rounds.find({}, projection={"loop_id": 1, "round": 1, "rmse": 1,
                                              "max_sigma_f": 1, "n_train": 1, "converged": 1}):
        key = str(doc.get("loop_id"))
        counts[key] = counts.get(key, 0) + 1
        if _num(doc.get("round"), -1) >= _num(latest.get(key, {}).get("round"), -1):
            latest[key] = doc
    known = {str(lp.get("loop_id")) for lp in loops}
    loops += [{"loop_id": k} for k in sorted(counts) if k not in known]  # rounds without a loop doc

    def created_key(lp):
        c = lp.get("created")
        return c.isoformat() if isinstance(c, _dt.datetime) else str(c or "")

    loops.sort(key=created_key, reverse=True)
    rows = []
    for lp in loops:
        key = str(lp.get("loop_id"))
        last = latest.get(key, {})
        rows.append({
            "loop_id": key,
            "material": lp.get("material"),
            "state": lp.get("state"),
            "created": lp.get("created"),
            "n_rounds": counts.get(key, 0),
            "n_train": last.get("n_train"),
            "rmse_f": _rmse(last, "F"),
            "max_sigma_f": last.get("max_sigma_f"),
            "params": ", ".join(f"{k}={_short(v, 40)}" for k, v in _params(lp).items()),
        })
    return render_template("learning_index.html", rows=rows)


@blueprint.route("/<loop_id>")
def loop_page(loop_id: str):
    loop = _get_loop(loop_id)
    rounds = _rounds(loop_id, ROUND_FIELDS)
    rows = [{
        "round": d.get("round"),
        "n_train": d.get("n_train"),
        "n_new": d.get("n_new"),
        "n_failed": d.get("n_failed"),
        "rmse_e": _rmse(d, "E_meV_atom"),
        "rmse_f": _rmse(d, "F"),
        "rmse_f_in": _rmse(d, "F_inplane"),
        "rmse_f_out": _rmse(d, "F_outofplane"),
        "n_pool": d.get("n_pool"),
        "max_sigma_f": d.get("max_sigma_f"),
        "median_sigma_f": d.get("median_sigma_f"),
        "threshold": d.get("threshold"),
        "n_selected": len(d["selected"]) if isinstance(d.get("selected"), list) else None,
        "wall_time": d.get("wall_time"),
        "finished": d.get("finished"),
        "model_id": d.get("model_id"),
        "status": _status(d),
    } for d in rounds]
    return render_template(
        "learning_loop.html",
        loop_id=loop_id,
        material=loop.get("material"),
        state=loop.get("state"),
        created=loop.get("created"),
        params={k: _short(v) for k, v in _params(loop).items()},
        rows=rows,
        plots=PLOTS if rounds else (),
    )


@blueprint.route("/<loop_id>/json")
def loop_json(loop_id: str):
    loop = _get_loop(loop_id)
    loop.pop("_id", None)
    rounds = _rounds(loop_id, ROUND_FIELDS)
    for d in rounds:
        d.pop("_id", None)
    return jsonify({"loop": _jsonable(loop), "rounds": _jsonable(rounds)})


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, _dt.datetime):
        return obj.isoformat()
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


# --------------------------------------------------------------------------- plots


def _figure(width: float = 9.0, height: float = 4.0):
    from matplotlib.figure import Figure  # no pyplot: thread-safe, Agg canvas below

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _png(fig) -> Response:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    buf = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buf)
    resp = Response(buf.getvalue(), mimetype="image/png")
    resp.headers["Cache-Control"] = "no-store"
    return resp


def _placeholder(message: str, width: float = 6.0, height: float = 3.0) -> Response:
    fig = _figure(width, height)
    ax = fig.add_subplot()
    ax.set_axis_off()
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=13, color="0.4",
            transform=ax.transAxes)
    return _png(fig)


@blueprint.route("/<loop_id>/learning_curve.png")
def learning_curve_png(loop_id: str):
    _get_loop(loop_id)
    docs = _rounds(loop_id, ["round", "n_train", "rmse", "max_sigma_f", "median_sigma_f", "threshold"])
    if not docs:
        return _placeholder("no rounds yet")
    fig = _figure(10.0, 4.0)
    ax1, ax2 = fig.subplots(1, 2)

    labels = (("F", "all", "o-"), ("F_inplane", "in-plane", "s--"), ("F_outofplane", "out-of-plane", "^--"))
    drawn = False
    for key, label, style in labels:
        pts = [(_num(d.get("n_train")), _rmse(d, key)) for d in docs]
        pts = [(n, r) for n, r in pts if n is not None and r is not None]
        if pts:
            ax1.plot(*zip(*pts), style, label=label, ms=5)
            drawn = True
    if drawn:
        ax1.legend(fontsize=8)
        xs = [n for d in docs if (n := _num(d.get("n_train"))) and n > 0]
        if xs and max(xs) / min(xs) > 20:
            ax1.set_xscale("log")
    else:
        ax1.text(0.5, 0.5, "no test RMSE yet", ha="center", va="center", transform=ax1.transAxes)
    ax1.set_xlabel("training structures")
    ax1.set_ylabel("force RMSE (eV/Å)")
    ax1.set_title("learning curve (held-out test split)")
    ax1.grid(alpha=0.3)

    rounds = [_num(d.get("round")) for d in docs]
    for key, label, style in (("max_sigma_f", "max σ_F", "o-"), ("median_sigma_f", "median σ_F", "s:")):
        pts = [(r, _num(d.get(key))) for r, d in zip(rounds, docs)]
        pts = [(r, v) for r, v in pts if r is not None and v is not None]
        if pts:
            ax2.plot(*zip(*pts), style, label=label, ms=5)
    _threshold_line(ax2, docs)
    ax2.set_xlabel("round")
    ax2.set_ylabel("relative force uncertainty σ_F")
    ax2.set_title("committee uncertainty of the pool")
    _integer_xaxis(ax2)
    ax2.grid(alpha=0.3)
    if ax2.get_legend_handles_labels()[0]:
        ax2.legend(fontsize=8)
    return _png(fig)


def _threshold_line(ax, docs: list[dict]) -> None:
    pts = [(_num(d.get("round")), _num(d.get("threshold"))) for d in docs]
    pts = [(r, t) for r, t in pts if r is not None and t is not None]
    if not pts:
        return
    values = {t for _, t in pts}
    if len(values) == 1:
        ax.axhline(values.pop(), color="C3", ls="--", lw=1.2, label="threshold")
    else:
        ax.step(*zip(*pts), where="mid", color="C3", ls="--", lw=1.2, label="threshold")


def _integer_xaxis(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


@blueprint.route("/<loop_id>/sigma_f.png")
def sigma_f_png(loop_id: str):
    _get_loop(loop_id)
    docs = _rounds(loop_id, ["round", "sigma_f", "threshold"])
    data = [(_num(d.get("round")), _floats(d.get("sigma_f"))) for d in docs]
    data = [(r, v) for r, v in data if r is not None and v]
    if not data:
        return _placeholder("no σ_F scores yet" if docs else "no rounds yet")
    fig = _figure(max(6.0, min(14.0, 3.0 + 0.5 * len(data))), 4.0)
    ax = fig.add_subplot()
    positions = [r for r, _ in data]
    ax.boxplot([v for _, v in data], positions=positions, widths=0.6, showfliers=True,
               flierprops={"markersize": 2, "alpha": 0.4})
    step = max(1, len(positions) // 20)
    ax.set_xticks(positions[::step], [_fmt_num(int(r)) for r in positions[::step]])
    _threshold_line(ax, docs)
    allv = [x for _, v in data for x in v]
    pos = [x for x in allv if x > 0]
    if pos and len(pos) == len(allv) and max(pos) / min(pos) > 100:
        ax.set_yscale("log")
    ax.set_xlim(min(positions) - 0.7, max(positions) + 0.7)
    ax.set_xlabel("round")
    ax.set_ylabel("σ_F of scored candidates")
    ax.set_title("pool uncertainty per round")
    ax.grid(alpha=0.3, axis="y")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    return _png(fig)


@blueprint.route("/<loop_id>/parity.png")
def parity_png(loop_id: str):
    """Force parity of the latest round with parity data (or ``?round=N``)."""
    _get_loop(loop_id)
    docs = _rounds(loop_id, ["round", "parity", "rmse"])
    want = request.args.get("round", type=int)
    chosen, ref, pred = None, [], []
    for d in reversed(docs):
        if want is not None and _num(d.get("round")) != want:
            continue
        par = d.get("parity") if isinstance(d.get("parity"), dict) else {}
        pairs = [(_num(a), _num(b)) for a, b in zip(par.get("F_ref") or [], par.get("F_pred") or [])]
        pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
        if pairs:
            chosen = d
            ref, pred = (list(x) for x in zip(*pairs))
            break
    if chosen is None:
        return _placeholder("no parity data yet" if docs else "no rounds yet")
    fig = _figure(5.0, 5.0)
    ax = fig.add_subplot()
    ax.scatter(ref, pred, s=4, alpha=0.5, lw=0)
    lo, hi = min(min(ref), min(pred)), max(max(ref), max(pred))
    pad = 0.05 * (hi - lo or 1.0)
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="0.3", lw=1)
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_ylim(lo - pad, hi + pad)
    ax.set_aspect("equal")
    rmse = math.sqrt(sum((a - b) ** 2 for a, b in zip(ref, pred)) / len(ref))
    ax.text(0.04, 0.96, f"RMSE {rmse:.3f} eV/Å\n{len(ref)} components", transform=ax.transAxes,
            va="top", fontsize=9, bbox={"fc": "white", "ec": "0.8"})
    ax.set_xlabel("reference force (eV/Å)")
    ax.set_ylabel("ACE force (eV/Å)")
    ax.set_title(f"force parity, round {_fmt_num(chosen.get('round'))}")
    ax.grid(alpha=0.3)
    return _png(fig)
