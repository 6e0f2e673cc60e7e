"""Text -> speech: the backend interface and the resumable, parallel runner behind `slam synth`.

A backend is any class with `synthesize(text, voice) -> (wav, words)`: `wav` 16 kHz mono float32,
`words` a list of (word, start_s, end_s), plus `default_voices`. espeak-ng (slam/synth/espeak.py) is the
default; a second one is a small module of its own with such a class, named on the command line as
`--backend package.module:Class` (no registry to edit).

Output folder:

    OUT/wavs/<id>.wav     16 kHz mono 16-bit PCM, written to a temp name and renamed (never half a file)
    OUT/manifest.jsonl    one line per finished utterance: {"id", "audio" (relative to OUT), "text",
                          "voice", "seconds", "words": [[word, start, end], ...]}
    OUT/rejects.jsonl     one line per failed utterance: {"id", "text", "voice", "reason"}

Crash safety and resume: workers write each wav atomically; the parent alone appends the manifest line,
flushed per line (a killed process loses nothing written) and fsynced every second and at the end. On
restart a cut last line is dropped, ids already in the manifest or rejects are skipped, and the rest is
redone: a wav written just before a kill without its manifest line is simply rewritten, so nothing is
lost and no id is listed twice. Rejects are not retried; delete rejects.jsonl to retry them. An id found
there with another text or voice than now stops the run (audio is never reused for changed input).
"""

from __future__ import annotations

import importlib
import io
import json
import multiprocessing as mp
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Protocol

import numpy as np
import soundfile as sf
from tqdm import tqdm

from slam.errors import SlamError
from slam.utils import atomic_write_bytes, atomic_write_text, format_duration

MANIFEST = "manifest.jsonl"
REJECTS = "rejects.jsonl"
SAMPLE_RATE = 16000
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class TTSBackend(Protocol):
    default_voices: tuple[str, ...]

    def synthesize(self, text: str, voice: str) -> tuple[np.ndarray, list[tuple[str, float, float]]]:
        """16 kHz mono float32 audio and the (word, start_s, end_s) of every word of `text`."""
        ...


BUILTIN = {"espeak": "slam.synth.espeak:EspeakBackend"}


def load_backend(spec: str = "espeak") -> TTSBackend:
    """`espeak` or `package.module:Class` -> a backend instance (one per process)."""
    target = BUILTIN.get(spec, spec)
    if ":" not in target:
        raise SlamError(f"unknown TTS backend {spec!r}: use espeak or package.module:Class")
    module, cls = target.split(":", 1)
    try:
        return getattr(importlib.import_module(module), cls)()
    except (ImportError, AttributeError) as e:
        raise SlamError(f"cannot load TTS backend {spec!r}: {e}") from e


@dataclass(frozen=True)
class Utterance:
    id: str
    text: str
    voice: str


def read_text(path: str | Path, voices: list[str]) -> list[Utterance]:
    """A text file to speak: `.txt` (one utterance per line, blank lines skipped, id = 1-based line number
    as 7 digits) or `.jsonl` ({"id", "text", optional "voice"}). Voices are given in turn, so a line keeps
    its voice when the file grows."""
    path = Path(path)
    if not path.exists():
        raise SlamError(f"text file {str(path)!r} does not exist")
    if not voices:
        raise SlamError("no voices given")
    items: list[Utterance] = []
    if path.suffix == ".jsonl":
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                items.append(Utterance(str(row["id"]), str(row["text"]),
                                      str(row.get("voice") or voices[(n - 1) % len(voices)])))
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise SlamError(f"{path}:{n}: expected a JSON object with id and text ({e})") from e
    else:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip():
                items.append(Utterance(f"{n:07d}", line.strip(), voices[(n - 1) % len(voices)]))
    return items


# ---- worker side ----------------------------------------------------------------------------------------

_backend: TTSBackend | None = None


def _init_worker(backend: str) -> None:
    global _backend
    _backend = load_backend(backend)


