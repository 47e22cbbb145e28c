"""The web GUI: FireWorks' pages made offline, and the learning dashboard.

(a) Flask test client against a real job database (SecantusDB via ``db_server``).
(b) Debian chromium, headless, against ``moire-al webgui`` (gunicorn) in a
    subprocess: the workflow graph must actually draw with the network off, and the
    dashboard's plot images must load. A control run serves the same page with the
    jQuery ``<script>`` pointed back at the CDN and checks that the graph then does
    *not* draw, so the assertion really tells offline jQuery from CDN jQuery.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml
from fireworks import Firework, LaunchPad, ScriptTask, Workflow

from moire_al import dbserver

CHROMIUM = "/usr/bin/chromium"
LOCAL_JQUERY = "/moire-al/vendor/jquery.min.js"
LOOP = "tblg-1p1deg"
EMPTY_LOOP = "just-created"
N_ROUNDS = 4
# wf_cyto.js colours graph nodes by state (fireworks.features.fw_report.state_to_color).
NODE_COLOURS = {(0x2E, 0x92, 0xF2), (0x1F, 0x62, 0xA2)}  # READY, WAITING
NODE_PIXELS_MIN = 20_000


# --------------------------------------------------------------------------- data


def fake_rounds(loop_id: str, n: int = N_ROUNDS) -> list[dict]:
    rng = random.Random(7)
    t0 = dt.datetime(2025, 3, 1, 12, 0, 0)
    docs, n_train = [], 0
    for r in range(n):
        n_new = 20 if r else 40
        n_train += n_new
        scale = 0.6 / (r + 1)
        sigma = [abs(rng.gauss(scale, scale / 3)) for _ in range(150)]
        f_ref = [rng.gauss(0.0, 1.0) for _ in range(300)]
        rmse_f = 0.2 / (r + 1)
        last = r == n - 1
        docs.append({
            "loop_id": loop_id, "round": r,
            "started": t0 + dt.timedelta(hours=r), "finished": t0 + dt.timedelta(hours=r, minutes=40),
            "wall_time": 2400.0 + r, "n_train": n_train, "n_new": n_new, "n_failed": r % 2,
            "failed_keys": [f"k{r}"] if r % 2 else [], "model_id": f"{loop_id}-r{r}",
            "rmse": {"E_meV_atom": 5.0 / (r + 1), "F": rmse_f, "F_inplane": rmse_f * 0.9,
                     "F_outofplane": rmse_f * 1.3},
            "parity": {"F_ref": f_ref, "F_pred": [f + rng.gauss(0, rmse_f) for f in f_ref]},
            "n_pool": len(sigma), "sigma_f": sigma, "max_sigma_f": max(sigma),
            "median_sigma_f": sorted(sigma)[len(sigma) // 2], "threshold": 0.15,
            "selected": [uuid.uuid4().hex for _ in range(0 if last else 20)],
            "converged": last, "stop_reason": "converged" if last else None,
        })
    return docs


def populate(lp: LaunchPad) -> int:
    """A two-step workflow plus one loop with rounds and one without; the wf's id."""
    fw1 = Firework(ScriptTask.from_str("echo label"), name="label_batch", fw_id=-1)
    fw2 = Firework(ScriptTask.from_str("echo fit"), name="fit_committee", fw_id=-2, parents=[fw1])
    ids = lp.add_wf(Workflow([fw1, fw2], name="al-round-0"))
    db = lp.db
    created = dt.datetime(2025, 3, 1, 11, 0, 0)
    db.loops.insert_many([
        {"loop_id": LOOP, "material": "graphene", "state": "COMPLETED", "created": created,
         "params": {"theta_deg": 1.08, "committee_size": 32, "max_rounds": 10}},
        {"loop_id": EMPTY_LOOP, "material": "hbn", "state": "RUNNING",
         "created": created + dt.timedelta(days=1), "threshold": 0.1},
    ])
    db.rounds.insert_many(fake_rounds(LOOP))
    populate_finetunes(db)
    return ids[-1]


FINETUNE = "neb-graphene-7"
FINETUNE_PENDING = "strain-hbn-2"


def _table(f_all: float, f_bi: float) -> dict:
    return {"2": {"n_structures": 5, "E_meV_per_atom": 10 * f_bi, "F_eV_per_A": f_bi},
            "all": {"n_structures": 5, "E_meV_per_atom": 10 * f_all, "F_eV_per_A": f_all}}


