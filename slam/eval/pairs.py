"""Pair metrics: is the positive utterance more likely than the negative one? (sBLIMP, sWUGGY, sSC, tSC, SALMon)

    bench = read_benchmark("zr2021/syntactic/dev")       # any layout of slam.eval.layouts
    result = evaluate_pairs(model, info, bench, root=model_dir)
    result["value"], result["ci95"], result["groups"]     # accuracy in %, 95% CI, per group (e.g. phenomena)

Layouts and how each is paired: slam.eval.layouts (and docs/evaluation.md). A scored unit's outcome is the mean
of its comparisons (a ZeroSpeech id's voices), so the accuracy, n and the CI are over units exactly as the
official ZeroSpeech 2021 scorer computes them; sWUGGY also reports the in-vocabulary accuracy (`invocab`).

Score of an utterance = NLL of `<s> units <s>` under the model, EOS prediction included, averaged over its
predicted tokens (`score="mean"`, as published) or summed (`"sum"`). A comparison counts 1 when the positive's
NLL is lower, 0.5 on a tie. Audio is tokenised by the model's own tokenizer; frames are cached keyed by the
tokenizer hash and the audio file's sha256, so a cache is never reused by another tokenizer.

Scoring is batched: sequences sorted by length, right-padded with an attention mask (use_cache=False), in
batches of at most `batch_tokens` padded tokens. Padding never changes a score (tested against one at a time).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import soundfile as sf
import torch
from tqdm import tqdm

from slam.audio import load_audio
from slam.errors import AudioError, SlamError
from slam.eval.layouts import Benchmark, read_benchmark
from slam.model_folder import load_model_tokenizer
from slam.tokens import SlamInfo
from slam.units.dataset import dedup as dedup_frames
from slam.utils import length_batches, read_jsonl, sha256_bytes, sha256_file

Z95 = 1.96  # two-sided 95% normal quantile (1.95996), as the CIs slam has always printed


# --- tokenisation with a cache ------------------------------------------------------------------------------
def default_cache_dir() -> Path:
    return Path(os.environ.get("SLAM_CACHE", Path.home() / ".cache" / "slam")) / "units"


class FrameCache:
    """Raw (not deduplicated) frames per audio content, one append-only jsonl per tokenizer hash."""

    def __init__(self, folder: str | Path | None, tokenizer_hash: str):
        if not tokenizer_hash:
            raise SlamError("the tokenizer has no hash; cannot key a units cache on it")
        self.path = None if folder is None else Path(folder) / f"{tokenizer_hash}.jsonl"
        self.tokenizer_hash = tokenizer_hash
        self.frames: dict[str, np.ndarray] = {}
        for r in read_jsonl(self.path) if self.path is not None else []:
            if r.get("tokenizer") == tokenizer_hash:
                self.frames[r["audio"]] = np.asarray(r["frames"], dtype=np.int64)
        self._pending: list[str] = []

    def add(self, audio_hash: str, frames: np.ndarray) -> None:
        self.frames[audio_hash] = frames
        self._pending.append(json.dumps({"tokenizer": self.tokenizer_hash, "audio": audio_hash,
                                         "frames": frames.tolist()}))
        if len(self._pending) >= 256:
            self.flush()

    def flush(self) -> None:
        if self.path is not None and self._pending:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as f:
                f.write("".join(line + "\n" for line in self._pending))
        self._pending = []


def tokenize_files(files: Sequence[Path], tokenizer: Any, cache_dir: str | Path | None = None,
                   progress: bool = True) -> tuple[dict[Path, np.ndarray], dict[Path, str]]:
    """Raw frame units and content sha256 of each file (frames from the cache when this tokenizer already
    made them for the same bytes)."""
    cache = FrameCache(cache_dir, tokenizer.hash)
    frames, hashes, todo = {}, {}, []
    for f in files:
        h = sha256_file(f)
        hashes[f] = h
        if h in cache.frames:
            frames[f] = cache.frames[h]
        else:
            todo.append(f)
    seconds = 0.0
    bar = tqdm(total=len(todo), desc="tokenizing", unit="file", disable=not progress or not todo)
    t0 = time.perf_counter()
    # 16 files per call: a HuBERT tokenizer batches them on its device (the mel one just loops)
    for start in range(0, len(todo), 16):
        chunk = todo[start:start + 16]
        wavs = [load_audio(f) for f in chunk]
        seconds += sum(len(w) for w in wavs) / 16000
        if hasattr(tokenizer, "encode_batch"):
            out = tokenizer.encode_batch(wavs)
        else:
            out = [tokenizer.encode(w) for w in wavs]
        for f, fr in zip(chunk, out):
            fr = np.asarray(fr, dtype=np.int64)
            cache.add(hashes[f], fr)
            frames[f] = fr
        bar.update(len(chunk))
        bar.set_postfix_str(f"{seconds / max(time.perf_counter() - t0, 1e-9):.0f}x realtime")
    bar.close()
    cache.flush()
    return frames, hashes


# --- scoring ------------------------------------------------------------------------------------------------
@torch.inference_mode()
def score_sequences(model: Any, sequences: Sequence[Sequence[int]], reduction: str = "mean",
                    batch_tokens: int | None = None, max_batch: int = 256, pad_id: int = 0,
                    progress: bool = False, allowed_ids: Sequence[int] | None = None,
                    score_from: Sequence[int] | None = None) -> np.ndarray:
    """NLL of each id sequence (first token given, every later one predicted): mean or sum over tokens.

    batch_tokens bounds padded tokens per forward (logits are batch_tokens x vocab floats); batch_tokens=0
    scores one sequence at a time; None = 16384 on a GPU, 2048 on a CPU (bench/eval.py, 1 thread: 1024-4096
    tokens beat both one at a time and 16384, whose activations fall out of cache on long sequences). Interleaved models: `allowed_ids` restricts the softmax to those ids
    (e.g. units + eos: text logits masked off), `score_from[i]` is the index of sequence i's first scored
    token (default 1; e.g. the ending after a prompt).
    """
    if reduction not in ("mean", "sum"):
        raise SlamError(f"score must be 'mean' or 'sum', got {reduction!r}")
    device = next(model.parameters()).device
    if batch_tokens is None:
        batch_tokens = 16384 if device.type == "cuda" else 2048
    lengths = [len(s) for s in sequences]
    if min(lengths, default=2) < 2:
        raise SlamError("every sequence needs at least 2 tokens to be scored")
    if batch_tokens <= 0:
        batches = [[i] for i in range(len(sequences))]
    else:  # longest first: a batch's padded width is its first sequence's length
        batches = length_batches(lengths, max_batch, batch_tokens, longest_first=True)
    out = np.zeros(len(sequences), dtype=np.float64)
    bar = tqdm(total=sum(lengths), unit="tok", unit_scale=True, desc="scoring", disable=not progress)
    for idx in batches:
        width = max(lengths[i] for i in idx)
        ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for r, i in enumerate(idx):
            ids[r, : lengths[i]] = torch.as_tensor(np.asarray(sequences[i], dtype=np.int64))
            mask[r, : lengths[i]] = 1
        ids, mask = ids.to(device), mask.to(device)
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1].float()
        if allowed_ids is not None:
            bias = torch.full((logits.shape[-1],), float("-inf"), device=device)
            bias[torch.as_tensor(np.asarray(allowed_ids, dtype=np.int64), device=device)] = 0.0
            logits = logits + bias
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
        m = mask[:, 1:].float()
        if score_from is not None:
            for r, i in enumerate(idx):
                m[r, : max(0, int(score_from[i]) - 1)] = 0.0
        nll = torch.where(m > 0, nll, 0.0)  # unscored targets (pad, prompt) may lie outside allowed_ids: inf x 0
        total = (nll * m).sum(-1)
        val = total / m.sum(-1) if reduction == "mean" else total
        out[idx] = val.double().cpu().numpy()
        bar.update(sum(lengths[i] for i in idx))
    bar.close()
    return out




# --- accuracy -----------------------------------------------------------------------------------------------
def pair_outcome(pos_nll: float, neg_nll: float) -> float:
    return 1.0 if pos_nll < neg_nll else 0.5 if pos_nll == neg_nll else 0.0


def wilson(p: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion p over n units. Unlike p +- z*se it stays a real interval at 0
    and 1 (4 units all wrong: [0, 0.49], not [0, 0]). For units that are ties (0.5) or voice means, any
    outcome in [0, 1] with mean p has variance <= p(1 - p), so the interval is conservative there."""
    if n <= 0:
        return float("nan"), float("nan")
    d = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / d
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half))


