"""`slam report DEMO_DIR`: (re)write a demo folder's report.md, report.html, loss_curves.png and accuracy.png."""

from __future__ import annotations

import argparse

from slam.demo.report import write_report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("demo_dir", help="a folder made by `slam demo`")


def run(args: argparse.Namespace) -> int:
    md, page = write_report(args.demo_dir)
    print(f"wrote {md} and {page}")
    return 0
