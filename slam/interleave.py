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
    cross_modal_cloze(model, info, text_tok, speech_tok, "corpus/bench/story/pairs.jsonl", work="x/")
    generate_speech(model, info, text_tok, prompt_text=["Once upon a time"])  # text prompt -> speech units

From the command line (speech-only pair metrics of an interleaved model are scored on units + eos with the
text logits masked off, automatically):

    slam train slam-interleaved data.train='[{path: units/, stream: interleaved, weight: 0.5}, ...]'
    slam eval MODEL --bench sSC=... --cross-modal story=corpus/bench/story/pairs.jsonl
    slam generate MODEL --prompt-text "Once upon a time" --out a.wav     # or --prompt AUDIO (speech prompt)
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np

from slam.config import check
from slam.errors import ConfigError, SlamError
from slam.tokens import SlamInfo

TEXT_TOKENIZER_DIR = "text_tokenizer"
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


# --- vocabulary ----------------------------------------------------------------------------------------------
def load_text_tokenizer(path: str | Path) -> Any:
    """An HF tokenizer folder or hub id. The class named in tokenizer_config.json wins: in a folder that also
    holds a model config (a slam text LM), AutoTokenizer picks the model family's class (Qwen2Tokenizer) and
    rebuilds it from the vocabulary, which turns a word-level tokenizer into nonsense ("Ben met" -> "a a")."""
    from transformers import AutoTokenizer
    from transformers.models.auto.tokenization_auto import tokenizer_class_from_name

    try:
        cfg = Path(str(path)) / "tokenizer_config.json"
        name = json.loads(cfg.read_text()).get("tokenizer_class") if cfg.is_file() else None
        cls = tokenizer_class_from_name(name) if name else None
        return (cls or AutoTokenizer).from_pretrained(str(path))
    except (OSError, ValueError) as e:
        raise SlamError(f"cannot load a text tokenizer from {str(path)!r}: {e}") from e


def interleaved_layout(text_tokenizer: Any, n_units: int, text_rows: int = 0, tokenizer: dict | None = None,
                       tokenizer_hash: str = "", text_tokenizer_path: str | Path | None = None) -> SlamInfo:
    """Token layout of the module docstring. `text_rows`: embedding rows of the base text LM (0 = random
    init, then the tokenizer's length)."""
    n_text = max(int(text_rows), len(text_tokenizer))
    eos = text_tokenizer.eos_token_id
    bos = text_tokenizer.bos_token_id if text_tokenizer.bos_token_id is not None else eos
    if eos is None:
        raise SlamError("the text tokenizer has no eos token; an interleaved model needs one to end documents")
    k = int(n_units)
    return SlamInfo(n_units=k, tokenizer=dict(tokenizer or {}), tokenizer_hash=tokenizer_hash,
                    unit_offset=n_text, pad_id=n_text + k + 2, bos_id=bos, eos_id=eos, vocab_size=n_text + k + 3,
                    text_tokenizer=None if text_tokenizer_path is None else str(text_tokenizer_path),
                    speech_token_id=n_text + k, text_token_id=n_text + k + 1,
                    extra={"interleaved": True, "text_vocab_size": len(text_tokenizer)})


def is_interleaved(info: SlamInfo) -> bool:
    return info.speech_token_id is not None and info.text_token_id is not None


def _require(info: SlamInfo) -> None:
    if not is_interleaved(info):
        raise SlamError("not an interleaved model: slam.json has no <speech>/<text> marker ids")


def unit_ids(info: SlamInfo) -> np.ndarray:
    return np.arange(info.unit_offset, info.unit_offset + info.n_units)


def speech_targets(info: SlamInfo) -> np.ndarray:
    """Ids a speech segment may continue with: units and the end of the document."""
    return np.r_[unit_ids(info), info.eos_id]


def text_targets(info: SlamInfo) -> np.ndarray:
    """Ids a text segment may continue with: the text tokenizer's entries (eos is one of them)."""
    return np.arange(int(info.extra.get("text_vocab_size", info.unit_offset)))


