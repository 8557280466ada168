"""The snnk command: --version and a quick demo run end to end (table and PNG)."""

import subprocess
import sys

import snnk
from snnk.cli import main


def test_version_flag():
    out = subprocess.run(
        [sys.executable, "-m", "snnk.cli", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == f"snnk {snnk.__version__}"


def test_quick_demo_prints_table_and_writes_png(tmp_path, capsys):
    png = tmp_path / "demo.png"
    assert main(["demo", "--quick", "--out", str(png)]) == 0
    text = capsys.readouterr().out
    for name in (
        "Fourier (structured)",
        "Nyström (kmeans++)",
        "Positive hyperbolic",
        "Arc-cosine (orthogonal)",
        "URF gaussian",
    ):
        assert name in text
    assert "closed form" in text and "MLP 256-256" in text
    assert png.stat().st_size > 10_000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
