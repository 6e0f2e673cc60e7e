"""Tokens/s of one training step (forward + backward + clip + AdamW) of the demo's model shapes on a CPU,
fp32 (the baseline) against bf16 autocast and torch.compile, each in its own subprocess, same threads.

The question it answers: which precision and batch shape should `slam demo` train with on a CPU.
Packed rows as in training: position_ids restart every 300 tokens (a story is ~290 units), no mask.
Two rates: tokens per wall second (what a quiet machine gives) and tokens per CPU second of the process
(user + system; close to the quiet rate even when other jobs share the cores, as long as the threads are
not oversubscribed; with 1 thread it is the rate of one core).

    .venv/bin/python bench/cpu_step.py                       # 1 thread, hidden 128 and 256, 8 x 512 and 4 x 512
    .venv/bin/python bench/cpu_step.py --threads 2 --hidden 128
"""

from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

import argparse
import json
import subprocess
import time
from contextlib import nullcontext


def child(mode: str, rows: int, context: int, hidden: int, steps: int) -> dict:
    import torch

    from slam.model import random_init

    cfg = {"model_type": "qwen2", "hidden_size": hidden, "intermediate_size": 3 * hidden, "num_hidden_layers": 6,
           "num_attention_heads": 4 if hidden <= 128 else 8, "num_key_value_heads": 2,
           "max_position_embeddings": 1024, "tie_word_embeddings": True}
    model, _ = random_init(cfg, 200)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=True)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(2, 202, (rows, context), generator=g)
    pos = torch.arange(context).repeat(rows, 1) % 300
    fwd = torch.compile(model) if mode.startswith("compile") else model
    amp = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if mode.endswith("bf16") else nullcontext

    def step() -> None:
        with amp():
            loss = fwd(input_ids=ids, position_ids=pos, labels=ids, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        opt.step()
        opt.zero_grad(set_to_none=True)

    t0 = time.perf_counter()
    for _ in range(3):  # warm-up (and compilation) excluded
        step()
    warm = time.perf_counter() - t0
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step()
    dt, dc = time.perf_counter() - t0, time.process_time() - c0
    return {"mode": mode, "rows": rows, "context": context, "hidden": hidden,
            "params": sum(p.numel() for p in model.parameters()), "tok_s": steps * rows * context / dt,
            "tok_cpu_s": steps * rows * context / dc, "warmup_s": warm}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--hidden", type=int, nargs="+", default=[128, 256])
    ap.add_argument("--shapes", nargs="+", default=["8x512", "4x512"], help="ROWSxCONTEXT per step")
    ap.add_argument("--modes", nargs="+", default=["fp32", "bf16", "compile-bf16"])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        mode, rows, context, hidden, steps = a.child
        print(json.dumps(child(mode, int(rows), int(context), int(hidden), int(steps))))
        return
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads)}
    load = os.getloadavg()[0]
    print(f"{a.threads} thread(s), 1-minute load average {load:.1f} at the start\n")
    print("| hidden | params | rows x context | mode | tokens/s | vs fp32 | tokens per CPU-s | vs fp32 |\n"
          "|---|---|---|---|---|---|---|---|")
    for hidden in a.hidden:
        for shape in a.shapes:
            rows, context = shape.split("x")
            base = None
            for mode in a.modes:
                out = subprocess.run([sys.executable, __file__, "--child", mode, rows, context, str(hidden),
                                      str(a.steps)], env=env, capture_output=True, text=True, check=True)
                r = json.loads(out.stdout.strip().splitlines()[-1])
                base = (r["tok_s"], r["tok_cpu_s"]) if mode == "fp32" else base
                rel = f"{r['tok_s'] / base[0]:.2f}x" if base else "-"
                rel_cpu = f"{r['tok_cpu_s'] / base[1]:.2f}x" if base else "-"
                print(f"| {hidden} | {r['params'] / 1e6:.1f}M | {shape} | {mode} | {r['tok_s']:,.0f} | {rel} | "
                      f"{r['tok_cpu_s']:,.0f} | {rel_cpu} |", flush=True)


if __name__ == "__main__":
    main()
