"""``moire-al webgui``: the FireWorks web GUI, offline, with the learning dashboard."""

from __future__ import annotations

import argparse

PASSWORD_ENV = "MOIRE_AL_WEBGUI_PASSWORD"  # read by moire_al.config.Environment


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("webgui", help="serve the FireWorks web GUI + learning dashboard (offline)",
                       allow_abbrev=False)  # `--password X` must not pass as --password-file
    p.add_argument("-l", "--launchpad", default=None, help="launchpad.yaml (default: the local job database)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--workers", type=int, default=2, help="gunicorn worker processes")
    p.add_argument("--username", default=None,
                   help=f"require HTTP basic auth with this user; the password comes from ${PASSWORD_ENV} "
                        "or --password-file (never the command line, which every local user sees in ps)")
    p.add_argument("--password-file", default=None, help="file holding the password (first line)")
    p.set_defaults(func=_cmd_webgui)


def webgui_auth(args) -> tuple[str | None, str | None]:
    """(username, password) from --username and the environment or --password-file."""
    from moire_al.errors import MoireALError

    password = None
    if args.password_file:
        try:
            with open(args.password_file) as fh:
                password = fh.readline().rstrip("\n")
        except OSError as exc:
            raise MoireALError(f"--password-file {args.password_file}: {exc.strerror or exc}") from None
    else:
        from moire_al.config import environment

        password = environment().webgui_password
    if bool(args.username) != bool(password):
        raise MoireALError(f"give --username and a password (${PASSWORD_ENV} or --password-file), or neither")
    return args.username, password


def _cmd_webgui(args) -> int:
    from moire_al.config import INTERACTIVE_DB_WAIT_S, get_launchpad
    from moire_al.web.app import serve

    username, password = webgui_auth(args)
    lp = get_launchpad(args.launchpad, wait_s=INTERACTIVE_DB_WAIT_S)
    print(f"web GUI on http://{args.host}:{args.port}/  (dashboard: /learning)", flush=True)
    serve(lp, host=args.host, port=args.port, workers=args.workers, username=username, password=password)
    return 0
