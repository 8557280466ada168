"""The ``snnk`` command line."""

from __future__ import annotations

import argparse
import sys

from snnk._version import __version__


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="snnk", description="Scalable kernels in PyTorch.")
    p.add_argument("--version", action="version", version=f"snnk {__version__}")
    sub = p.add_subparsers(dest="command")
    demo = sub.add_parser(
        "demo", help="kernel-approximation error vs number of features on scikit-learn's digits"
    )
    demo.add_argument("--out", default="snnk_demo.png", help="where to save the plot (PNG)")
    demo.add_argument("--quick", action="store_true", help="a smaller, faster run")
    demo.add_argument("--no-plot", action="store_true", help="print the table only")
    demo.add_argument("--quiet", action="store_true", help="no progress bar or table")
    from snnk._cli_models import add_parsers

    add_parsers(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "demo":
        from snnk.demo import run_demo

        kwargs = {"num_features": (32, 128, 512), "seeds": 1, "max_rows": 400} if args.quick else {}
        run_demo(args.out, plot=not args.no_plot, verbose=not args.quiet, **kwargs)
        return 0
    if args.command in ("fit", "predict"):
        from snnk._cli_models import run

        return run(args)
    _parser().print_help()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
