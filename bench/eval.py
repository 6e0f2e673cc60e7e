"""Pair-scoring throughput: batched (sorted by length, padded, attention mask) vs one pair at a time.

    .venv/bin/python bench/eval.py [--pairs 64] [--rounds 3] [--hidden 256 --layers 4]

Same model, same sequences, same process; the two ways alternate in each round (baseline first, then
batched, then the order is swapped) so that any other load on the machine hits both alike. Sequences are
random units with sBLIMP-like lengths (2-3 s of speech at ~20 units/s: 40-60 tokens) and sSC-like lengths
(10-20 s: 200-400 tokens); content does not change the cost. Reports pairs/s (median over rounds) and
checks that both ways give the same scores.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import numpy as np
import torch

from slam.eval.pairs import score_sequences
from slam.tokens import SlamInfo


def build(hidden: int, layers: int):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    info = SlamInfo(n_units=500)
    cfg = Qwen2Config(vocab_size=info.vocab_size, hidden_size=hidden, intermediate_size=4 * hidden,
                      num_hidden_layers=layers, num_attention_heads=hidden // 64, num_key_value_heads=2,
                      max_position_embeddings=1024, use_cache=False, tie_word_embeddings=True)
    torch.manual_seed(0)
    return Qwen2ForCausalLM(cfg).eval(), info


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--batch-tokens", type=int, nargs="+", default=[1024, 2048, 4096, 16384],
                    help="padded-token budgets of the batched runs to compare with one at a time")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, info = build(args.hidden, args.layers)
    n_params = sum(p.numel() for p in model.parameters())
    rng = np.random.default_rng(0)
    print(f"model: Qwen2 {args.layers} layers x {args.hidden}, {n_params / 1e6:.1f}M params; torch threads "
          f"{torch.get_num_threads()}; {platform.machine()} CPU")
    for label, lo, hi in (("sBLIMP-like", 40, 60), ("sSC-like", 200, 400)):
        seqs = [info.units_to_ids(rng.integers(0, 500, size=rng.integers(lo, hi))) for _ in range(2 * args.pairs)]
        n_pairs = args.pairs if label == "sBLIMP-like" else max(8, args.pairs // 6)
        seqs = seqs[: 2 * n_pairs]
        ways = {"one at a time": 0, **{f"batched {b}": b for b in args.batch_tokens}}
        rates: dict[str, list[float]] = {w: [] for w in ways}
        scores = {}
        names = list(ways)
        for r in range(args.rounds):
            for way in names[r % len(names):] + names[:r % len(names)]:  # rotate the order every round
                t0 = time.perf_counter()
                scores[way] = score_sequences(model, seqs, "mean", batch_tokens=ways[way])
                rates[way].append(n_pairs / (time.perf_counter() - t0))
        base = statistics.median(rates["one at a time"])
        diff = max(float(np.abs(scores[w] - scores["one at a time"]).max()) for w in names)
        print(f"{label}: {n_pairs} pairs ({lo}-{hi} units), {args.rounds} rounds, max |score diff| {diff:.1e}")
        for w in names:
            med = statistics.median(rates[w])
            print(f"  {w:>16}: {med:7.1f} pairs/s  {med / base:5.2f}x   rounds {[round(x, 1) for x in rates[w]]}")

if __name__ == "__main__":
    main()
