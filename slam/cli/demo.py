"""`slam demo [--out DIR --fast --seeds N --minutes M --fresh]`: the whole Slam recipe in miniature, on a CPU,
offline (slam.demo.steps; every stage runs as the `slam` command it records)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from slam.cli import main
from slam.demo.report import summary_paragraph
from slam.demo.steps import run_demo


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="demo-out", type=Path, help="output folder (default demo-out)")
    p.add_argument("--seeds", type=int, default=1,
                   help="training seeds on the same data (default 1); the report gives mean and spread over "
                        "them (3: about 3x the training time)")
    p.add_argument("--minutes", type=float, default=None,
                   help="wall-clock budget instead of the default step budgets: M minutes of pre-training per "
                        "speech LM, M/4 for the text LM, M/6 for DPO, as the paper's time budget; the numbers "
                        "then depend on the machine and its load (the default steps do not)")
    p.add_argument("--fresh", action="store_true", help="delete the folder's earlier demo outputs and start over")
    p.add_argument("--fast", action="store_true",
                   help="tiny sizes and a few steps (a check that everything runs; numbers mean nothing)")
    p.add_argument("--seed", type=int, default=0, help="seed of the data and of the first training seed")
    p.add_argument("--workers", type=int, default=None, help="processes for synthesis and tokenisation "
                   "(default: 2 or the cores; the numbers do not depend on it)")


def run(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    state = run_demo(args.out, main, fast=args.fast, seed=args.seed, seeds=args.seeds, minutes=args.minutes,
                     fresh=args.fresh, workers=args.workers)
    print("\n" + summary_paragraph(args.out, state, time.perf_counter() - t0))
    return 0
