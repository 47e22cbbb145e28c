"""``moire-al webgui``: the FireWorks web GUI, offline, with the learning dashboard."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("webgui", help="serve the FireWorks web GUI + learning dashboard (offline)")
    p.add_argument("-l", "--launchpad", default=None, help="launchpad.yaml (default: the local job database)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--workers", type=int, default=2, help="gunicorn worker processes")
    p.add_argument("--username", default=None, help="require HTTP basic auth with this user")
    p.add_argument("--password", default=None)
    p.set_defaults(func=_cmd_webgui)


def _cmd_webgui(args) -> int:
    from moire_al.config import INTERACTIVE_DB_WAIT_S, get_launchpad
    from moire_al.errors import MoireALError
    from moire_al.web.app import serve

    if bool(args.username) != bool(args.password):
        raise MoireALError("give both --username and --password, or neither")
    lp = get_launchpad(args.launchpad, wait_s=INTERACTIVE_DB_WAIT_S)
    print(f"web GUI on http://{args.host}:{args.port}/  (dashboard: /learning)", flush=True)
    serve(lp, host=args.host, port=args.port, workers=args.workers,
          username=args.username, password=args.password)
    return 0