def init_new_rows(model: Any, info: SlamInfo, seed: int = 0, noise: float = 0.1) -> None:
    """Rows from `unit_offset` on (units, markers, pad) = mean of the used text rows + noise x their std.

    Text rows are not touched (bit-identical to what twist_init copied). Input table and untied head get the
    same treatment (a tied head is the same tensor); a head bias gets the mean text bias."""
    import torch

    _require(info)
    n_text = int(info.extra.get("text_vocab_size", info.unit_offset))
    gen = torch.Generator().manual_seed(int(seed))
    tables = [model.get_input_embeddings()]
    head = model.get_output_embeddings()
    if head is not None and head.weight is not tables[0].weight:
        tables.append(head)
    for table in tables:
        w = table.weight.data  # in place, outside autograd
        text = w[:n_text].float()
        mean, std = text.mean(0), text.std(0)
        n_new = w.shape[0] - info.unit_offset
        rows = mean + noise * std * torch.randn(n_new, w.shape[1], generator=gen)
        w[info.unit_offset:] = rows.to(w.dtype)
        bias = getattr(table, "bias", None)
        if bias is not None:
            bias = bias.data
            bias[info.unit_offset:] = bias[:n_text].float().mean().to(bias.dtype)


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
class Utterance:
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


def _surface_words(utt: Utterance) -> list[str]:
    """The words as written (case, punctuation) when the transcript lines up with the timed words."""
    import re

    if utt.text:
        toks = [t for t in utt.text.split() if re.sub(r"^\W+|\W+$", "", t)]
        if len(toks) == len(utt.words):
            return toks
    return [w[0] for w in utt.words]


def _seed_for(seed: int, key: str) -> np.random.Generator:
    h = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")
    return np.random.default_rng(np.random.SeedSequence([int(seed), h]))


def interleave_utterances(utts: Sequence[Utterance], text_tokenizer: Any, info: SlamInfo, frame_rate: float,
                          cfg: InterleaveConfig | None = None, seed: int = 0,
                          modalities: Sequence[np.ndarray] | None = None
                          ) -> list[tuple[np.ndarray, list[tuple[bool, int, int]]]]:
    """Each utterance -> (ids `<s> <marker> ... <s>`, its spans [(is_speech, word a, word b)]).

    Spans come from the policy, seeded by (seed, utterance id) so an utterance's sequence does not depend on
    the dataset order; `modalities` overrides the policy (one bool array per utterance). A speech span whose
    words own no unit (a very short word merged into its neighbour's unit) is given as text. Text spans are
    tokenized in one batched call."""
    _require(info)
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
    _require(info)
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
    import pyarrow.compute as pc

    from slam.data import in_val_split
    from slam.units.dataset import load_table

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
            yield Utterance(key, units[offs[i]:offs[i + 1]], durs[offs[i]:offs[i + 1]],
                            [(w["word"], float(w["start"]), float(w["end"])) for w in words[i]], texts[i])


def interleaved_source(folder: str | Path, info: SlamInfo, text_tokenizer: Any, cfg: InterleaveConfig,
                       seed: int = 0, split: str = "all", val_fraction: float = 0.0, progress: bool = True) -> Any:
    """A units dataset with word times -> interleaved documents, fixed for a seed (so the packed loader knows
    every length up front and a resumed run sees the same documents). `.stats` holds the speech shares."""
    from tqdm import tqdm

    from slam.units.dataset import read_meta

    meta = read_meta(folder)
    _check_units_meta(folder, meta, info)
    frame_rate = float(meta.get("frame_rate") or 25.0)
    stats: dict[str, Any] = {"utterances": 0, "words": 0, "speech_words": 0, "speech_tokens": 0, "tokens": 0}
    chunks: list[np.ndarray] = []
    lens: list[int] = []
    bar = tqdm(total=int(meta.get("n_utterances") or 0) or None, unit="utt", disable=not progress,
               desc=f"interleaving {Path(folder).name} ({split})")
    batch: list[Utterance] = []
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
    from slam.data import ArraySource

    flat = np.concatenate(chunks) if chunks else np.zeros(0, np.int32)
    src = ArraySource(name=f"{Path(folder).name}:interleaved", flat=flat,
                      offsets=np.concatenate([[0], np.cumsum(np.asarray(lens, np.int64))]).astype(np.int64))
    src.ids = keys
    stats["speech_word_share"] = stats["speech_words"] / max(stats["words"], 1)
    stats["speech_token_share"] = stats["speech_tokens"] / max(stats["tokens"], 1)
    src.stats = stats
    return src


def _subset(src: Any, keep: np.ndarray) -> Any:
    """The documents of an ArraySource where `keep` is true (order kept), as a new ArraySource."""
    from slam.data import ArraySource

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
    from slam.data import ArraySource, text_source

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


# --- the training recipe's data section (data.kind: interleaved) ---------------------------------------------
def _text_files(path: Path) -> list[Path]:
    return sorted(path.rglob("*.txt")) if path.is_dir() else [path]


def _stream(source: Any) -> str:
    if source.stream is not None:
        return source.stream
    return "text" if (Path(source.path).is_file() or not (Path(source.path) / "meta.json").exists()) else "interleaved"


