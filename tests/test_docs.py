"""The documentation site: every ```python block of docs/*.md runs as written (each in a fresh
namespace and a temporary working directory), the benchmark page reads as results for users,
and, where mkdocs is installed (the ``docs`` extra), ``mkdocs build --strict`` passes.

A block that cannot run in a test (it needs a download or a GPU) is marked by the line
``<!-- no-test -->`` right above its fence; it is then only compiled.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_readme import python_blocks

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
NO_TEST = "<!-- no-test -->\n"


def page_blocks() -> list[tuple[str, int, str, bool]]:
    """``(page, line, source, runs)`` of every ```python block of every page under docs/."""
    out = []
    for page in sorted(DOCS.rglob("*.md")):
        text = page.read_text(encoding="utf-8")
        lines = text.splitlines(keepends=True)
        for line, source in python_blocks(text):
            marked = line >= 3 and lines[line - 3] == NO_TEST
            out.append((page.relative_to(DOCS).as_posix(), line, source, not marked))
    return out


BLOCKS = page_blocks()


def test_the_pages_have_examples():
    pages = {page for page, *_ in BLOCKS}
    for page in ("index.md", "kernels.md", "features.md", "nystrom.md", "layers.md"):
        assert page in pages, f"docs/{page} has no Python example"


def test_no_test_marker(tmp_path, monkeypatch):
    page = tmp_path / "p.md"
    page.write_text("a\n<!-- no-test -->\n```python\nx = 1\n```\n```python\ny = 2\n```\n")
    monkeypatch.setattr(sys.modules[__name__], "DOCS", tmp_path)
    assert page_blocks() == [("p.md", 4, "x = 1\n", False), ("p.md", 7, "y = 2\n", True)]


@pytest.mark.parametrize(
    ("page", "line", "source", "runs"), BLOCKS, ids=[f"{p}:{n}" for p, n, *_ in BLOCKS]
)
def test_docs_block_runs(page, line, source, runs, tmp_path, monkeypatch):
    code = compile(source, f"docs/{page}:{line}", "exec")
    if not runs:
        return
    monkeypatch.chdir(tmp_path)
    exec(code, {"__name__": "__docs__"})


def test_benchmarks_page_reads_as_results_for_users():
    text = (DOCS / "benchmarks.md").read_text(encoding="utf-8")
    for pattern in (r"#\d", r"\b[Ii]ssue\b", r"\b[Ss]ession\b", r"[Aa]cceptance"):
        assert not re.search(pattern, text), f"benchmarks.md contains {pattern!r}"
    assert "## Machine" in text and "2026-" in text
    assert re.search(r"!\[[^\]]*\]\([\w-]+\.png\)", text), "benchmarks.md shows no plot"


def unindented_docstring_lines(root: Path) -> list[str]:
    """``file:line`` of every class or function docstring with a line at column 0 after the
    first: it stops the docstring's dedent, so the API reference renders the whole docstring
    as one code block (a numpy-style line continued with a backslash does this)."""
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            doc = ast.get_docstring(node, clean=False)
            lines = doc.split("\n")[1:] if doc else []
            if any(line.strip() and not line[0].isspace() for line in lines):
                found.append(f"{path.relative_to(root.parent)}:{node.lineno} ({node.name})")
    return found


def test_docstrings_dedent(tmp_path):
    assert unindented_docstring_lines(ROOT / "src" / "snnk") == []
    bad = tmp_path / "pkg" / "m.py"
    bad.parent.mkdir()
    # a raw docstring keeps the backslash and the newline (a plain one joins the lines)
    bad.write_text('def f():\n    r"""One.\n\n    a : {"x", \\\n"y"}\n    """\n')
    assert unindented_docstring_lines(tmp_path / "pkg") == ["pkg/m.py:1 (f)"]


def test_site_builds_without_warnings(tmp_path):
    """``mkdocs build --strict`` fails on any warning: a broken link, a page missing from the
    navigation, a docstring mkdocstrings cannot parse."""
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings_handlers.python")
    pytest.importorskip("material")
    # not --quiet: with it mkdocs 1.6 drops the warnings before --strict counts them
    out = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    warnings = [line for line in out.stderr.splitlines() if line.startswith("WARNING")]
    assert out.returncode == 0 and not warnings, "\n".join(warnings) or out.stderr[-4000:]
    assert (tmp_path / "site" / "index.html").is_file()
    assert (tmp_path / "site" / "api" / "models.html").is_file()
