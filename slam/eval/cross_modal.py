"""Story cloze across modalities for interleaved models: text prompt -> speech ending and speech prompt ->
text ending, from a text pairs.jsonl, each prompt and ending spoken by the TTS once (resumable)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from slam.errors import SlamError
from slam.eval.pairs import accuracy, pair_outcome, score_sequences, tokenize_files
from slam.synth.corpus import split_sentences
from slam.synth.tts import MANIFEST, Utterance as SynthItem, load_backend, read_jsonl, synthesize
from slam.tokens import SlamInfo, require_interleaved, speech_targets, text_targets
from slam.units.dataset import dedup as dedup_frames


def split_story(positive: str, negative: str) -> tuple[str, str, str] | None:
    """A cloze pair of full stories -> (shared prompt, positive ending, negative ending): the prompt is every
    sentence but the last, which must be shared."""
    p, n = split_sentences(positive), split_sentences(negative)
    if len(p) < 2 or len(p) != len(n) or p[:-1] != n[:-1] or p[-1] == n[-1]:
        return None
    return " ".join(p[:-1]), p[-1], n[-1]


def _units_of(files: Sequence[Path], speech_tokenizer: Any, dedup: bool, cache_dir: Any) -> dict[Path, np.ndarray]:
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
    require_interleaved(info)
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

