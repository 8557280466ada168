"""Adversarial cases that expose defects not fixed yet, run as strict expected failures.

When a fix lands, the case passes, the strict xfail turns red, and its line must be deleted
here. Every defect found by the hostile-input issue is fixed: the set is empty, and a new
entry needs the fix it waits for written beside it.
"""

KNOWN_DEFECTS: set[str] = set()
