"""Text-speech interleaved training (SpiritLM / SIMS style): vocabulary, sequences, data, evaluation, generation.

A text LM keeps its own tokenizer and every row of its vocabulary; the speech units and two modality markers
are appended after it, plus a pad row of its own:

    ids 0 .. T-1        the text LM's vocabulary, rows bit-identical to the base model (TWIST keeps them)
    T .. T+K-1          speech units 0..K-1                         (SlamInfo.unit_offset = T)
    T+K, T+K+1          <speech>, <text>                            (speech_token_id, text_token_id)
    T+K+2               <pad> (a row no real token uses: nn.Embedding's padding_idx freezes its gradient)

T is the base model's embedding rows (Qwen2.5: 151,936, more than its 151,665 tokenizer entries), so no
text row moves. New rows start at the mean of the text rows plus small noise (Hewitt 2021: a new token then
starts as "an average token" instead of an outlier with a huge logit). Every segment opens with its marker,
bos/eos are the text tokenizer's own:

    speech only   <s> <speech> u u u ... <s>
    text only     <s> <text> t t t ... <s>
    interleaved   <s> <text> The cat <speech> u u u u u u <text> on the mat <s>

Interleaved sequences come from utterances with word timings (synth manifest -> `slam tokenize` keeps them
in the `words` column). A policy marks each word speech or text so that on average `speech_share` of the
words are speech (the paper: 30%, Poisson(lambda=10) word spans, which made ~40% of its tokens speech):

    poisson   alternating spans, speech spans of 1+Poisson(lambda-1) words (mean lambda) and text spans of
              mean lambda*(1-s)/s; the first span is drawn from the stationary (size-biased) residual, so
              every word position is speech with probability s exactly, however short the utterance
    span      one speech span of s*N words (stochastic rounding) at a uniform position
    random    every word on its own (s per word; many switches)

A word owns the units whose centre (frame start + duration / 2, at the tokenizer's frame rate, 25 Hz for
mHuBERT) lies between the midpoints of the pauses around it, so the words partition the units and a speech
span gets exactly the units of its words.

    info = interleaved_layout(text_tok, n_units=500, text_rows=151936)    # SlamInfo for the model folder
    model, info = twist_init("Qwen/Qwen2.5-0.5B", 500, info=info)          # also runs init_new_rows
    ids = interleave_utterances([utt], text_tok, info, frame_rate=25)[0][0]
    decode(ids, info, text_tok)          # [("text", "The cat"), ("speech", array([...])), ("text", ...)]

From the command line (speech-only pair metrics of an interleaved model are scored on units + eos with the
text logits masked off, automatically):

    slam train slam-interleaved data.train='[{path: units/, stream: interleaved, weight: 0.5}, ...]'
    slam eval MODEL --bench sSC=... --cross-modal story=corpus/bench/story/pairs.jsonl
    slam generate MODEL --prompt-text "Once upon a time" --out a.wav     # or --prompt AUDIO (speech prompt)
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import pyarrow.compute as pc
from tqdm import tqdm

from slam.config import check
from slam.data.sources import ArraySource, in_val_split, text_source
from slam.errors import SlamError
from slam.tokens import SlamInfo, require_interleaved
from slam.units.dataset import load_table, read_meta

Policy = Literal["poisson", "span", "random"]


@dataclass
class InterleaveConfig:
    policy: Policy = "poisson"
    """How words are split into speech and text spans: poisson (alternating spans with Poisson lengths, as the
    paper and SpiritLM), span (one speech span per utterance) or random (each word on its own)."""
    speech_share: float = 0.3
    """Expected share of the words of an interleaved utterance given as speech (the paper: 30%)."""
    mean_words: float = 10.0
    """poisson: mean span length in words of the rarer modality (the paper: lambda = 10); the other
    modality's spans are longer so that the shares come out right."""

    def __post_init__(self) -> None:
        check(0.0 <= self.speech_share <= 1.0, "speech_share", f"must lie in [0, 1], got {self.speech_share}")
        check(self.mean_words >= 1.0, "mean_words", f"must be at least 1, got {self.mean_words}")



# --- span policies -------------------------------------------------------------------------------------------
def _span_means(share: float, mean_words: float) -> tuple[float, float]:
    """(mean speech span, mean text span) in words: the rarer modality has mean_words, the other is longer."""
    if share <= 0.5:
        return mean_words, mean_words * (1 - share) / share
    return mean_words * share / (1 - share), mean_words


def _span_length(rng: np.random.Generator, mean: float) -> int:
    return 1 + int(rng.poisson(mean - 1.0))