def populate_finetunes(db) -> None:
    """A finished NEB fine-tuning job and one still labelling, through the store."""
    from moire_al.store.documents import FinetuneDoc
    from moire_al.store.mongo import Store

    store = Store(db)
    x = [0.0, 0.7, 1.4, 2.1, 2.8]
    store.put_finetune(FinetuneDoc(
        finetune_id=FINETUNE, model_id="base-1", new_model_id="tuned-1", labeller="cp2k",
        labels="CP2K PBE+D3(BJ) (DFT)", task=["h1", "h2", "h3", "h4", "h5"], n_task=4, n_failed=1,
        failed_keys=["hash-cp2k-dead"], n_train=120, test_set="test",
        task_before=_table(0.4321, 0.4), task_after=_table(0.0987, 0.09),
        test_before=_table(0.2, 0.19), test_after=_table(0.21, 0.2), forgetting_F_ratio=1.05,
        neb_before={"energies_rel": [0, 0.9, 1.6, 0.9, 0], "path_coordinate": x, "barrier": 1.6},
        neb_after={"energies_rel": [0, 0.8, 1.3, 0.8, 0], "path_coordinate": x, "barrier": 1.3},
        barrier_before=1.6, barrier_after=1.3, barrier_labels=1.25,
        created=dt.datetime(2025, 3, 2, 9, 0, 0)))
    store.put_finetune(FinetuneDoc(finetune_id=FINETUNE_PENDING, model_id="base-2", labeller="cp2k",
                                   task=["s1", "s2"], created=dt.datetime(2025, 3, 3, 9, 0, 0)))


@pytest.fixture(scope="module")
def web_db(db_server):
    """A LaunchPad on its own database, filled once for the whole module."""
    name = f"t_web_{uuid.uuid4().hex[:8]}"
    lp = LaunchPad(host=db_server.uri, name=name, uri_mode=True, strm_lvl="ERROR",
                   mongoclient_kwargs={"serverSelectionTimeoutMS": 20000})
    lp.reset("", require_password=False)
    wf_id = populate(lp)
    yield lp, wf_id
    lp.connection.drop_database(name)


@pytest.fixture
def client(web_db):
    from moire_al.web.app import create_app

    lp, _ = web_db
    app = create_app(lp)
    app.config["TESTING"] = True
    return app.test_client()


# --------------------------------------------------------------------------- (a) test client


def test_home_and_workflow_page_use_local_jquery(client, web_db):
    _, wf_id = web_db
    home = client.get("/")
    assert home.status_code == 200
    assert b"al-round-0" in home.data
    assert b'href="/learning"' in home.data  # nav link added by the app

    page = client.get(f"/wf/{wf_id}")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert f'src="{LOCAL_JQUERY}"' in html
    assert "code.jquery.com" not in html
    assert "wf_cyto.js" in html

    graph = json.loads(client.get(f"/wf/{wf_id}/json").data)  # FireWorks: no JSON mimetype
    assert {n["data"]["name"] for n in graph["nodes"]} == {"label_batch", "fit_committee"}

    js = client.get(LOCAL_JQUERY)
    assert js.status_code == 200
    assert js.mimetype in ("application/javascript", "text/javascript")
    assert b"jQuery" in js.data[:2000] and len(js.data) > 50_000


def test_learning_index_lists_loops(client):
    for url in ("/learning", "/learning/"):
        r = client.get(url)
        assert r.status_code == 200, url
        html = r.get_data(as_text=True)
        assert f'href="/learning/{LOOP}"' in html and f'href="/learning/{EMPTY_LOOP}"' in html
        assert "graphene" in html and "theta_deg=1.08" in html
        assert "code.jquery.com" not in html


def test_learning_loop_page_table_and_plots(client):
    r = client.get(f"/learning/{LOOP}")
    assert r.status_code == 200
    html = r.get_data(as_text=True)
    assert html.count("<tr>") >= N_ROUNDS + 1
    assert "converged" in html and "40.0 min" in html  # stop reason, wall time
    assert "0.0500" in html  # RMSE F of the last round (0.2 / 4)
    for name in ("learning_curve", "sigma_f", "parity"):
        assert f'src="/learning/{LOOP}/{name}.png"' in html
        png = client.get(f"/learning/{LOOP}/{name}.png")
        assert png.status_code == 200, name
        assert png.mimetype == "image/png"
        assert png.data.startswith(b"\x89PNG") and len(png.data) > 5000
    assert client.get(f"/learning/{LOOP}/parity.png?round=0").status_code == 200

    data = client.get(f"/learning/{LOOP}/json").get_json()
    assert [d["round"] for d in data["rounds"]] == list(range(N_ROUNDS))
    assert "sigma_f" not in data["rounds"][0]


