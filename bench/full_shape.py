"""The full Slam shape on a CPU: 358,347,904 parameters (Qwen2.5-0.5B's config values, random init, 502-token
vocabulary), micro 1 x context 1024, fp32, a few optimiser steps through `slam train` itself.

What it checks, against slam.train.memory's predictions:
1. it runs: 3 optimiser steps of 1024 tokens with a checkpoint at step 2, validation and `final/`;
2. the checkpoint's size (model + AdamW states, predicted 12 N bytes) and the process's peak RSS (predicted:
   its RSS before training + predict_memory(fp32, SDPA attention, micro 1, context 1024));
3. resuming from the step-2 checkpoint gives the uninterrupted run's step-3 loss and bit-identical final weights.
Each run is its own subprocess, so its peak RSS is its own. Needs ~10 GB of RAM and ~20 GB of disk.

    .venv/bin/python bench/full_shape.py [--threads 2] [--steps 3] [--keep]
"""

from __future__ import annotations

import os
import sys

# Run as a file, Python puts bench/ first on sys.path; the other benches drop it (bench/ modules would shadow
# the standard library's), and the repository root goes in its place so that bench/train.py's data maker loads.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
sys.path.insert(0, os.path.dirname(_HERE))

import argparse
import json
import resource
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from slam.train.memory import GiB, ModelShape, checkpoint_bytes, predict_memory, rss_bytes

ROOT = Path(__file__).resolve().parent.parent
# Qwen2.5-0.5B's config.json values (the TWIST base of the recipe) with slam's vocabulary: 358,347,904 params.
SLAM_CONFIG = {"model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
               "num_attention_heads": 14, "num_key_value_heads": 2, "max_position_embeddings": 32768,
               "tie_word_embeddings": True}  # rms_norm_eps: Qwen2Config's default is the release's 1e-6
CONTEXT = 1024


def overrides(data: Path, out: Path, steps: int, *extra: str) -> list[str]:
    return [f"data.train=[{{path: {data}}}]", f"out={out}", f"data.context={CONTEXT}", "data.val_fraction=0.01",
            f"model.config={json.dumps(SLAM_CONFIG)}", "batch.size=1", "batch.micro=1", "budget.time=null",
            f"budget.steps={steps}", "precision=fp32", "compile=false", "optim.lr=1e-3",
            "schedule.warmup_min_steps=1", "schedule.min_lr=0", "log_every=1", "eval.every_steps=0",
            "eval.batches=1", f"checkpoint.every_steps={steps - 1}", "checkpoint.every_minutes=0",
            "checkpoint.keep_last=2", *extra]


def worker(data: Path, out: Path, steps: int, resume: bool) -> dict:
    """One `slam train` run in this process; its RSS before training and its peak RSS."""
    from slam.cli import main

    before = rss_bytes()
    t0 = time.perf_counter()
    rc = main(["train", "tiny-cpu", *overrides(data, out, steps, *(["resume=true"] if resume else []))])
    if rc != 0:
        raise SystemExit(f"slam train exited {rc}")
    return {"rss_before": before, "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "wall_s": time.perf_counter() - t0}


def run_worker(data: Path, out: Path, steps: int, threads: int, resume: bool) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, __file__, "--worker", "--data", str(data), "--out", str(out), "--steps", str(steps),
           "--threads", str(threads)] + (["--resume"] if resume else [])
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    if proc.returncode != 0 or not line:
        raise SystemExit(f"run {out.name} failed:\n{proc.stderr[-3000:]}")
    return json.loads(line[-1][7:])


def metrics(run: Path) -> list[dict]:
    return [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]


