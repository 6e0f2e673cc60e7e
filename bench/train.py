"""Training throughput and peak memory: `slam train` vs an HF `Trainer` with `DataCollatorWithFlattening`.

Same tiny Qwen2 (random init, same seed), same documents, same precision (fp32 on CPU), same optimiser
(fused AdamW, lr 1e-3, cosine, clip 0.5), same tokens per optimiser step (~8 x 512) and accumulation 2.
Both keep documents apart: slam by dense [B, S] rows with per-document position_ids, the Trainer by
flattening each micro-batch's examples into one row with position_ids (transformers' padding-free path).
Each run is its own subprocess (so peak RSS is its own); the two systems alternate, `--repeats` times.
Time = the steady-state optimiser steps (the first `--warmup` excluded), read from each system's own
per-step clock: slam's metrics.jsonl `train_hours`, the Trainer's `on_step_end` callback.

    PYTHONPATH=/tmp/bench-deps .venv/bin/python bench/train.py --repeats 3
    # the Trainer needs `accelerate` (not a slam dependency):
    #   .venv/bin/pip install --no-deps --target /tmp/bench-deps accelerate==1.15.0 psutil
"""

from __future__ import annotations

import os
import sys

# Run as a file, Python puts bench/ first on sys.path, where bench/tokenize.py would shadow the standard
# library's `tokenize` (imported by inspect, hence by torch): drop that entry before anything else.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

import argparse
import json
import resource
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MODEL = {"model_type": "qwen2", "hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 4,
         "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 1024,
         "tie_word_embeddings": True}
# The paper's context (1024); 2 rows x 2 accumulation keeps a step at 4096 tokens, affordable on 2 cores.
CONTEXT, MICRO, ACCUM, N_UNITS = 1024, 2, 2, 500


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_data(folder: Path, n_docs: int = 900, seed: int = 0) -> None:
    """A units dataset of utterance-like documents (20-600 units, ~190k tokens)."""
    from slam.units.dataset import UnitsWriter

    rng = np.random.default_rng(seed)
    with UnitsWriter(folder, {"n_units": N_UNITS, "tokenizer_hash": "bench", "dedup": True}) as w:
        for i in range(n_docs):
            n = int(rng.integers(20, 600))
            u = (rng.integers(0, N_UNITS) + np.cumsum(rng.integers(-3, 4, size=n))) % N_UNITS
            w.add(f"d{i:05d}", u, np.ones(n), n / 25, "bench")


def worker_slam(data: Path, out: Path, steps: int, warmup: int) -> dict:
    from slam.train.config import load
    from slam.train.pretrain import train

    cfg = load("tiny-cpu", [
        f"data.train=[{{path: {data}}}]", f"out={out}", f"data.context={CONTEXT}", "data.val_fraction=0.01",
        f"model.config={json.dumps(MODEL)}", f"batch.size={MICRO * ACCUM}", f"batch.micro={MICRO}",
        "budget.time=null", f"budget.steps={steps}", "optim.lr=1e-3", "schedule.warmup_min_steps=0",
        "schedule.warmup=0.01", "schedule.min_lr=0", "precision=fp32", "log_every=1", "eval.every_steps=0",
        "eval.batches=1", "checkpoint.every_steps=0", "checkpoint.every_minutes=0"])
    before = rss_mb()
    train(cfg)
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    clock = {r["step"]: r["train_hours"] * 3600 for r in rows if r["kind"] == "train"}
    seconds = clock[steps] - clock[warmup]
    tokens = (steps - warmup) * MICRO * ACCUM * CONTEXT  # dense rows: every position is a real token
    return {"tok_s": tokens / seconds, "seconds": seconds, "tokens": tokens, "rss_before_mb": before,
            "peak_rss_mb": peak_rss_mb()}


