"""``python -m snnk``: the ``snnk`` command line (:func:`snnk.cli.main`)."""

from __future__ import annotations

import sys

from snnk.cli import main

if __name__ == "__main__":
    sys.exit(main())
