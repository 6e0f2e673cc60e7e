"""DPO step time: slam's packed pair rows (reference run every step, or precomputed) vs a padded batch.

All three compute the same DPO step (policy forward + backward, AdamW step, clip 0.5) on the same pairs:

    packed-sdpa   slam's row layout: a micro-batch of B pairs is ONE row of 2B sequences with per-sequence
                  positions (slam.train.dpo.collate / sequence_logps), the reference run on the same row;
                  attention by transformers' SDPA path, which turns the positions into a dense [T, T]
                  document mask (what slam.attention.prepare_packed_attention keeps on CPU)
    packed-varlen the same row with the "slam_varlen" attention (slam.attention): per-document attention,
                  FlashAttention-2 varlen on GPU, a per-document SDPA loop on CPU (what `slam dpo` uses)
    precomputed   packed-varlen with the reference log-probs read from a table
                  (`dpo.precompute_reference=true`); the table costs one reference forward per pair once
    padded      the usual baseline (trl's concatenated forward): [2B, L_max] right-padded rows with an
                attention mask, completion log-probs gathered from the padded logits, reference likewise

Same tiny Qwen2 (random init), fp32 on CPU, pairs with SpokenSwag-like lengths (prompt 60-140 units,
completions 40-120: 3-7 s of speech at ~20 deduplicated units/s). The systems alternate step by step for
`--rounds` rounds after `--warmup` untimed steps each; reported: median and interquartile range of the step
time. The per-pair log-probs of `packed` and `padded` are checked to agree first (same numbers, else the
comparison would be meaningless).

    .venv/bin/python bench/dpo.py --rounds 20
"""

from __future__ import annotations

import os
import sys

import argparse
import statistics
import time
from contextlib import nullcontext

import numpy as np
import torch

MODEL = {"model_type": "qwen2", "hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 4,
         "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 1024,
         "tie_word_embeddings": True}
N_UNITS = 500


def make_pairs(n: int, seed: int = 0):
    from slam.prefs import PrefPair

    rng = np.random.default_rng(seed)
    return [PrefPair(f"p{i}", rng.integers(0, N_UNITS, rng.integers(60, 141)),
                 rng.integers(0, N_UNITS, rng.integers(40, 121)), rng.integers(0, N_UNITS, rng.integers(40, 121)))
            for i in range(n)]