def check_sources(cfg: Any) -> None:
    """data.kind=interleaved: every source exists and fits its stream; a text tokenizer can be found."""
    d = cfg.data
    if not d.train:
        raise ConfigError("data.train: no training source given (a list of {path, stream, weight})")
    if any(s.weight is not None for s in d.train) and not all(s.weight is not None for s in d.train):
        raise ConfigError("data.train: give every source a weight, or none (natural proportions)")
    if cfg.model.base is None and not d.text_tokenizer:
        raise ConfigError("data.text_tokenizer: random init (model.base: null) needs a text tokenizer folder")
    if cfg.model.base is not None and cfg.model.unit_init != "truncate":
        raise ConfigError("model.unit_init: an interleaved model keeps every text row; use truncate")
    entries = [(f"data.train[{i}]", s.path, _stream(s)) for i, s in enumerate(d.train)]
    if d.val is not None:
        entries.append(("data.val", d.val, "interleaved" if (Path(d.val) / "meta.json").exists() else "text"))
    if not any(kind != "text" for _, _, kind in entries):
        raise ConfigError("data.train: an interleaved recipe needs at least one units dataset (speech or "
                          "interleaved stream)")
    for where, path, kind in entries:
        p = Path(path)
        if not p.exists():
            raise ConfigError(f"{where}.path: {path!r} does not exist")
        if kind in ("speech", "interleaved") and not (p / "meta.json").exists():
            raise ConfigError(f"{where}.path: {path!r} is not a units dataset (no meta.json; make one with "
                              f"`slam tokenize`)")
        if kind == "text" and not [f for f in _text_files(p) if f.is_file()]:
            raise ConfigError(f"{where}.path: {path!r} holds no .txt file")


def token_layout(cfg: Any) -> SlamInfo:
    """The interleaved vocabulary for a recipe: the base's (or data.text_tokenizer's) text tokenizer, the
    units datasets' tokenizer. A hub tokenizer is saved into the run folder, so the model folder can carry it."""
    d = cfg.data
    tok_ref = d.text_tokenizer or cfg.model.base
    base_info = Path(str(cfg.model.base)) / "slam.json"
    if not d.text_tokenizer and base_info.is_file():  # a slam text LM folder carries its tokenizer inside
        inner = json.loads(base_info.read_text()).get("text_tokenizer")
        if inner:
            tok_ref = str(Path(str(cfg.model.base)) / inner)
    tok = load_text_tokenizer(tok_ref)
    tok_path = Path(tok_ref)
    if not tok_path.is_dir():
        import torch

        tok_path = Path(cfg.out) / TEXT_TOKENIZER_DIR
        if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:
            tok.save_pretrained(str(tok_path))
    from slam.data import units_layout

    try:
        speech = units_layout([s.path for s in d.train if _stream(s) != "text"])
    except SlamError as e:
        raise ConfigError(f"data.train: {e}") from None
    text_rows = 0
    if cfg.model.base is not None:
        from transformers import AutoConfig

        text_rows = int(AutoConfig.from_pretrained(str(cfg.model.base)).vocab_size)
    return interleaved_layout(tok, speech.n_units, text_rows, speech.tokenizer, speech.tokenizer_hash,
                              tok_path.resolve())


