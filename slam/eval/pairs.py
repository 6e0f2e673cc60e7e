"""Pair metrics: is the positive utterance more likely than the negative one? (sBLIMP, sSC, tSC, sWUGGY)

    bench = read_benchmark("zr2021/syntactic/dev")       # or a Spoken StoryCloze folder, or pairs.jsonl
    result = evaluate_pairs(model, info, bench, root=model_dir)
    result["value"], result["ci95"], result["groups"]     # accuracy in %, 95% CI, per group (e.g. phenomena)

Layouts (details in ../shared/published-formats.md):
- ZeroSpeech 2021 `lexical/{dev,test}` (sWUGGY) and `syntactic/{dev,test}` (sBLIMP): wavs + gold.csv, read
  by column name. Lexical: words (correct 1) and nonwords (correct 0) are paired on (id, voice) and a pair's
  outcome is the mean over its voices, as the ZeroSpeech scorer does. Syntactic: the k-th correct row pairs
  with the k-th incorrect row; group = `type` (the phenomenon).
- Spoken StoryCloze (sSC / tSC): a folder of wavs sorted by the integer before the first `_`; files 2i and
  2i+1 form pair i, the first positive (slamkit's reader).
- `pairs.jsonl`: {"id", "positive", "negative", optional "group"} with audio paths relative to the file.

Score of an utterance = NLL of `<s> units <s>` under the model, EOS prediction included, averaged over its
predicted tokens (`score="mean"`, as published) or summed (`"sum"`). A pair counts 1 when the positive's NLL
is lower, 0.5 on a tie. Audio is tokenised by the model's own tokenizer; frames are cached keyed by the
tokenizer hash and the audio file's sha256, so a cache is never reused by another tokenizer.

Scoring is batched: sequences sorted by length, right-padded with an attention mask (use_cache=False), in
batches of at most `batch_tokens` padded tokens. Padding never changes a score (tested against one at a time).
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from slam.audio import load_audio
from slam.errors import SlamError
from slam.model import load_model_tokenizer
from slam.tokens import SlamInfo
from slam.units.dataset import dedup as dedup_frames
from slam.utils import length_batches, read_jsonl, sha256_bytes, sha256_file

LAYOUTS = ("zerospeech-lexical", "zerospeech-syntactic", "storycloze", "pairs.jsonl")
EXPECTED = ("expected one of: a ZeroSpeech 2021 lexical|syntactic/{dev,test} folder with gold.csv and its wavs; "
            "a Spoken StoryCloze folder of <n>_*.wav files (2i positive, 2i+1 negative); or a pairs.jsonl "
            "file (or a folder holding one) with id, positive, negative[, group]")


@dataclass
class Pair:
    """One comparison. `positive[i]` is compared with `negative[i]`; the pair's outcome is the mean over i
    (several voices for sWUGGY, one file each everywhere else)."""

    id: str
    positive: list[Path]
    negative: list[Path]
    group: str | None = None


@dataclass
class Benchmark:
    name: str
    layout: str
    path: Path
    pairs: list[Pair] = field(default_factory=list)

    def files(self) -> list[Path]:
        return sorted({f for p in self.pairs for f in (*p.positive, *p.negative)})


# --- readers -------------------------------------------------------------------------------------------------
def _read_gold(folder: Path) -> list[dict[str, str]]:
    with open(folder / "gold.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise SlamError(f"{folder}/gold.csv has no rows")
    return rows


def _wav(folder: Path, stem: str) -> Path:
    for ext in (".wav", ".flac"):
        p = folder / f"{stem}{ext}"
        if p.exists():
            return p
    raise SlamError(f"{folder}: gold.csv names {stem!r} but {stem}.wav is missing")


def read_zerospeech(folder: str | Path) -> Benchmark:
    folder = Path(folder)
    rows = _read_gold(folder)
    cols = set(rows[0])
    need_lex = {"id", "filename", "voice", "correct", "word"}
    need_syn = {"id", "filename", "voice", "type", "correct"}
    if need_lex <= cols and "type" not in cols:
        pos: dict[tuple[str, str], list[Path]] = defaultdict(list)
        neg: dict[tuple[str, str], list[Path]] = defaultdict(list)
        for r in rows:
            (pos if r["correct"].strip() == "1" else neg)[(r["id"], r["voice"])].append(_wav(folder, r["filename"]))
        by_id: dict[str, Pair] = {}
        for key in sorted(pos, key=lambda k: (_natural(k[0]), k[1])):
            if key not in neg:
                continue
            pair = by_id.setdefault(key[0], Pair(id=key[0], positive=[], negative=[]))
            for w in pos[key]:  # every word file of this voice against every nonword file (pandas merge)
                for nw in neg[key]:
                    pair.positive.append(w)
                    pair.negative.append(nw)
        pairs = list(by_id.values())
        layout = "zerospeech-lexical"
    elif need_syn <= cols:
        good = [r for r in rows if r["correct"].strip() == "1"]
        bad = [r for r in rows if r["correct"].strip() == "0"]
        if len(good) != len(bad):
            raise SlamError(f"{folder}/gold.csv: {len(good)} correct rows but {len(bad)} incorrect ones; "
                            "the syntactic layout pairs the k-th of each")
        pairs = [Pair(id=g["id"], positive=[_wav(folder, g["filename"])], negative=[_wav(folder, b["filename"])],
                      group=g["type"]) for g, b in zip(good, bad)]
        layout = "zerospeech-syntactic"
    else:
        raise SlamError(f"{folder}/gold.csv has columns {sorted(cols)}: neither the lexical "
                        f"({sorted(need_lex)}) nor the syntactic ({sorted(need_syn)}) layout")
    if not pairs:
        raise SlamError(f"{folder}/gold.csv: no complete pairs")
    return Benchmark(name=folder.parent.name + "/" + folder.name, layout=layout, path=folder, pairs=pairs)


_LEADING_INT = re.compile(r"^(\d+)_")


def _natural(s: str) -> tuple:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s))


def read_storycloze(folder: str | Path) -> Benchmark:
    folder = Path(folder)
    wavs = [p for p in folder.glob("*.wav")]
    keyed = []
    for p in wavs:
        m = _LEADING_INT.match(p.name)
        if not m:
            raise SlamError(f"{folder}: {p.name} does not start with '<n>_'; {EXPECTED}")
        keyed.append((int(m.group(1)), p))
    keyed.sort(key=lambda kp: kp[0])
    if len(keyed) < 2 or len(keyed) % 2:
        raise SlamError(f"{folder}: {len(keyed)} wav files; the StoryCloze layout needs an even number (pairs)")
    pairs = [Pair(id=str(keyed[i][0]), positive=[keyed[i][1]], negative=[keyed[i + 1][1]])
             for i in range(0, len(keyed), 2)]
    return Benchmark(name=folder.name, layout="storycloze", path=folder, pairs=pairs)


def read_pairs_jsonl(path: str | Path) -> Benchmark:
    path = Path(path)
    pairs = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
            pos, neg = path.parent / r["positive"], path.parent / r["negative"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise SlamError(f"{path}:{n}: expected a JSON object with positive and negative paths ({e})") from None
        for p in (pos, neg):
            if not p.exists():
                raise SlamError(f"{path}:{n}: audio {p} does not exist")
        pairs.append(Pair(id=str(r.get("id", n)), positive=[pos], negative=[neg],
                          group=None if r.get("group") is None else str(r["group"])))
    if not pairs:
        raise SlamError(f"{path}: no pairs")
    name = path.parent.name if path.name == "pairs.jsonl" else path.stem
    return Benchmark(name=name, layout="pairs.jsonl", path=path, pairs=pairs)


def read_benchmark(path: str | Path) -> Benchmark:
    """Recognise the layout of `path` and read its pairs."""
    path = Path(path)
    if not path.exists():
        raise SlamError(f"benchmark {str(path)!r} does not exist")
    if path.is_file():
        if path.suffix == ".jsonl":
            return read_pairs_jsonl(path)
        if path.name == "gold.csv":
            return read_zerospeech(path.parent)
        raise SlamError(f"{path}: not a benchmark; {EXPECTED}")
    if (path / "pairs.jsonl").exists():
        return read_pairs_jsonl(path / "pairs.jsonl")
    if (path / "gold.csv").exists():
        return read_zerospeech(path)
    subs = sorted(p.name for p in path.iterdir() if p.is_dir() and (p / "gold.csv").exists())
    if subs:
        raise SlamError(f"{path}: holds {', '.join(subs)}; pass one of them (e.g. {path / subs[0]})")
    if any(path.glob("*.wav")):
        return read_storycloze(path)
    raise SlamError(f"{path}: no gold.csv, pairs.jsonl or wav files; {EXPECTED}")


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


def accuracy(outcomes: Sequence[float]) -> dict[str, Any]:
    """Accuracy in % with a 95% normal-approximation CI (1.96 standard errors of the per-pair outcomes,
    which are 0, 0.5 or 1, or voice means for sWUGGY); clipped to [0, 100]. At 1,871 pairs and 55%
    accuracy the half-width is about 2.3 points."""
    x = np.asarray(outcomes, dtype=np.float64)
    n = int(x.size)
    if n == 0:
        return {"value": float("nan"), "n": 0, "ci95": [float("nan"), float("nan")]}
    mean = float(x.mean())
    half = 1.96 * float(x.std(ddof=1)) / math.sqrt(n) if n > 1 else float("nan")
    lo, hi = max(0.0, mean - half), min(1.0, mean + half)
    return {"value": 100 * mean, "n": n, "ci95": [100 * lo, 100 * hi]}


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
    by_file = dict(zip(files, nll))
    outcomes = [float(np.mean([pair_outcome(by_file[a], by_file[b]) for a, b in zip(p.positive, p.negative)]))
                for p in bench.pairs]
    groups: dict[str, list[float]] = defaultdict(list)
    for p, o in zip(bench.pairs, outcomes):
        if p.group is not None:
            groups[p.group].append(o)
    result = {"metric": "accuracy", "unit": "%", **accuracy(outcomes), "score": score, "dedup": dedup,
              "groups": {g: accuracy(v) for g, v in sorted(groups.items())},
              "layout": bench.layout, "path": str(bench.path), "n_files": len(files),
              "benchmark_hash": benchmark_hash(bench, hashes), "tokenizer_hash": tokenizer.hash,
              "seconds": time.perf_counter() - t0}
    return result
