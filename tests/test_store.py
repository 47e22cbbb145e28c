"""The store on the real job database server."""

from __future__ import annotations


def test_put_model_again_replaces_its_file(launchpad, tmp_path):
    from moire_al.store.mongo import Store

    store = Store.from_launchpad(launchpad)
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "a.txt").write_text("one")
    store.put_model(tmp_path / "m", model_id="x")
    (tmp_path / "m" / "a.txt").write_text("two")
    store.put_model(tmp_path / "m", model_id="x")
    assert store.db["model_files.files"].count_documents({}) == 1
    assert (store.get_model_dir("x", tmp_path / "out") / "a.txt").read_text() == "two"