def loaders(cfg: Any, info: SlamInfo, env: Any) -> tuple[Any, Any]:
    """Speech-only, text-only and interleaved streams mixed by their weights, packed like pre-training."""
    from slam.data import PackedLoader, in_val_split, units_source
    from slam.train.data_io import TrainData, ValData

    d = cfg.data
    tok = load_text_tokenizer(info.text_tokenizer)

    def build(path: str, kind: str, frac: float) -> tuple[Any, Any]:
        """(train, held-out) documents of one source; held-out None when frac is 0."""
        if kind == "speech":
            split = (lambda sp: units_source(path, info, split=sp, val_fraction=frac,
                                             name=f"{Path(path).name}:speech"))
        elif kind == "text":
            files = [str(f) for f in _text_files(Path(path))]
            split = (lambda sp: text_stream_source(files, info, tok, sp, frac))
        else:  # the costly one (~0.2 ms of CPU per utterance): built once, then split by the same id hash
            full = interleaved_source(path, info, tok, d.interleave, cfg.seed, progress=env.main)
            if frac <= 0:
                return full, None
            held = np.array([in_val_split(k, frac) for k in full.ids], dtype=bool)
            return _subset(full, ~held), _subset(full, held)
        return split("train" if frac > 0 else "all"), (split("val") if frac > 0 else None)

    frac = 0.0 if d.val else d.val_fraction
    kinds = [_stream(s) for s in d.train]
    built = [build(s.path, k, frac) for s, k in zip(d.train, kinds)]
    train_src = [t for t, _ in built]
    if d.val:
        val_src = [build(d.val, "interleaved" if (Path(d.val) / "meta.json").exists() else "text", 0.0)[0]]
    else:
        val_src = [v for _, v in built]
    val_src = [s for s in val_src if s is not None and len(s) > 0]
    if not val_src:
        raise ConfigError(f"data.val_fraction: {d.val_fraction} of the training documents holds none out; "
                          f"raise it or give a data.val source")
    weights = [s.weight for s in d.train] if d.train[0].weight is not None else None
    try:
        train = PackedLoader(train_src, seq_len=d.context, batch_size=cfg.batch.micro, weights=weights,
                             seed=cfg.seed, rank=env.rank, world_size=env.world, pad_id=info.pad_id)
        val = PackedLoader(val_src, seq_len=d.context, batch_size=cfg.batch.micro, shuffle=False, infinite=False,
                           rank=env.rank, world_size=env.world, pad_id=info.pad_id)
        train.plan()
        val.plan()
    except SlamError as e:
        raise ConfigError(f"data: {e}") from None
    if env.main:
        for s, k in zip(train_src, kinds):
            stats = getattr(s, "stats", None)
            extra = (f"; {stats['speech_word_share']:.0%} of words / {stats['speech_token_share']:.0%} of tokens "
                     f"as speech, {stats['skipped_without_words']} rows without word times skipped") if stats else ""
            print(f"slam train: {k} stream {s.name}: {len(s)} documents, {int(s.lengths().sum()):,} tokens{extra}")
    return TrainData(train, env.device), ValData(val, env.device)


# --- evaluation ----------------------------------------------------------------------------------------------
def split_story(positive: str, negative: str) -> tuple[str, str, str] | None:
    """A cloze pair of full stories -> (shared prompt, positive ending, negative ending): the prompt is every
    sentence but the last, which must be shared."""
    from slam.synth.corpus import split_sentences

    p, n = split_sentences(positive), split_sentences(negative)
    if len(p) < 2 or len(p) != len(n) or p[:-1] != n[:-1] or p[-1] == n[-1]:
        return None
    return " ".join(p[:-1]), p[-1], n[-1]


def _units_of(files: Sequence[Path], speech_tokenizer: Any, dedup: bool, cache_dir: Any) -> dict[Path, np.ndarray]:
    from slam.eval.pairs import tokenize_files
    from slam.units.dataset import dedup as dedup_frames

    frames, _ = tokenize_files(list(files), speech_tokenizer, cache_dir, progress=True)
    return {f: (dedup_frames(frames[f])[0] if dedup else frames[f]) for f in files}