def same_weights(a: Path, b: Path) -> bool:
    import torch
    from safetensors.torch import load_file

    x, y = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3, help="optimiser steps (the checkpoint is one step earlier)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (~20 GB)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--resume", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        import torch

        torch.set_num_threads(args.threads)
        print("RESULT " + json.dumps(worker(args.data, args.out, args.steps, args.resume)))
        return

    from bench.train import make_data  # ~190k tokens of utterance-like documents (20-600 units)

    work = Path(tempfile.mkdtemp(prefix="bench-full-shape-"))
    try:
        make_data(work / "units")
        ref, res = work / "uninterrupted", work / "resumed"
        a = run_worker(work / "units", ref, args.steps, args.threads, resume=False)
        ck = ref / "checkpoints" / f"step-{args.steps - 1}"
        ck_size = sum(f.stat().st_size for f in ck.iterdir())
        # The resumed run starts from a copy of the run folder as it was after the step-(steps-1) checkpoint
        # (hard links: slam writes every file anew, never in place, so the copies cannot change the original).
        shutil.copytree(ref, res, copy_function=os.link,
                        ignore=lambda d, names: [n for n in names if n in (f"step-{args.steps}", "final")])
        b = run_worker(work / "units", res, args.steps, args.threads, resume=True)

        shape = ModelShape.from_config({**SLAM_CONFIG, "vocab_size": 502})
        pred = predict_memory(shape, 1, CONTEXT, "fp32", "sdpa")
        want_ck = checkpoint_bytes(shape)
        rows_a, rows_b = metrics(ref), metrics(res)
        loss_a = {r["step"]: r["loss"] for r in rows_a if r["kind"] == "train"}
        loss_b = {r["step"]: r["loss"] for r in rows_b if r["kind"] == "train"}
        clock = {r["step"]: r["train_hours"] * 3600 for r in rows_a if r["kind"] == "train"}
        done = [r for r in rows_a if r["kind"] == "event" and r.get("event") == "done"][0]
        step_s = [clock[s] - clock[s - 1] for s in range(2, args.steps + 1)]
        same = same_weights(ref / "final", res / "final")
        added = a["peak_rss"] - a["rss_before"]
        print(f"Slam shape ({shape.params:,} parameters), fp32, micro 1 x context {CONTEXT}, {args.steps} steps "
              f"on {args.threads} threads:")
        print(f"  step time: {', '.join(f'{s:.1f}' for s in step_s)} s after the first ({clock[1]:.1f} s); "
              f"{CONTEXT / (sum(step_s) / len(step_s)):.0f} tokens/s; checkpoint writes "
              f"{done['overhead'].get('checkpoint', 0):.1f} s; whole run {a['wall_s']:.0f} s wall")
        print(f"  checkpoint step-{args.steps - 1}: {ck_size:,} bytes, predicted {want_ck:,} "
              f"({100 * (ck_size / want_ck - 1):+.3f}%)")
        print(f"  peak RSS: {a['peak_rss'] / GiB:.2f} GiB = {a['rss_before'] / GiB:.2f} GiB before training + "
              f"{added / GiB:.2f} GiB; predicted {pred.total / GiB:.2f} GiB on top ({100 * (added / pred.total - 1):+.1f}%): "
              f"{pred.summary()}")
        print(f"  resumed run peak RSS {b['peak_rss'] / GiB:.2f} GiB")
        print(f"  resume from step-{args.steps - 1}: step-{args.steps} loss {loss_b[args.steps]:.6f} vs uninterrupted "
              f"{loss_a[args.steps]:.6f} (losses {[round(loss_a[s], 6) for s in sorted(loss_a)]}); final weights "
              f"{'bit-identical' if same else 'DIFFER'}")
        ok = same and loss_a[args.steps] == loss_b[args.steps] and abs(ck_size / want_ck - 1) < 1e-3
        print("RESULT " + json.dumps({"params": shape.params, "step_s": step_s, "first_step_s": clock[1],
                                      "checkpoint_bytes": ck_size, "predicted_checkpoint_bytes": want_ck,
                                      "peak_rss": a["peak_rss"], "rss_before": a["rss_before"],
                                      "predicted_bytes": pred.total, "resumed_peak_rss": b["peak_rss"],
                                      "loss": loss_a, "resumed_loss": loss_b, "same_final_weights": same,
                                      "ok": ok}))
        if not ok:
            raise SystemExit("full-shape check failed (see above)")
    finally:
        if args.keep:
            print(f"work folder: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