def test_loop_with_zero_rounds_and_unknown_loop(client):
    r = client.get(f"/learning/{EMPTY_LOOP}")
    assert r.status_code == 200
    assert b"no finished rounds yet" in r.data
    for name in ("learning_curve", "sigma_f", "parity"):
        png = client.get(f"/learning/{EMPTY_LOOP}/{name}.png")
        assert png.status_code == 200 and png.data.startswith(b"\x89PNG")
    assert client.get("/learning/no-such-loop").status_code == 404
    assert client.get("/learning/no-such-loop/parity.png").status_code == 404


def test_finetune_pages_show_errors_before_and_after_and_the_neb(client):
    index = client.get("/learning").get_data(as_text=True)
    assert "fine-tuning jobs (2)" in index
    r = client.get("/learning/finetunes")
    assert r.status_code == 200
    html = r.get_data(as_text=True)
    assert f'href="/learning/finetunes/{FINETUNE}"' in html and f'href="/learning/finetunes/{FINETUNE_PENDING}"' in html
    assert "0.4321 &rarr; 0.0987" in html               # task force RMSE before -> after
    assert "1.600 &rarr; 1.300 (1.250)" in html         # NEB barrier before -> after (labels)
    assert "labelling / refit pending" in html and "finished" in html

    page = client.get(f"/learning/finetunes/{FINETUNE}").get_data(as_text=True)
    assert "tuned-1" in page and "hash-cp2k-dead" in page and "1 failed" in page
    assert page.count("&rarr;") >= 4 and "0.0900" in page     # the bilayer row after
    assert f'src="/learning/finetunes/{FINETUNE}/neb.png"' in page
    png = client.get(f"/learning/finetunes/{FINETUNE}/neb.png")
    assert png.status_code == 200 and png.data.startswith(b"\x89PNG") and len(png.data) > 5000
    data = client.get(f"/learning/finetunes/{FINETUNE}/json").get_json()
    assert data["barrier_after"] == 1.3 and data["task_after"]["all"]["F_eV_per_A"] == 0.0987

    pending = client.get(f"/learning/finetunes/{FINETUNE_PENDING}").get_data(as_text=True)
    assert "no-errors" in pending and "plot-neb" not in pending
    assert client.get(f"/learning/finetunes/{FINETUNE_PENDING}/neb.png").data.startswith(b"\x89PNG")
    assert client.get("/learning/finetunes/no-such-job").status_code == 404


def test_empty_database(db_server):
    from moire_al.web.app import create_app

    name = f"t_web_empty_{uuid.uuid4().hex[:8]}"
    lp = LaunchPad(host=db_server.uri, name=name, uri_mode=True, strm_lvl="ERROR",
                   mongoclient_kwargs={"serverSelectionTimeoutMS": 20000})
    try:
        c = create_app(lp).test_client()
        r = c.get("/learning")
        assert r.status_code == 200 and b"No active-learning loops" in r.data
        assert c.get("/").status_code == 200
    finally:
        lp.connection.drop_database(name)


def test_basic_auth_covers_the_dashboard(web_db):
    from moire_al.web.app import create_app

    lp, _ = web_db
    app = create_app(lp, username="u", password="p")
    try:
        c = app.test_client()
        assert c.get("/learning").status_code == 401
        assert c.get("/learning", auth=("u", "p")).status_code == 200
    finally:
        create_app(lp)  # the FireWorks app is a module-level singleton: reset auth


# --------------------------------------------------------------------------- (b) browser

needs_chromium = pytest.mark.skipif(
    not os.path.exists(CHROMIUM),
    reason=f"{CHROMIUM} not installed (run scripts/install_browser.sh)",
)


