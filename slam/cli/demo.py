"""`slam demo [--out DIR --fresh --fast]`: the whole Slam recipe in miniature, on a CPU, offline
(slam.demo.steps; every stage runs as the `slam` command it records)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from slam.cli import main
from slam.demo.report import summary_paragraph
from slam.demo.steps import run_demo


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="demo-out", type=Path, help="output folder (default demo-out)")
    p.add_argument("--minutes", type=float, default=16.0,
                   help="pre-training minutes of each speech LM (default 16: the whole demo takes ~30 minutes "
                        "on a 2-core CPU); the text LM gets a quarter of it, DPO a sixth")
    p.add_argument("--fresh", action="store_true", help="delete the folder's earlier demo outputs and start over")
    p.add_argument("--fast", action="store_true",
                   help="tiny sizes and seconds of budget (a check that everything runs; numbers mean nothing)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=None, help="processes for synthesis and tokenisation "
                   "(default: 2 or the cores)")



def run(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    state = run_demo(args.out, main, args.minutes, args.fresh, args.fast, args.seed, args.workers)
    print("\n" + summary_paragraph(args.out, state, time.perf_counter() - t0))
    return 0