def accuracy(outcomes: Sequence[float]) -> dict[str, Any]:
    """Accuracy in % over units (outcomes in [0, 1]) with a 95% Wilson interval. At 1,871 pairs and 55%
    accuracy the interval is 52.7-57.2 (half-width 2.3 points)."""
    x = np.asarray(outcomes, dtype=np.float64)
    n = int(x.size)
    if n == 0:
        return {"value": float("nan"), "n": 0, "ci95": [float("nan"), float("nan")]}
    mean = float(x.mean())
    lo, hi = wilson(mean, n)
    return {"value": 100 * mean, "n": n, "ci95": [100 * lo, 100 * hi]}


def score_pairs(bench: Benchmark, nll: dict[Path, float]) -> dict[str, Any]:
    """Accuracy of a benchmark from each file's score (lower = more likely): per unit the mean outcome over
    its comparisons, then the mean over units; per group; and sWUGGY's in-vocabulary variant."""
    outcomes = [float(np.mean([pair_outcome(nll[a], nll[b]) for a, b in zip(p.positive, p.negative)]))
                for p in bench.pairs]
    groups: dict[str, list[float]] = defaultdict(list)
    for p, o in zip(bench.pairs, outcomes):
        if p.group is not None:
            groups[p.group].append(o)
    result = {"metric": "accuracy", "unit": "%", **accuracy(outcomes),
              "groups": {g: accuracy(v) for g, v in sorted(groups.items())},
              "n_comparisons": sum(len(p.positive) for p in bench.pairs)}
    if bench.layout == "zerospeech-lexical":
        # the leaderboard's lexical_invocab: the frequency bands except 'oov', weighted by their n = the mean
        # over ids whose word has frequency >= 1
        result["invocab"] = accuracy([o for p, o in zip(bench.pairs, outcomes)
                                      if p.frequency is not None and p.frequency >= 1])
    return result