def cross_modal_cloze(model: Any, info: SlamInfo, text_tokenizer: Any, speech_tokenizer: Any,
                      pairs: str | Path, work: str | Path, *, n: int | None = None, voices: list[str] | None = None,
                      cache_dir: str | Path | None = None, batch_tokens: int | None = None, score: str = "mean",
                      progress: bool = True) -> dict[str, Any]:
    """Story cloze across modalities from a text pairs.jsonl (the built-in corpus' bench/story or topic):

        t2s  <s> <text> prompt <speech> ending-units <s>       score: ending units + eos, unit logits only
        s2t  <s> <speech> prompt-units <text> ending <s>       score: ending tokens + eos, text logits only

    A pair is right when the positive ending scores the lower mean NLL. The prompts and endings are spoken
    once into `work` (resumable, espeak by default), each pair with one voice. Returns {"t2s": result,
    "s2t": result} in the shape of slam.eval.pairs results."""
    from slam.eval.pairs import accuracy, pair_outcome, score_sequences
    from slam.synth.tts import MANIFEST, Utterance as SynthItem, load_backend, read_jsonl, synthesize

    _require(info)
    t0 = time.perf_counter()
    rows = [json.loads(line) for line in Path(pairs).read_text().splitlines() if line.strip()]
    items = []
    for r in rows:
        parts = split_story(r["positive"], r["negative"])
        if parts is not None:
            items.append((r["id"], r.get("group"), *parts))
    if n is not None:
        items = items[:n]
    if not items:
        raise SlamError(f"{pairs}: no cloze pair with a shared prompt and differing last sentences")
    voices = list(voices or load_backend("espeak").default_voices)
    todo = []
    for i, (key, _, prompt, pos, neg) in enumerate(items):
        for field, text in (("prompt", prompt), ("positive", pos), ("negative", neg)):
            todo.append(SynthItem(f"{key}-{field}", text, voices[i % len(voices)]))
    work = Path(work)
    synthesize(todo, work, progress=progress)
    audio = {r["id"]: work / r["audio"] for r in read_jsonl(work / MANIFEST)}
    items = [it for it in items if all(f"{it[0]}-{f}" in audio for f in ("prompt", "positive", "negative"))]
    dedup = bool(info.tokenizer.get("dedup", True)) if info.tokenizer else True
    units = _units_of(sorted({audio[f"{it[0]}-{f}"] for it in items for f in ("prompt", "positive", "negative")}),
                      speech_tokenizer, dedup, cache_dir)

    def text_ids(s: str, lead: bool) -> np.ndarray:
        return np.asarray(text_tokenizer((" " if lead else "") + s, add_special_tokens=False)["input_ids"], np.int64)

    B, E, S, T, off = info.bos_id, info.eos_id, info.speech_token_id, info.text_token_id, info.unit_offset
    results = {}
    for direction in ("t2s", "s2t"):
        seqs, starts = [], []
        for key, _, prompt, pos, neg in items:
            for field, ending in (("positive", pos), ("negative", neg)):
                if direction == "t2s":
                    head = np.r_[B, T, text_ids(prompt, False), S]
                    tail = units[audio[f"{key}-{field}"]] + off
                else:
                    head = np.r_[B, S, units[audio[f"{key}-prompt"]] + off, T]
                    tail = text_ids(ending, True)
                seqs.append(np.r_[head, tail, E].astype(np.int64))
                starts.append(len(head))
        allowed = speech_targets(info) if direction == "t2s" else text_targets(info)
        was_training = model.training
        model.eval()
        nll = score_sequences(model, seqs, score, batch_tokens=batch_tokens, pad_id=info.pad_id,
                              allowed_ids=allowed, score_from=starts, progress=progress)
        model.train(was_training)
        outcomes = [pair_outcome(nll[2 * i], nll[2 * i + 1]) for i in range(len(items))]
        groups: dict[str, list[float]] = {}
        for (_, g, *_), o in zip(items, outcomes):
            if g is not None:
                groups.setdefault(g, []).append(o)
        results[direction] = {"metric": "accuracy", "unit": "%", **accuracy(outcomes), "score": score,
                              "layout": f"cross-modal story cloze ({'text prompt -> speech ending' if direction == 't2s' else 'speech prompt -> text ending'})",
                              "path": str(pairs), "groups": {g: accuracy(v) for g, v in sorted(groups.items())}}
    results["seconds"] = time.perf_counter() - t0
    return results


# --- generation ----------------------------------------------------------------------------------------------
def text_prompt_ids(info: SlamInfo, text_tokenizer: Any, text: str) -> np.ndarray:
    """`<s> <text> tokens <speech>`: a text prompt whose continuation is speech."""
    _require(info)
    toks = np.asarray(text_tokenizer(text, add_special_tokens=False)["input_ids"], np.int64)
    return np.r_[info.bos_id, info.text_token_id, toks, info.speech_token_id].astype(np.int64)


def generate_speech(model: Any, info: SlamInfo, text_tokenizer: Any = None, *,
                    prompt_units: Sequence[Sequence[int]] | None = None, prompt_text: Sequence[str] | None = None,
                    **sampling: Any) -> list[list[np.ndarray]]:
    """Speech continuations (units) of speech prompts (`<s> <speech> units` ...) or text prompts
    (`<s> <text> tokens <speech>` ...). Only unit ids are ever drawn (text, markers and eos suppressed), with
    slam.generate.sample_units and its sampling arguments (temperature, top_k, max_new_tokens, seed, ...)."""
    from slam.generate import sample_units

    _require(info)
    if (prompt_units is None) == (prompt_text is None):
        raise SlamError("give either prompt_units or prompt_text")
    if prompt_units is not None:
        return sample_units(model, info, [np.asarray(p, np.int64) for p in prompt_units], **sampling)
    if text_tokenizer is None:
        raise SlamError("a text prompt needs the model's text tokenizer")
    prefixes = [text_prompt_ids(info, text_tokenizer, t) for t in prompt_text]
    empty = [np.zeros(0, np.int64) for _ in prompt_text]
    return sample_units(model, info, empty, prefixes=prefixes, **sampling)


def model_text_tokenizer(info: SlamInfo, model_dir: str | Path) -> Any:
    """The text tokenizer saved inside an interleaved model folder."""
    _require(info)
    if not info.text_tokenizer:
        raise SlamError(f"{model_dir}: slam.json names no text tokenizer")
    return load_text_tokenizer(Path(model_dir) / info.text_tokenizer)