def worker_trainer(data: Path, out: Path, steps: int, warmup: int) -> dict:
    import torch
    from transformers import DataCollatorWithFlattening, Trainer, TrainerCallback, TrainingArguments

    from slam.model import random_init
    from slam.tokens import SlamInfo
    from slam.units.dataset import iter_rows

    info = SlamInfo(n_units=N_UNITS)
    docs = []
    for row in iter_rows(data, ["id", "units"]):  # the same documents, cut to the context like slam does
        ids = info.units_to_ids(row["units"])
        docs.extend(ids[i:i + CONTEXT].tolist() for i in range(0, len(ids), CONTEXT))
    rng = np.random.default_rng(0)
    rng.shuffle(docs)
    mean_len = float(np.mean([len(d) for d in docs]))
    per_device = max(1, round(MICRO * CONTEXT / mean_len))  # ~ the same tokens per micro-batch as slam

    class Docs(torch.utils.data.Dataset):
        def __len__(self):
            return len(docs)

        def __getitem__(self, i):
            return {"input_ids": docs[i]}

    model, _ = random_init(dict(MODEL), N_UNITS, rope_theta=10000.0, seed=0, info=info)
    model.config.use_cache = False  # a cache would let the flattened documents attend to each other

    marks: list[tuple[float, int]] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            marks.append((time.perf_counter(), int(state.num_input_tokens_seen)))

    args = TrainingArguments(
        output_dir=str(out), use_cpu=True, per_device_train_batch_size=per_device, gradient_accumulation_steps=ACCUM,
        max_steps=steps, learning_rate=1e-3, lr_scheduler_type="cosine", warmup_steps=0, max_grad_norm=0.5,
        optim="adamw_torch_fused", weight_decay=0.0, logging_steps=10_000, save_strategy="no", report_to="none",
        disable_tqdm=True, dataloader_num_workers=0, seed=0, include_num_input_tokens_seen="all",
        remove_unused_columns=False)
    trainer = Trainer(model=model, args=args, train_dataset=Docs(),
                      data_collator=DataCollatorWithFlattening(return_position_ids=True), callbacks=[Clock()])
    before = rss_mb()
    trainer.train()
    (t0, k0), (t1, k1) = marks[warmup - 1], marks[steps - 1]
    return {"tok_s": (k1 - k0) / (t1 - t0), "seconds": t1 - t0, "tokens": k1 - k0, "rss_before_mb": before,
            "peak_rss_mb": peak_rss_mb(), "examples_per_micro_batch": per_device}


def main() -> None:
    global CONTEXT, MICRO
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--context", type=int, default=CONTEXT)
    ap.add_argument("--micro", type=int, default=MICRO, help="packed rows per micro-batch (slam)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--worker", choices=["slam", "trainer"], help=argparse.SUPPRESS)
    ap.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    CONTEXT, MICRO = args.context, args.micro
    if args.worker:
        import torch

        torch.set_num_threads(args.threads)
        fn = worker_slam if args.worker == "slam" else worker_trainer
        out = Path(tempfile.mkdtemp(dir=args.dir, prefix=f"{args.worker}-"))
        print("RESULT " + json.dumps(fn(args.dir / "units", out, args.steps, args.warmup)))
        return

    from tqdm import tqdm

    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    make_data(work / "units")
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    results: dict[str, list[dict]] = {"slam": [], "trainer": []}
    runs = [name for _ in range(args.repeats) for name in ("slam", "trainer")]  # interleaved
    for name in tqdm(runs, desc="bench runs", unit="run"):
        proc = subprocess.run([sys.executable, __file__, "--worker", name, "--dir", str(work), "--steps",
                               str(args.steps), "--warmup", str(args.warmup), "--threads", str(args.threads),
                               "--context", str(CONTEXT), "--micro", str(MICRO)],
                              cwd=ROOT, env=env, capture_output=True, text=True)
        line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
        if proc.returncode != 0 or not line:
            sys.exit(f"{name} run failed:\n{proc.stderr[-3000:]}")
        results[name].append(json.loads(line[-1][7:]))
    print(f"\n{'system':<34} {'tok/s (median of ' + str(args.repeats) + ')':>24} {'all runs':>28} "
          f"{'peak RSS MB':>12} {'RSS added MB':>13}")
    med = {}
    for name, label in (("slam", "slam train"), ("trainer", "HF Trainer + DataCollatorWithFlattening")):
        rs = results[name]
        med[name] = statistics.median(r["tok_s"] for r in rs)
        peak = max(r["peak_rss_mb"] for r in rs)
        added = max(r["peak_rss_mb"] - r["rss_before_mb"] for r in rs)
        runs_text = ", ".join(format(r["tok_s"], ",.0f") for r in rs)
        print(f"{label:<34} {med[name]:>24,.0f} {runs_text:>28} {peak:>12,.0f} {added:>13,.0f}")
    pairs = [a["tok_s"] / b["tok_s"] for a, b in zip(results["slam"], results["trainer"])]
    print("per interleaved pair (slam / Trainer): " + ", ".join(f"{r:.2f}x" for r in pairs))
    print(f"\nslam train / Trainer tokens/s: {med['slam'] / med['trainer']:.2f}x (median of {args.repeats} "
          f"interleaved runs each, {args.steps - args.warmup} timed steps of ~{MICRO * ACCUM * CONTEXT} tokens at "
          f"context {CONTEXT}; "
          f"Trainer used {results['trainer'][0]['examples_per_micro_batch']} examples per micro-batch). "
          f"Work folder: {work}")


if __name__ == "__main__":
    main()