def _speak(job: tuple[Utterance, str]) -> dict:
    """Synthesise one utterance and write its wav; returns its manifest row or its reject row."""
    u, out_dir = job
    try:
        if not u.text.strip():
            raise SlamError("empty text")
        wav, words = _backend.synthesize(u.text, u.voice)
        if wav.size < SAMPLE_RATE // 100 or not np.isfinite(wav).all() or np.abs(wav).max() < 1e-3:
            raise SlamError(f"no usable audio ({wav.size} samples, silent or not finite)")
        buf = io.BytesIO()
        sf.write(buf, wav, SAMPLE_RATE, format="WAV", subtype="PCM_16")
        rel = f"wavs/{u.id}.wav"
        atomic_write_bytes(Path(out_dir) / rel, buf.getvalue())
        return {"id": u.id, "audio": rel, "text": u.text, "voice": u.voice, "seconds": round(wav.size / SAMPLE_RATE, 4),
                "words": [[w, s, e] for w, s, e in words]}
    except Exception as e:  # noqa: BLE001 - any failure of one utterance is a reject, not a crash
        return {"id": u.id, "text": u.text, "voice": u.voice, "reason": f"{type(e).__name__}: {e}"}


# ---- parent side ----------------------------------------------------------------------------------------

def read_jsonl(path: Path, repair: bool = False) -> list[dict]:
    """Rows of a jsonl file; with `repair`, a last line cut by a kill is removed from the file."""
    if not path.exists():
        return []
    data = path.read_bytes()
    if repair and data and not data.endswith(b"\n"):
        keep = data.rfind(b"\n") + 1
        with open(path, "r+b") as f:
            f.truncate(keep)
        data = data[:keep]
    return [json.loads(line) for line in data.decode().splitlines() if line.strip()]


def synthesize(items: Iterable[Utterance], out_dir: str | Path, backend: str = "espeak", workers: int = 1,
               progress: bool = True) -> dict:
    """Speak `items` into `out_dir` (layout in the module docstring), skipping ids already done.
    Returns a summary: counts, seconds of audio, wall time, x realtime."""
    out = Path(out_dir)
    items = list(items)
    seen: set[str] = set()
    for u in items:
        if not _ID.match(u.id):
            raise SlamError(f"utterance id {u.id!r} cannot be a file name (use letters, digits, . _ -)")
        if u.id in seen:
            raise SlamError(f"utterance id {u.id!r} appears twice in the input")
        seen.add(u.id)
    (out / "wavs").mkdir(parents=True, exist_ok=True)
    for tmp in (out / "wavs").glob(".*.tmp"):  # half-written wavs of a killed run (their ids are redone)
        tmp.unlink(missing_ok=True)
    rows, rejects = read_jsonl(out / MANIFEST, repair=True), read_jsonl(out / REJECTS, repair=True)
    done = {r["id"] for r in rows}
    rejected = {r["id"] for r in rejects} - done
    earlier = {r["id"]: r for r in rejects + rows}
    # an id done earlier must still mean the same utterance: never reuse audio made for other text or voice
    changed = [u for u in items
               if u.id in earlier and (earlier[u.id]["text"], earlier[u.id]["voice"]) != (u.text, u.voice)]
    if changed:
        u, old = changed[0], earlier[changed[0].id]
        raise SlamError(f"{out} already holds {len(changed)} of these ids with another text or voice (e.g. {u.id}: "
                        f"{old['text']!r} in {old['voice']} there, {u.text!r} in {u.voice} now): use a new --out "
                        f"folder, or delete this one to start over")
    todo = [u for u in items if u.id not in done and u.id not in rejected]
    # fail here, once, with a clear message (missing espeak-ng, bad backend, unknown voice), not with every
    # utterance rejected
    probe = load_backend(backend)
    for voice in sorted({u.voice for u in todo}):
        try:
            probe.synthesize("test", voice)
        except Exception as e:  # noqa: BLE001 - any backend's refusal of a voice
            raise SlamError(f"voice {voice!r} does not work with the {backend} backend: {e}") from e

    t0 = time.time()
    n_ok = n_bad = 0
    seconds = 0.0
    jobs = [(u, str(out)) for u in todo]
    with open(out / MANIFEST, "a") as man, open(out / REJECTS, "a") as rej, \
            tqdm(total=len(todo), unit="utt", disable=not progress, desc="synth") as bar:
        if workers <= 1:
            _init_worker(backend)
            results = map(_speak, jobs)
            pool = None
        else:
            # spawn, not fork: the caller may be a process with torch's thread pools running (the demo), which
            # a forked child must not inherit; the start costs ~0.5 s, once. Each worker opens its own engine.
            pool = mp.get_context("spawn").Pool(workers, initializer=_init_worker, initargs=(backend,))
            results = pool.imap_unordered(_speak, jobs, chunksize=4)
        try:
            last_sync = time.time()
            for row in results:
                f = man if "audio" in row else rej
                f.write(json.dumps(row) + "\n")
                f.flush()
                if "audio" in row:
                    n_ok += 1
                    seconds += row["seconds"]
                else:
                    n_bad += 1
                if time.time() - last_sync > 1.0:
                    os.fsync(man.fileno())
                    os.fsync(rej.fileno())
                    last_sync = time.time()
                bar.update(1)
                wall = time.time() - t0
                bar.set_postfix_str(f"{seconds / max(wall, 1e-9):.0f}x realtime, {n_bad} rejected", refresh=False)
        finally:
            if pool is not None:
                pool.terminate()
                pool.join()
            man.flush()
            os.fsync(man.fileno())
            rej.flush()
            os.fsync(rej.fileno())
    wall = time.time() - t0
    return {"out": str(out), "requested": len(items), "skipped": len(items) - len(todo), "written": n_ok,
            "rejected": n_bad, "audio_seconds": round(seconds, 2), "wall_seconds": round(wall, 2),
            "utterances_per_s": round(n_ok / wall, 1) if wall > 0 else 0.0,
            "x_realtime": round(seconds / wall, 1) if wall > 0 else 0.0, "workers": workers,
            "total_done": len(done) + n_ok, "total_rejected": len(rejected) + n_bad}


