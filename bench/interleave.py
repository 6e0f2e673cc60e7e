"""Benchmark: what the interleaved stream costs to prepare, against the speech-only stream of the same data.

    .venv/bin/python bench/interleave.py [--utterances 20000 --rounds 3]

A units dataset of synthetic utterances (random units with mHuBERT-like dedup durations at 25 Hz, 8-40
words with pause-separated times, a transcript) is written once; then, interleaved in each round:
  speech        slam.data.sources.units_source: `<s> <speech> units <s>` documents (vectorised; the baseline)
  interleaved   slam.data.interleave.interleaved_source: Poisson(10) spans at 30% speech, units cut at the word
                times, text spans tokenized in one batched call per 4,096 utterances (byte-level BPE)
Reported: utterances/s and output tokens/s, the CPU time of each (contention for the cores changes it less
than wall time), and the speech share of the interleaved stream (words and tokens).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import os
import tempfile
import time

import numpy as np

WORDS = ("the a cat dog ran sat on mat Ben Zoe park went home saw five big small red green tree house "
         "played with ball happy sad very then and after day night moon sun").split()


def make_dataset(folder: Path, n: int, seed: int = 0) -> None:
    from slam.units.dataset import UnitsWriter

    rng = np.random.default_rng(seed)
    with UnitsWriter(folder, {"n_units": 500, "tokenizer_hash": "bench", "dedup": True, "frame_rate": 25.0},
                     rows_per_shard=5000) as w:
        for i in range(n):
            k = int(rng.integers(8, 41))
            text_words = [WORDS[j] for j in rng.integers(0, len(WORDS), size=k)]
            t, words = 0.1, []
            for word in text_words:
                d = 0.1 + 0.05 * len(word)
                words.append({"word": word, "start": t, "end": t + d})
                t += d + float(rng.uniform(0.0, 0.15))
            frames = int((t + 0.1) * 25)
            durations = rng.integers(1, 3, size=frames)  # ~19-20 units/s after dedup, as mHuBERT-25Hz
            durations = durations[np.cumsum(durations) <= frames]
            units = rng.integers(0, 500, size=len(durations))
            w.add(f"utt{i:07d}", units, durations, float(t + 0.1), "bench", text=" ".join(text_words) + ".",
                  words=words)


def make_tokenizer(folder: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator([" ".join(WORDS)] * 10, trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|endoftext|>")
    tok.save_pretrained(str(folder))
    return tok


def cpu() -> float:
    t = os.times()
    return t.user + t.system


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--utterances", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    from slam.data import units_source
    from slam.data.interleave import InterleaveConfig, interleaved_source
    from slam.tokens import interleaved_layout

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        make_dataset(tmp / "units", args.utterances)
        tok = make_tokenizer(tmp / "tok")
        info = interleaved_layout(tok, 500)
        print(f"dataset: {args.utterances} utterances written in {time.perf_counter() - t0:.1f} s; "
              f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        results: dict[str, list[tuple[float, float, int, int]]] = {"speech": [], "interleaved": []}
        stats = None
        for r in range(args.rounds):
            for name in ("speech", "interleaved"):
                c0, w0 = cpu(), time.perf_counter()
                if name == "speech":
                    src = units_source(tmp / "units", info)
                else:
                    src = interleaved_source(tmp / "units", info, tok, InterleaveConfig(), seed=r, progress=False)
                    stats = src.stats
                wall, cpu_s = time.perf_counter() - w0, cpu() - c0
                results[name].append((wall, cpu_s, len(src), int(src.lengths().sum())))
                print(f"round {r} {name:11s}: {wall:6.2f} s wall, {cpu_s:6.2f} s CPU, {len(src)} documents, "
                      f"{int(src.lengths().sum()):,} tokens")
        print()
        print("| stream | utterances/s (wall, median) | tokens/s (wall, median) | CPU s per 10k utterances |")
        print("| --- | --- | --- | --- |")
        for name, rows in results.items():
            wall = np.median([x[0] for x in rows])
            cpu_s = np.median([x[1] for x in rows])
            n, toks = rows[0][2], rows[0][3]
            print(f"| {name} | {n / wall:,.0f} | {toks / wall:,.0f} | {1e4 * cpu_s / n:.2f} |")
        print(f"\ninterleaved stream: {stats['speech_word_share']:.1%} of words and {stats['speech_token_share']:.1%} "
              f"of tokens as speech ({stats['tokens']:,} tokens for {stats['words']:,} words)")


if __name__ == "__main__":
    main()