def sample_rates(files: Sequence[Path]) -> dict[str, int]:
    """How many files have each sample rate (from the headers). slam resamples to 16 kHz; slamkit feeds the
    file as it is, so a folder at another rate gives slamkit a different number."""
    rates: Counter[int] = Counter()
    for f in files:
        try:
            rates[sf.info(str(f)).samplerate] += 1
        except (sf.LibsndfileError, RuntimeError) as e:
            raise AudioError(f"{f}: unreadable ({e})") from None
    return {str(r): c for r, c in sorted(rates.items())}


def benchmark_hash(bench: Benchmark, hashes: dict[Path, str]) -> str:
    """Over the layout, the pairing, the groups and the audio bytes (not the paths: a moved copy is the same)."""
    lines = [bench.layout] + [
        f"{p.id}\t{p.group}\t{','.join(hashes[f] for f in p.positive)}\t{','.join(hashes[f] for f in p.negative)}"
        for p in bench.pairs]
    return sha256_bytes("\n".join(lines))


def evaluate_pairs(model: Any, info: SlamInfo, pairs: Benchmark | str | Path, *, tokenizer: Any = None,
                   root: str | Path | None = None, score: str = "mean", batch_tokens: int | None = None,
                   cache_dir: str | Path | None = None, dedup: bool | None = None,
                   progress: bool = True) -> dict[str, Any]:
    """Accuracy of `model` on a benchmark (a Benchmark or a path to read). Used by `slam eval` and by the
    training loop's periodic validation (pass the tokenizer to reuse it, and cache_dir to reuse its units).

    tokenizer: defaults to the one named in slam.json (files relative to `root`, the model folder).
    dedup: defaults to the tokenizer spec's `dedup` (True, as published and as slam trains).
    """
    t0 = time.perf_counter()
    bench = pairs if isinstance(pairs, Benchmark) else read_benchmark(pairs)
    if tokenizer is None:
        tokenizer = load_model_tokenizer(info, root or ".")
    if info.tokenizer_hash and tokenizer.hash != info.tokenizer_hash:
        raise SlamError(f"tokenizer hash {tokenizer.hash[:12]} differs from the model's {info.tokenizer_hash[:12]}")
    if dedup is None:
        dedup = bool(info.tokenizer.get("dedup", True)) if info.tokenizer else True
    files = bench.files()
    rates = sample_rates(files)
    frames, hashes = tokenize_files(files, tokenizer, cache_dir, progress=progress)
    seqs = []
    for f in files:
        u = dedup_frames(frames[f])[0] if dedup else frames[f]
        seqs.append(info.units_to_ids(u))
    was_training = model.training
    model.eval()
    # Interleaved models (`<s> <speech> units <s>`): score the units and the end only, with text and marker
    # logits masked off, so the number compares with a speech-only model's.
    speech_only = {}
    if info.speech_token_id is not None:
        unit_ids = np.arange(info.unit_offset, info.unit_offset + info.n_units)
        speech_only = {"allowed_ids": np.r_[unit_ids, info.eos_id], "score_from": [2] * len(seqs)}
    nll = score_sequences(model, seqs, score, batch_tokens=batch_tokens, pad_id=info.pad_id, progress=progress,
                          **speech_only)
    model.train(was_training)
    result = {**score_pairs(bench, dict(zip(files, nll))), "score": score, "dedup": dedup,
              "layout": bench.layout, "protocol": bench.protocol, **bench.details, "path": str(bench.path),
              "n_files": len(files), "sample_rates": rates, "benchmark_hash": benchmark_hash(bench, hashes),
              "tokenizer_hash": tokenizer.hash, "seconds": time.perf_counter() - t0}
    return result