def summary_line(s: dict) -> str:
    return (f"spoke {s['written']} utterances ({format_duration(s['audio_seconds'])} of audio) in "
            f"{format_duration(s['wall_seconds'])} with {s['workers']} worker(s): {s['utterances_per_s']} utt/s, "
            f"{s['x_realtime']}x realtime; {s['skipped']} already done, {s['rejected']} rejected "
            f"({s['total_rejected']} in all, listed in {REJECTS}); {s['total_done']} utterances in {MANIFEST}")


# ---- benchmark and preference files ----------------------------------------------------------------------

PAIR_FIELDS = ("positive", "negative")
PREF_FIELDS = ("prompt", "chosen", "rejected")


def text_fields(row: dict) -> tuple[str, ...]:
    if all(k in row for k in PAIR_FIELDS):
        return PAIR_FIELDS
    if all(k in row for k in PREF_FIELDS):
        return PREF_FIELDS
    raise SlamError(f"row {row.get('id')!r} is neither a pair (positive/negative) nor a preference "
                    f"(prompt/chosen/rejected)")


def synthesize_pairs(text_jsonl: str | Path, out_dir: str | Path, voices: list[str] | None = None,
                     workers: int = 1, backend: str = "espeak", progress: bool = True) -> tuple[Path, dict]:
    """Speak every text of a text pairs.jsonl / prefs.jsonl and write its audio twin.

    All texts of one row use the same voice (a pair differing in speaker would be scored on the speaker),
    voices taken in turn over rows. Audio goes to OUT/wavs/<id>-<field>.wav with OUT/manifest.jsonl, and
    OUT/<same file name> gets the same rows with each text replaced by its wav path relative to that file
    (keys id, group kept). Rows with a rejected text are left out and counted. Resumable like `synthesize`.
    Returns (path of the audio file, summary)."""
    text_jsonl = Path(text_jsonl)
    if not text_jsonl.exists():
        raise SlamError(f"{text_jsonl}: no such file")
    rows = read_jsonl(text_jsonl)
    if not rows:
        raise SlamError(f"{text_jsonl}: no rows")
    voices = list(voices or load_backend(backend).default_voices)
    items: list[Utterance] = []
    for i, row in enumerate(rows):
        voice = voices[i % len(voices)]
        for field in text_fields(row):
            items.append(Utterance(f"{row['id']}-{field}", row[field], voice))
    out = Path(out_dir)
    summary = synthesize(items, out, backend=backend, workers=workers, progress=progress)
    audio = {r["id"]: r["audio"] for r in read_jsonl(out / MANIFEST)}
    lines, dropped = [], 0
    for row in rows:
        fields = text_fields(row)
        if not all(f"{row['id']}-{f}" in audio for f in fields):
            dropped += 1
            continue
        new = {k: v for k, v in row.items() if k not in fields}
        new.update({f: audio[f"{row['id']}-{f}"] for f in fields})
        lines.append(json.dumps(new) + "\n")
    target = out / text_jsonl.name
    atomic_write_text(target, "".join(lines))
    summary.update({"rows": len(rows), "rows_written": len(lines), "rows_dropped": dropped, "file": str(target)})
    return target, summary
