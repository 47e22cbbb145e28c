"""The web GUI: FireWorks' own Flask app, made to work offline, plus our dashboard.

FireWorks' workflow pages load jQuery from a CDN, so with no internet the workflow
graph never draws. We serve jQuery from the XStatic-jQuery package instead and
rewrite the two ``<script>`` tags on the way out; every other FireWorks page is
untouched. The learning dashboard (``/learning``) is a blueprint on the same app.
"""

from __future__ import annotations

from pathlib import Path

from flask import Response, send_from_directory

CDN_JQUERY = ("//code.jquery.com/jquery.min.js", "https://code.jquery.com/jquery.min.js")
LOCAL_JQUERY = "/moire-al/vendor/jquery.min.js"
NAV_LINK = (
    '<div class="container" style="margin-top:-10px">'
    '<a href="/">Workflows</a> &middot; <a href="/learning">Learning dashboard</a></div>'
)


def jquery_dir() -> Path:
    import xstatic.pkg.jquery

    return Path(xstatic.pkg.jquery.BASE_DIR)


def create_app(lp, username: str | None = None, password: str | None = None):
    """Configure FireWorks' Flask app on LaunchPad ``lp`` and return it."""
    from fireworks.flask_site.app import app

    app.lp = lp
    app.config["WEBGUI_USERNAME"] = username
    app.config["WEBGUI_PASSWORD"] = password
    if getattr(app, "_moire_al_ready", False):
        return app

    @app.route(LOCAL_JQUERY)
    def _local_jquery():
        return send_from_directory(jquery_dir(), "jquery.min.js", mimetype="application/javascript")

    @app.after_request
    def _offline_assets(response: Response) -> Response:
        if response.mimetype == "text/html" and not response.direct_passthrough:
            html = response.get_data(as_text=True)
            for cdn in CDN_JQUERY:
                html = html.replace(f'src="{cdn}"', f'src="{LOCAL_JQUERY}"')
            html = html.replace('<hr class="myhrline">', '<hr class="myhrline">' + NAV_LINK, 1)
            response.set_data(html)
        return response

    from moire_al.web.dashboard import blueprint

    app.register_blueprint(blueprint)
    app._moire_al_ready = True
    return app


def serve(lp, host: str = "127.0.0.1", port: int = 5000, workers: int = 2, **auth) -> None:
    """Serve with gunicorn (blocking)."""
    import gunicorn.app.base

    app = create_app(lp, **auth)

    class _Standalone(gunicorn.app.base.BaseApplication):
        def load_config(self):
            self.cfg.set("bind", f"{host}:{port}")
            self.cfg.set("workers", workers)
            self.cfg.set("timeout", 120)

        def load(self):
            return app

    _Standalone().run()