def padded_logps(model, pairs, index) -> tuple[torch.Tensor, torch.Tensor]:
    """Baseline: [2B, L] right-padded sequences + attention mask, one forward."""
    seqs, comp_len = [], []
    for i in index:
        for comp in (pairs.chosen[i], pairs.rejected[i]):
            seqs.append(np.concatenate([pairs.prompt[i], comp]))
            comp_len.append(len(comp))
    L = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), L, dtype=torch.long)
    mask = torch.zeros(len(seqs), L, dtype=torch.long)
    loss_mask = torch.zeros(len(seqs), L, dtype=torch.bool)
    for r, (s, c) in enumerate(zip(seqs, comp_len)):
        ids[r, :len(s)] = torch.from_numpy(s)
        mask[r, :len(s)] = 1
        loss_mask[r, len(s) - c:len(s)] = True
    logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1].float()
    logp = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None])[..., 0]
    per_seq = (logp * loss_mask[:, 1:]).sum(-1)
    return per_seq[0::2], per_seq[1::2]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--micro", type=int, default=4, help="pairs per micro-batch (the paper: 4)")
    ap.add_argument("--accum", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)

    from slam.attention import prepare_packed_attention, use_varlen_attention
    from slam.model import random_init
    from slam.train import dist
    from slam.train.budget import Budget
    from slam.train.config import BudgetConfig
    from slam.train.config import Optim
    from slam.train.dpo import Metrics, make_loss_fn, reference_table, sequence_logps, with_reference
    from slam.train.losses import dpo_loss
    from slam.train.pairs import collate, encode_pairs
    from slam.train.engine import train_step
    from slam.train.optim import build_optimizer

    def model(varlen: bool):
        m, info = random_init(dict(MODEL), N_UNITS, seed=0)
        use_varlen_attention(m) if varlen else prepare_packed_attention(m)
        return m, info

    reference, info = model(varlen=False)
    reference.eval().requires_grad_(False)
    ref_varlen, _ = model(varlen=True)
    ref_varlen.eval().requires_grad_(False)
    n_pairs = a.micro * a.accum * (a.rounds + a.warmup)
    pairs = encode_pairs(make_pairs(n_pairs), info)
    env = dist.Env()

    # same numbers first
    with torch.no_grad():
        idx = np.arange(a.micro)
        pc, pr = sequence_logps(reference, collate(pairs, idx))
        vc, vr = sequence_logps(ref_varlen, collate(pairs, idx))
        qc, qr = padded_logps(reference, pairs, idx)
    err = max((pc - qc).abs().max().item(), (pr - qr).abs().max().item(), (vc - qc).abs().max().item(),
              (vr - qr).abs().max().item())
    assert err < 1e-3, f"packed and padded log-probs differ by {err}"

    t0 = time.perf_counter()
    table = reference_table(ref_varlen, pairs, a.micro, env, nullcontext, progress=False)
    table_s = time.perf_counter() - t0

    def padded_loss_fn(ref, beta, metrics):
        def loss_fn(m, batch):
            pc, pr = padded_logps(m, pairs, batch["index"].numpy())
            with torch.no_grad():
                rc, rr = padded_logps(ref, pairs, batch["index"].numpy())
            out = dpo_loss(pc, pr, rc, rr, beta)
            metrics.add(out, batch)
            return out.losses.sum(), len(out.losses)
        return loss_fn

    systems = {}
    for name in ("padded", "packed-sdpa", "packed-varlen", "precomputed"):
        policy, _ = model(varlen=name != "packed-sdpa")
        policy.train()
        metrics = Metrics()
        ref = {"packed-sdpa": reference, "packed-varlen": ref_varlen, "precomputed": None}.get(name)
        fn = padded_loss_fn(reference, 0.1, metrics) if name == "padded" else make_loss_fn(ref, 0.1, metrics)
        systems[name] = {"policy": policy, "opt": build_optimizer(policy, Optim(lr=5e-5)), "fn": fn,
                         "metrics": metrics, "times": [], "tokens": 0}
    budget = Budget.from_config(BudgetConfig(time=None, steps=10**9))
    for r in range(a.warmup + a.rounds):
        lo = r * a.micro * a.accum
        idx = [np.arange(lo + k * a.micro, lo + (k + 1) * a.micro) for k in range(a.accum)]
        for name, s in systems.items():
            t0 = time.perf_counter()
            micro = [collate(pairs, i) for i in idx]
            if name == "precomputed":
                micro = [with_reference(b, table) for b in micro]
            stats = train_step(s["policy"], s["opt"], micro, s["fn"], env, nullcontext, 0.5, budget)
            dt = time.perf_counter() - t0
            s["metrics"].reduce(torch.device("cpu"))
            assert stats.finite
            if r >= a.warmup:
                s["times"].append(dt)
                s["tokens"] += sum(b["n_tokens"] for b in micro)

    print(f"machine: {os.cpu_count()}-core {os.uname().machine} CPU, no GPU; torch threads {a.threads}; model "
          f"{sum(p.numel() for p in reference.parameters()):,} parameters; {a.micro} pairs x {a.accum} "
          f"accumulation per step; {a.rounds} timed rounds after {a.warmup} warm-up")
    print(f"packed (both attention paths) vs padded log-probs: max |diff| {err:.2e}")
    base = statistics.median(systems["padded"]["times"])
    for name, s in systems.items():
        t = sorted(s["times"])
        q1, med, q3 = t[len(t) // 4], statistics.median(t), t[(3 * len(t)) // 4]
        print(f"{name:13s} step {1000 * med:7.1f} ms (IQR {1000 * q1:.1f}-{1000 * q3:.1f}) | "
              f"{s['tokens'] / sum(s['times']):8.0f} real tok/s | {base / med:4.2f}x the padded baseline")
    print(f"precomputing the reference table of {len(pairs)} pairs took {table_s:.2f} s "
          f"({1000 * table_s / len(pairs) * a.micro * a.accum:.1f} ms per step's worth of pairs)")


if __name__ == "__main__":
    main()
