"""Tally adversarial cases by category and print the counts after the run."""

from __future__ import annotations

from collections import Counter

import pytest

CATEGORIES = (
    "nonfinite",
    "scale",
    "dtype",
    "shape",
    "device",
    "options",
    "files",
    "inplace",
)
_counts: Counter = Counter()


def pytest_configure(config):
    config.addinivalue_line("markers", "category(name): the adversarial category of a case")


def pytest_collection_modifyitems(config, items):
    from tests.adversarial.known_defects import KNOWN_DEFECTS

    for item in items:
        if item.nodeid.split("::", 1)[-1] in KNOWN_DEFECTS:
            item.add_marker(
                pytest.mark.xfail(reason="known defect, see known_defects.py", strict=True)
            )


def _category(item) -> str | None:
    m = item.get_closest_marker("category")
    return m.args[0] if m else None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    cat = _category(item)
    if cat is None or rep.when != "call":
        return
    outcome = "xfailed" if hasattr(rep, "wasxfail") else rep.outcome
    _counts[(cat, outcome)] += 1


def pytest_terminal_summary(terminalreporter):
    if not _counts:
        return
    tr = terminalreporter
    tr.section("adversarial cases by category")
    cats = sorted({c for c, _ in _counts}, key=lambda c: (*CATEGORIES, c).index(c))
    for c in cats:
        tr.write_line(
            f"{c:<10} {_counts[(c, 'passed')]:>5} passed {_counts[(c, 'failed')]:>4} failed"
            f" {_counts[(c, 'skipped')]:>4} skipped {_counts[(c, 'xfailed')]:>4} known defects"
        )
    total = sum(v for (_, o), v in _counts.items() if o == "passed")
    tr.write_line(f"{'total':<10} {total:>5} passed")
