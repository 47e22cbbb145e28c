"""Rules about the code itself: one settings object for the environment."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from moire_al import config

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "moire_al"


def test_moire_al_variables_are_read_only_by_the_settings_object():
    readers = re.compile(r"(environ\b|getenv)[^\n]*MOIRE_AL_|MOIRE_AL_[A-Z_]*[^\n]*(environ\b|getenv)")
    known = {name for name, _, _ in config.VARIABLES.values()}
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        if path.name != "config.py":
            assert not readers.search(text), f"{path} reads a MOIRE_AL_ variable itself: use config.environment()"
        unknown = set(re.findall(r"MOIRE_AL_[A-Z][A-Z0-9_]*", text)) - known
        assert not unknown, f"{path} names undocumented variables {sorted(unknown)} (add them to config.VARIABLES)"


def test_every_variable_is_documented():
    doc = (ROOT / "docs" / "architecture.md").read_text()
    for name, default, meaning in config.VARIABLES.values():
        assert f"| `{name}` | {default} | {meaning} |" in doc, name


def test_environment_reads_the_variables(monkeypatch, tmp_path):
    monkeypatch.setenv("MOIRE_AL_DATA", str(tmp_path))
    monkeypatch.delenv("MOIRE_AL_DB_PATH", raising=False)
    monkeypatch.setenv("MOIRE_AL_DB_WAIT", "42")
    monkeypatch.setenv("MOIRE_AL_LABELLER_PLUGINS", "a, b,")
    env = config.environment()
    assert env.data == tmp_path and env.db_path == tmp_path / "db"
    assert env.db_wait_s == 42.0 and config.launchpad_dict()["mongoclient_kwargs"]["serverSelectionTimeoutMS"] == 42000
    assert env.labeller_plugins == ("a", "b")
    monkeypatch.delenv("MOIRE_AL_THREADS", raising=False)
    assert config.environment().threads is None
    monkeypatch.setenv("MOIRE_AL_THREADS", "3")
    assert config.environment().threads == 3
    from moire_al.errors import SettingsError

    monkeypatch.setenv("MOIRE_AL_THREADS", "0")
    with pytest.raises(SettingsError, match="MOIRE_AL_THREADS"):
        config.environment()


def test_round_document_fields_are_documented():
    from dataclasses import fields

    from moire_al.store.documents import RoundDoc

    doc = (ROOT / "docs" / "interfaces.md").read_text()
    for f in fields(RoundDoc):
        if f.name != "extra":
            assert f"| `{f.name}` |" in doc, f.name


def test_spec_keys_are_spelled_only_by_the_builders():
    """One module owns the FireWorks spec keys and builds every Firework."""
    for path in PACKAGE.rglob("*.py"):
        if path.name == "builders.py":
            continue
        text = path.read_text()
        for key in ('"_moire"', "spec._moire", '"_category"', '"_allow_fizzled_parents"', "Firework("):
            assert key not in text, f"{path} spells {key}: use moire_al.workflows.builders"


def test_the_store_is_the_only_reader_and_writer_of_its_collections():
    pattern = re.compile(r"store\.(db|structures|members|labels|failures|models|rounds|loops)\b|\.db\[|"
                         r"\bdb\.(rounds|loops|labels|members|structures|failures|models|analyses)\b")
    for path in PACKAGE.rglob("*.py"):
        if path.parent.name == "store":
            continue
        found = pattern.search(path.read_text())
        assert not found, f"{path} reaches into the store's collections ({found.group(0)}): add a Store method"