@functools.lru_cache(maxsize=16)
def _residual_cdf(mean: float) -> np.ndarray:
    """CDF of the first span of a stationary alternating process: P(R = k) = P(L >= k) / E[L] for
    L = 1 + Poisson(mean - 1); index k-1 holds P(R <= k)."""
    mu = mean - 1.0
    kmax = int(mu + 12 * math.sqrt(mu + 1) + 30)
    pmf = np.empty(kmax)
    pmf[0] = math.exp(-mu)
    for j in range(1, kmax):
        pmf[j] = pmf[j - 1] * mu / j
    surv = np.clip(1.0 - np.concatenate([[0.0], np.cumsum(pmf)[:-1]]), 0, None)  # surv[k-1] = P(L >= k)
    cdf = np.cumsum(surv)
    return cdf / cdf[-1]


def _residual_length(rng: np.random.Generator, mean: float) -> int:
    return 1 + int(np.searchsorted(_residual_cdf(float(mean)), rng.random(), side="right"))


def span_modalities(n_words: int, policy: Policy = "poisson", speech_share: float = 0.3,
                    mean_words: float = 10.0, rng: np.random.Generator | None = None) -> np.ndarray:
    """bool [n_words]: True = the word is given as speech. Expected share of True = speech_share exactly."""
    rng = rng or np.random.default_rng()
    out = np.zeros(n_words, dtype=bool)
    if n_words == 0 or speech_share <= 0:
        return out
    if speech_share >= 1:
        return ~out
    if policy == "random":
        return rng.random(n_words) < speech_share
    if policy == "span":
        want = speech_share * n_words
        n = int(want) + int(rng.random() < want - int(want))  # stochastic rounding keeps the mean exact
        start = int(rng.integers(0, n_words - n + 1))
        out[start:start + n] = True
        return out
    if policy != "poisson":
        raise SlamError(f"span policy must be poisson, span or random, got {policy!r}")
    means = _span_means(speech_share, mean_words)
    speech = bool(rng.random() < speech_share)
    pos, length = 0, _residual_length(rng, means[0] if speech else means[1])
    while pos < n_words:
        out[pos:pos + length] = speech
        pos += length
        speech = not speech
        length = _span_length(rng, means[0] if speech else means[1])
    return out