def chromium(tmp_path: Path, url: str, *, screenshot: Path | None = None) -> str:
    """Load ``url`` headless (no network beyond localhost is available) and dump the DOM."""
    profile = tmp_path / f"profile-{uuid.uuid4().hex[:6]}"
    cmd = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--disable-dev-shm-usage", f"--user-data-dir={profile}",
        "--window-size=1200,900", "--virtual-time-budget=5000",
    ]
    cmd += [f"--screenshot={screenshot}"] if screenshot else ["--dump-dom"]
    proc = subprocess.run(cmd + [url], capture_output=True, text=True, timeout=60)
    shutil.rmtree(profile, ignore_errors=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def graph_drawn(dom: str) -> bool:
    """wf_cyto.js ran: cytoscape put its canvases into #cy and panzoom added its widget."""
    return "<canvas" in dom and "cy-panzoom" in dom


def node_pixels(png: Path) -> int:
    from PIL import Image

    img = Image.open(png).convert("RGB")
    return sum(n for n, rgb in img.getcolors(maxcolors=1 << 20) if rgb in NODE_COLOURS)


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"web GUI exited early: {proc.stdout.read()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"web GUI did not answer on {url}")


@pytest.fixture(scope="module")
def webgui(web_db, tmp_path_factory):
    """``moire-al webgui`` (gunicorn) in a subprocess on the module's database."""
    lp, wf_id = web_db
    tmp = tmp_path_factory.mktemp("webgui")
    lpfile = tmp / "launchpad.yaml"
    lpfile.write_text(yaml.safe_dump({
        "host": lp.host, "name": lp.name, "uri_mode": True, "strm_lvl": "ERROR",
        "mongoclient_kwargs": {"serverSelectionTimeoutMS": 20000},
    }))
    port = dbserver.free_port()
    exe = Path(sys.executable).with_name("moire-al")
    proc = subprocess.Popen(
        [str(exe), "webgui", "-l", str(lpfile), "--port", str(port), "--workers", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(base + "/learning", proc)
        yield base, wf_id
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@needs_chromium
def test_browser_draws_workflow_graph_offline(webgui, tmp_path):
    base, wf_id = webgui
    dom = chromium(tmp_path, f"{base}/wf/{wf_id}")
    assert LOCAL_JQUERY in dom and "code.jquery.com" not in dom
    assert graph_drawn(dom), "the workflow graph did not draw (jQuery or wf_cyto.js failed)"
    assert 'class="jsonview"' in dom  # the jQuery JSONView plugin ran too

    shot = tmp_path / "wf.png"
    chromium(tmp_path, f"{base}/wf/{wf_id}", screenshot=shot)
    # Two drawn nodes cover ~90k px; the page's two small state badges alone ~2k px.
    assert node_pixels(shot) > NODE_PIXELS_MIN, "no READY/WAITING-coloured graph nodes on the screenshot"


@needs_chromium
def test_browser_dashboard_images_load(webgui, tmp_path):
    base, _ = webgui
    dom = chromium(tmp_path, f"{base}/learning/{LOOP}")
    for name in ("learning_curve", "sigma_f", "parity"):
        tag = dom[dom.index(f'id="plot-{name}"'):].split(">", 1)[0]
        assert 'data-loaded="yes"' in tag, f"{name} plot did not load: {tag}"
    index = chromium(tmp_path, f"{base}/learning")
    assert LOOP in index
    job = chromium(tmp_path, f"{base}/learning/finetunes/{FINETUNE}")
    tag = job[job.index('id="plot-neb"'):].split(">", 1)[0]
    assert 'data-loaded="yes"' in tag, f"NEB plot did not load: {tag}"


class _CdnJquery:
    """WSGI middleware: serve the app's pages with jQuery pointed back at the CDN."""

    def __init__(self, app):
        self.app = app

    def __call__(self, environ, start_response):
        captured = {}

        def sr(status, headers, exc_info=None):
            captured["status"], captured["headers"] = status, headers
            return lambda data: None

        body = b"".join(self.app(environ, sr))
        headers = captured["headers"]
        if any(k.lower() == "content-type" and v.startswith("text/html") for k, v in headers):
            body = body.replace(LOCAL_JQUERY.encode(), b"https://code.jquery.com/jquery.min.js")
            headers = [(k, str(len(body)) if k.lower() == "content-length" else v) for k, v in headers]
        start_response(captured["status"], headers)
        return [body]


@needs_chromium
def test_control_cdn_jquery_leaves_graph_undrawn(web_db, tmp_path):
    """The browser assertion discriminates: with CDN jQuery (no internet) nothing draws."""
    from werkzeug.serving import make_server

    from moire_al.web.app import create_app

    lp, wf_id = web_db
    server = make_server("127.0.0.1", 0, _CdnJquery(create_app(lp)), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_port}/wf/{wf_id}"
    shot = tmp_path / "cdn.png"
    try:
        dom = chromium(tmp_path, url)
        chromium(tmp_path, url, screenshot=shot)
    finally:
        server.shutdown()
        server.server_close()
    assert "code.jquery.com" in dom and LOCAL_JQUERY not in dom
    if graph_drawn(dom):
        pytest.skip("this machine reached code.jquery.com: the offline control is inconclusive")
    assert 'class="jsonview"' not in dom
    assert node_pixels(shot) < NODE_PIXELS_MIN
