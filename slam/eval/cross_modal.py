"""Story cloze across modalities for interleaved models.

    cross_modal_square(...)  the whole square (t2t, t2s, s2t, s2s) from a published cross-modal StoryCloze
                             folder (slamkit / SIMS layout: `<key>_{mutual,correct,incorrect}.{wav,txt}`)
    cross_modal_cloze(...)   t2s and s2t from a text pairs.jsonl, each prompt and ending spoken by the TTS
                             once (resumable): for corpora that have no published recordings
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from slam.audio import load_audio
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



# --- the published cross-modal StoryCloze layout (slamkit / SIMS) -------------------------------------------
DIRECTIONS = ("t2t", "t2s", "s2t", "s2s")
_ROLES = ("correct", "incorrect", "mutual")


def is_cross_modal_folder(path: str | Path) -> bool:
    """A folder of `<key>_correct.wav` files (or subfolders of them): the published cross-modal layout."""
    path = Path(path)
    if not path.is_dir():
        return False
    return any(path.glob("*_correct.wav")) or any(d.is_dir() and any(d.glob("*_correct.wav"))
                                                     for d in path.iterdir())


def read_cross_modal_folder(path: str | Path) -> list[dict[str, Any]]:
    """Items of a published cross-modal StoryCloze folder, as slamkit's CrossModalMetricDataset reads it.

    Each item `<key>` has six files: `<key>_mutual.{wav,txt}` (the shared prompt: the story without its
    ending), `<key>_correct.{wav,txt}` and `<key>_incorrect.{wav,txt}` (the two endings). Items sit in the
    folder itself or one level down in subfolders (slamkit's `subfolder: true` sets, e.g. cross_ms_tSC);
    a subfolder's name is the item's group. Text files are read stripped. Sorted by (group, key) so that a
    run does not depend on directory order; a missing file is an error naming it."""
    path = Path(path)
    if not path.is_dir():
        raise SlamError(f"{path}: not a folder")
    flat = sorted(path.glob("*_correct.wav"))
    sets = [(None, flat)] if flat else [(d.name, sorted(d.glob("*_correct.wav")))
                                         for d in sorted(path.iterdir()) if d.is_dir()]
    items = []
    for group, positives in sets:
        for pos in positives:
            base = str(pos)[: -len("_correct.wav")]
            files = {f"{r}_{ext}": Path(f"{base}_{r}.{ext}") for r in _ROLES for ext in ("wav", "txt")}
            for name, f in files.items():
                if not f.is_file():
                    raise SlamError(f"{path}: {pos.name} has no {f.name} (each item needs _correct, _incorrect "
                                    f"and _mutual, each as .wav and .txt)")
            text = {r: files[f"{r}_txt"].read_text(encoding="utf-8").strip() for r in _ROLES}
            items.append({"key": Path(base).name, "group": group, "wav": {r: files[f"{r}_wav"] for r in _ROLES},
                          "text": text})
    if not items:
        raise SlamError(f"{path}: no `<key>_correct.wav` files here or one folder down (the published "
                        f"cross-modal StoryCloze layout)")
    return items


def cross_modal_square(model: Any, info: SlamInfo, text_tokenizer: Any, speech_tokenizer: Any, folder: str | Path,
                       *, directions: Sequence[str] = DIRECTIONS, n: int | None = None,
                       cache_dir: str | Path | None = None, batch_tokens: int | None = None, score: str = "mean",
                       span: str = "all", progress: bool = True) -> dict[str, Any]:
    """Story cloze in all four directions from a published cross-modal folder (read_cross_modal_folder):

        t2t  <s> <text> prompt+ending                  (slamkit joins the two texts as they are)
        t2s  <s> <text> prompt <speech> ending-units
        s2t  <s> <speech> prompt-units <text> ending
        s2s  <s> <speech> units of prompt and ending spoken as one wave (concatenated, then tokenised)

    span "all" scores as slamkit's cm_storycloze: the mean (or sum) NLL of every token after `<s>` over the
    whole vocabulary, no eos appended (its text tokenizer adds none). span "ending" scores only the ending
    (+ eos), with the softmax restricted to the ending's modality, like `cross_modal_cloze`. A pair is right
    when the correct ending's sequence scores lower; ties 0.5. Returns {direction: result} in the shape of
    slam.eval.pairs results, per-subfolder accuracies in `groups`."""
    require_interleaved(info)
    bad = [d for d in directions if d not in DIRECTIONS]
    if bad or span not in ("all", "ending"):
        raise SlamError(f"cross-modal directions {bad or list(directions)} / span {span!r}: expected a subset of "
                        f"{DIRECTIONS} and span 'all' or 'ending'")
    t0 = time.perf_counter()
    items = read_cross_modal_folder(folder)[:n]
    dedup = bool(info.tokenizer.get("dedup", True)) if info.tokenizer else True
    need_audio = any(d != "t2t" for d in directions)
    units: dict[Path, np.ndarray] = {}
    if need_audio:
        separate = sorted({it["wav"][r] for it in items for r in _ROLES})
        units = _units_of(separate, speech_tokenizer, dedup, cache_dir)

    def joined_units(a: Path, b: Path) -> np.ndarray:
        # slamkit concatenates the two waves and encodes them together (one dedup across the join)
        frames = np.asarray(speech_tokenizer.encode(np.concatenate([load_audio(a), load_audio(b)])), np.int64)
        return dedup_frames(frames)[0] if dedup else frames

    def text_ids(s: str) -> np.ndarray:
        return np.asarray(text_tokenizer(s, add_special_tokens=False)["input_ids"], np.int64)

    B, E, S, T, off = info.bos_id, info.eos_id, info.speech_token_id, info.text_token_id, info.unit_offset
    results: dict[str, Any] = {}
    was_training = model.training
    model.eval()
    for direction in directions:
        seqs, starts = [], []
        for it in items:
            prompt_t, prompt_w = it["text"]["mutual"], it["wav"]["mutual"]
            for role in ("correct", "incorrect"):
                end_t, end_w = it["text"][role], it["wav"][role]
                if direction == "t2t":
                    head, tail = np.r_[B, T], text_ids(prompt_t + end_t)
                    if span == "ending":  # the ending's own tokens after the prompt's
                        head, tail = np.r_[B, T, text_ids(prompt_t)], text_ids(" " + end_t)
                elif direction == "t2s":
                    head, tail = np.r_[B, T, text_ids(prompt_t), S], units[end_w] + off
                elif direction == "s2t":
                    head, tail = np.r_[B, S, units[prompt_w] + off, T], text_ids(end_t if span == "all" else " " + end_t)
                else:
                    if span == "all":
                        head, tail = np.r_[B, S], joined_units(prompt_w, end_w) + off
                    else:
                        head, tail = np.r_[B, S, units[prompt_w] + off], units[end_w] + off
                seq = np.r_[head, tail] if span == "all" else np.r_[head, tail, E]
                seqs.append(seq.astype(np.int64))
                starts.append(1 if span == "all" else len(head))
        allowed = None
        if span == "ending":
            allowed = speech_targets(info) if direction in ("t2s", "s2s") else text_targets(info)
        nll = score_sequences(model, seqs, score, batch_tokens=batch_tokens, pad_id=info.pad_id,
                              allowed_ids=allowed, score_from=starts, progress=progress)
        outcomes = [pair_outcome(nll[2 * i], nll[2 * i + 1]) for i in range(len(items))]
        groups: dict[str, list[float]] = {}
        for it, o in zip(items, outcomes):
            if it["group"] is not None:
                groups.setdefault(it["group"], []).append(o)
        names = {"t": "text", "s": "speech"}
        results[direction] = {"metric": "accuracy", "unit": "%", **accuracy(outcomes), "score": score, "span": span,
                              "layout": f"cross-modal story cloze, published layout ({names[direction[0]]} prompt -> "
                                        f"{names[direction[2]]} ending)",
                              "path": str(folder), "groups": {g: accuracy(v) for g, v in sorted(groups.items())}}
    model.train(was_training)
    results["seconds"] = time.perf_counter() - t0
    return results
