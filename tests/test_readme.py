"""Every ```python block of README.md runs as written, in order, each in a fresh namespace
(so every block is self-contained) and in a temporary working directory."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def python_blocks(text: str) -> list[tuple[int, str]]:
    """``(line number, source)`` of every ```python block of ``text``, in order."""
    return [(text.count("\n", 0, m.start()) + 2, m.group(1)) for m in _BLOCK.finditer(text)]


BLOCKS = python_blocks(README.read_text(encoding="utf-8"))


def test_readme_starts_with_make_demo_and_make_test():
    text = README.read_text(encoding="utf-8")
    first = text.split("```", 2)[1]  # the first fenced block of the page
    assert first.startswith("bash\nmake demo") and "\nmake test" in first
    assert len(BLOCKS) >= 5


def test_python_m_snnk_as_the_readme_shows():
    assert "python -m snnk --version" in README.read_text(encoding="utf-8")
    out = subprocess.run(
        [sys.executable, "-m", "snnk", "--version"], capture_output=True, text=True, check=True
    )
    from snnk import __version__

    assert out.stdout.strip() == f"snnk {__version__}"


def test_block_extraction():
    text = "a\n```python\nx = 1\n```\n```bash\nls\n```\n```python\ny = 2\n```\n"
    assert python_blocks(text) == [(3, "x = 1\n"), (9, "y = 2\n")]


@pytest.mark.parametrize(("line", "source"), BLOCKS, ids=[f"line{n}" for n, _ in BLOCKS])
def test_readme_block_runs(line, source, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = compile(source, f"README.md:{line}", "exec")
    exec(code, {"__name__": "__readme__"})
