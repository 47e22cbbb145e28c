"""Secrets and job-database files are readable by their owner only."""

from __future__ import annotations

import os
import stat

import pymongo
import pytest
import yaml

from moire_al import config, dbserver
from moire_al.errors import MoireALError


def other_bits(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode) & 0o077


def test_data_directory_and_database_files_are_private(tmp_path):
    path = tmp_path / "db"
    info = dbserver.start(port=dbserver.free_port(), path=path)
    try:
        client = pymongo.MongoClient(info.uri, serverSelectionTimeoutMS=5000)
        client.t.c.insert_one({"secret": 1})
        client.close()
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o700
        files = [p for p in path.rglob("*") if p.is_file()]
        assert len(files) > 2 and (path / "server.json") in files
        assert [str(p) for p in files if other_bits(p)] == []
    finally:
        dbserver.stop(path)


def test_an_existing_open_data_directory_is_made_private(tmp_path):
    path = tmp_path / "db"
    path.mkdir(mode=0o755)
    os.chmod(path, 0o755)
    dbserver.start(port=dbserver.free_port(), path=path)
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o700
    finally:
        dbserver.stop(path)


def test_launchpad_file_with_credentials_is_private(tmp_path):
    f = tmp_path / "launchpad.yaml"
    f.write_text("old\n")
    os.chmod(f, 0o644)
    d = config.launchpad_dict("mongodb://user:pa55@db.example:27017/?authSource=admin", "moire_al")
    config.write_launchpad_file(f, d)
    assert stat.S_IMODE(os.stat(f).st_mode) == 0o600
    assert yaml.safe_load(f.read_text())["host"].startswith("mongodb://user:pa55@")


def test_webgui_password_never_on_the_command_line(tmp_path, monkeypatch):
    from moire_al.cli import build_parser
    from moire_al.web.cli import webgui_auth

    parser = build_parser()
    with pytest.raises(SystemExit):  # argparse: no such option
        parser.parse_args(["webgui", "--username", "u", "--password", "p"])
    monkeypatch.setenv("MOIRE_AL_WEBGUI_PASSWORD", "from-env")
    assert webgui_auth(parser.parse_args(["webgui", "--username", "u"])) == ("u", "from-env")
    monkeypatch.delenv("MOIRE_AL_WEBGUI_PASSWORD")
    pw = tmp_path / "pw"
    pw.write_text("from-file\n")
    os.chmod(pw, 0o600)
    assert webgui_auth(parser.parse_args(["webgui", "--username", "u", "--password-file", str(pw)])) == \
        ("u", "from-file")
    with pytest.raises(MoireALError, match="password"):
        webgui_auth(parser.parse_args(["webgui", "--username", "u"]))
    assert webgui_auth(parser.parse_args(["webgui"])) == (None, None)