def spans(modality: np.ndarray) -> list[tuple[bool, int, int]]:
    """Runs of equal modality: [(is_speech, first word, end word)]."""
    m = np.asarray(modality, dtype=bool)
    if m.size == 0:
        return []
    cuts = np.flatnonzero(m[1:] != m[:-1]) + 1
    bounds = np.r_[0, cuts, m.size]
    return [(bool(m[a]), int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


# --- utterances -> interleaved ids ---------------------------------------------------------------------------
@dataclass
class TimedUtterance:
    id: str
    units: np.ndarray
    """Deduplicated units 0..K-1."""
    durations: np.ndarray
    """Frames per unit (all 1 without dedup)."""
    words: list[tuple[str, float, float]]
    """(word, start s, end s), in order."""
    text: str | None = None
    """The transcript with punctuation and case: text spans use its tokens when they match the words."""


def unit_words(durations: np.ndarray, words: Sequence[tuple[str, float, float]], frame_rate: float) -> np.ndarray:
    """Word index of every unit: the word whose pause-midpoint window holds the unit's centre."""
    d = np.asarray(durations, dtype=np.float64)
    centres = (np.cumsum(d) - d / 2) / float(frame_rate)
    starts = np.array([w[1] for w in words], dtype=np.float64)
    ends = np.array([w[2] for w in words], dtype=np.float64)
    cuts = np.maximum.accumulate((ends[:-1] + starts[1:]) / 2) if len(words) > 1 else np.zeros(0)
    return np.searchsorted(cuts, centres, side="right")


def _surface_words(utt: TimedUtterance) -> list[str]:
    """The words as written (case, punctuation) when the transcript lines up with the timed words."""
    if utt.text:
        toks = [t for t in utt.text.split() if re.sub(r"^\W+|\W+$", "", t)]
        if len(toks) == len(utt.words):
            return toks
    return [w[0] for w in utt.words]


def _seed_for(seed: int, key: str) -> np.random.Generator:
    h = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")
    return np.random.default_rng(np.random.SeedSequence([int(seed), h]))


def interleave_utterances(utts: Sequence[TimedUtterance], text_tokenizer: Any, info: SlamInfo, frame_rate: float,
                          cfg: InterleaveConfig | None = None, seed: int = 0,
                          modalities: Sequence[np.ndarray] | None = None
                          ) -> list[tuple[np.ndarray, list[tuple[bool, int, int]]]]:
    """Each utterance -> (ids `<s> <marker> ... <s>`, its spans [(is_speech, word a, word b)]).

    Spans come from the policy, seeded by (seed, utterance id) so an utterance's sequence does not depend on
    the dataset order; `modalities` overrides the policy (one bool array per utterance). A speech span whose
    words own no unit (a very short word merged into its neighbour's unit) is given as text. Text spans are
    tokenized in one batched call."""
    require_interleaved(info)
    cfg = cfg or InterleaveConfig()
    plans = []
    texts: list[str] = []
    for i, u in enumerate(utts):
        n = len(u.words)
        if modalities is not None:
            mod = np.asarray(modalities[i], dtype=bool)
            if mod.size != n:
                raise SlamError(f"{u.id}: {mod.size} modalities for {n} words")
        else:
            mod = span_modalities(n, cfg.policy, cfg.speech_share, cfg.mean_words, _seed_for(seed, u.id))
        owner = unit_words(u.durations, u.words, frame_rate) if n else np.zeros(len(u.units), np.int64)
        mod = mod.copy()
        for is_speech, a, b in spans(mod):
            if is_speech and np.searchsorted(owner, b) == np.searchsorted(owner, a):
                mod[a:b] = False
        surface = _surface_words(u)
        plan = []
        for is_speech, a, b in spans(mod):
            if is_speech:
                lo, hi = np.searchsorted(owner, a), np.searchsorted(owner, b)
                plan.append((True, a, b, lo, hi))
            else:
                plan.append((False, a, b, len(texts), None))
                texts.append((" " if a > 0 else "") + " ".join(surface[a:b]))
        plans.append(plan)
    tokens = text_tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    out = []
    for u, plan in zip(utts, plans):
        parts = [np.array([info.bos_id], np.int64)]
        for is_speech, a, b, x, y in plan:
            if is_speech:
                parts += [np.array([info.speech_token_id], np.int64),
                          np.asarray(u.units[x:y], np.int64) + info.unit_offset]
            else:
                parts += [np.array([info.text_token_id], np.int64), np.asarray(tokens[x], np.int64)]
        parts.append(np.array([info.eos_id], np.int64))
        out.append((np.concatenate(parts), [(s, a, b) for s, a, b, _, _ in plan]))
    return out


def decode(ids: Sequence[int], info: SlamInfo, text_tokenizer: Any) -> list[tuple[str, Any]]:
    """Ids -> segments [("speech", units array) | ("text", string)], markers and bos/eos dropped."""
    require_interleaved(info)
    a = np.asarray(ids, dtype=np.int64)
    markers = {info.speech_token_id: "speech", info.text_token_id: "text"}
    out: list[tuple[str, Any]] = []
    kind, cur = None, []

    def close() -> None:
        if kind == "speech":
            out.append(("speech", np.asarray(cur, np.int64) - info.unit_offset))
        elif kind == "text":
            out.append(("text", text_tokenizer.decode(cur, skip_special_tokens=True).strip()))

    body = a[1:-1] if a.size >= 2 and a[0] == info.bos_id and a[-1] == info.eos_id else a
    for t in body.tolist():
        if t in markers:
            close()
            kind, cur = markers[t], []
        elif t == info.pad_id:
            continue
        else:
            cur.append(t)
    close()
    return out


# --- datasets -> document sources ----------------------------------------------------------------------------
CHUNK_ROWS = 4096  # utterances converted to Python objects at a time (words are dicts; units stay numpy)


def iter_utterances(folder: str | Path, split: str = "all", val_fraction: float = 0.0, stats: dict | None = None):
    """Utterances with word times from a units dataset, in id order, a chunk of rows at a time (a 30k-hour
    dataset never sits in memory as Python lists). Rows without `words` are skipped and counted in stats."""
    columns = ["id", "units", "durations", "words", "text"]
    table = load_table(folder, columns)
    if table.column("words").null_count == table.num_rows and table.num_rows:
        raise SlamError(f"{folder}: no row has word times (`words`); tokenize a synth manifest, or any manifest "
                        f"with word times, to get them")
    stats = stats if stats is not None else {}
    stats.setdefault("skipped_without_words", 0)
    for start in range(0, table.num_rows, CHUNK_ROWS):
        chunk = table.slice(start, CHUNK_ROWS)
        ids = chunk.column("id").to_pylist()
        keep = [split == "all" or in_val_split(k, val_fraction) == (split == "val") for k in ids]
        offs = pc.list_value_length(chunk.column("units")).to_numpy(zero_copy_only=False).astype(np.int64)
        offs = np.concatenate([[0], np.cumsum(offs)])
        units = pc.list_flatten(chunk.column("units")).to_numpy(zero_copy_only=False).astype(np.int64)
        durs = pc.list_flatten(chunk.column("durations")).to_numpy(zero_copy_only=False).astype(np.int64)
        words = chunk.column("words").to_pylist()
        texts = chunk.column("text").to_pylist()
        for i, key in enumerate(ids):
            if not keep[i]:
                continue
            if not words[i] or offs[i + 1] == offs[i]:
                stats["skipped_without_words"] += 1
                continue
            yield TimedUtterance(key, units[offs[i]:offs[i + 1]], durs[offs[i]:offs[i + 1]],
                            [(w["word"], float(w["start"]), float(w["end"])) for w in words[i]], texts[i])


def interleaved_source(folder: str | Path, info: SlamInfo, text_tokenizer: Any, cfg: InterleaveConfig,
                       seed: int = 0, split: str = "all", val_fraction: float = 0.0, progress: bool = True) -> Any:
    """A units dataset with word times -> interleaved documents, fixed for a seed (so the packed loader knows
    every length up front and a resumed run sees the same documents). `.stats` holds the speech shares."""
    meta = read_meta(folder)
    _check_units_meta(folder, meta, info)
    frame_rate = float(meta.get("frame_rate") or 25.0)
    stats: dict[str, Any] = {"utterances": 0, "words": 0, "speech_words": 0, "speech_tokens": 0, "tokens": 0}
    chunks: list[np.ndarray] = []
    lens: list[int] = []
    bar = tqdm(total=int(meta.get("n_utterances") or 0) or None, unit="utt", disable=not progress,
               desc=f"interleaving {Path(folder).name} ({split})")
    batch: list[TimedUtterance] = []
    keys: list[str] = []

    def flush() -> None:
        for (ids, plan), u in zip(interleave_utterances(batch, text_tokenizer, info, frame_rate, cfg, seed), batch):
            chunks.append(ids.astype(np.int32))
            lens.append(len(ids))
            keys.append(u.id)
            stats["words"] += len(u.words)
            stats["speech_words"] += sum(b - a for sp, a, b in plan if sp)
            stats["speech_tokens"] += int(((ids >= info.unit_offset) & (ids < info.unit_offset + info.n_units)).sum())
            stats["tokens"] += len(ids)
        stats["utterances"] += len(batch)
        bar.update(len(batch))
        batch.clear()

    for u in iter_utterances(folder, split, val_fraction, stats):
        batch.append(u)
        if len(batch) >= CHUNK_ROWS:
            flush()
    flush()
    bar.close()
    flat = np.concatenate(chunks) if chunks else np.zeros(0, np.int32)
    src = ArraySource(name=f"{Path(folder).name}:interleaved", flat=flat,
                      offsets=np.concatenate([[0], np.cumsum(np.asarray(lens, np.int64))]).astype(np.int64))
    src.ids = keys
    stats["speech_word_share"] = stats["speech_words"] / max(stats["words"], 1)
    stats["speech_token_share"] = stats["speech_tokens"] / max(stats["tokens"], 1)
    src.stats = stats
    return src


def subset(src: Any, keep: np.ndarray) -> Any:
    """The documents of an ArraySource where `keep` is true (order kept), as a new ArraySource."""
    lens = np.diff(src.offsets)[keep]
    starts = src.offsets[:-1][keep]
    offsets = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    index = np.arange(offsets[-1]) - np.repeat(offsets[:-1] - starts, lens)
    out = ArraySource(name=src.name, flat=src.flat[index], offsets=offsets)
    out.stats = getattr(src, "stats", None)
    out.ids = [k for k, m in zip(getattr(src, "ids", []), keep) if m]
    return out


def text_stream_source(files: Sequence[str | Path], info: SlamInfo, text_tokenizer: Any, split: str = "all",
                       val_fraction: float = 0.0) -> Any:
    """Plain text lines -> `<s> <text> tokens <s>` (slam.data.text_source plus the marker)."""
    src = text_source(files, text_tokenizer, split=split, val_fraction=val_fraction, bos_id=info.bos_id,
                      eos_id=info.eos_id)
    flat = np.asarray(src.flat, dtype=np.int64)
    starts = src.offsets[:-1]
    flat = np.insert(flat, starts + 1, info.text_token_id)  # after each document's <s>
    offsets = src.offsets + np.arange(len(src.offsets))
    return ArraySource(name=src.name + ":text", flat=flat.astype(np.int32), offsets=offsets.astype(np.int64))


def _check_units_meta(folder: str | Path, meta: dict, info: SlamInfo) -> None:
    if int(meta.get("n_units", 0)) > info.n_units:
        raise SlamError(f"{folder}: units dataset has n_units={meta['n_units']}, the model only {info.n_units}")
    if info.tokenizer_hash and meta.get("tokenizer_hash") and meta["tokenizer_hash"] != info.tokenizer_hash:
        raise SlamError(f"{folder}: units were made by tokenizer {meta['tokenizer_hash'][:12]}, the model expects "
                        f"{info.tokenizer_hash[:12]} (units of different tokenizers never mix)")

