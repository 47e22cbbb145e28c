"""`moire-al build ...` subcommands."""

import pytest

from moire_al.cli import main
from moire_al.structures.io import read_structures


def test_build_twisted_1p05(tmp_path):
    # its speed (goal < 10 s for the command) is measured by benchmarks/structures.py
    out = tmp_path / "tbg.xyz"
    assert main(["build", "twisted", "--material", "graphene", "--angle", "1.05", "-o", str(out)]) == 0
    (at,) = read_structures(out)
    assert len(at) == 11908 and at.info["theta_deg"] == pytest.approx(1.0501, abs=1e-4)
    assert at.arrays["layer"].sum() == 11908 // 2


def test_build_local_png_defect_and_errors(tmp_path, capsys):
    out = tmp_path / "loc.xyz"
    assert main(["build", "local", "--theta-local", "10", "--m", "2", "--material", "hbn",
                 "-o", str(out), "--png"]) == 0
    png = tmp_path / "loc.png"
    assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert main(["build", "defect", str(out), "--kind", "vacancy", "--layer", "1", "-o", str(tmp_path / "v.xyz")]) == 0
    assert len(read_structures(tmp_path / "v.xyz")[0]) == 75
    capsys.readouterr()
    assert main(["build", "local", "--theta-local", "0", "--m", "1", "-o", str(tmp_path / "x.xyz")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("moire-al: error:") and "\n" not in err
    assert main(["build", "pool", "--material", "graphene", "--seed", "3", "-o", str(tmp_path / "p.xyz")]) == 0
    assert 40 <= len(read_structures(tmp_path / "p.xyz")) <= 80
