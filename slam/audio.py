"""Audio in: any wav/flac/ogg/mp3 file -> 16 kHz mono float32, and the list of files a command works on.

    wav = load_audio("a.flac")                 # np.float32 [n], 16 kHz, mono
    items = find_audio("corpus/")              # [(id, path, extra)], sorted by id
    items = find_audio("corpus/manifest.jsonl")

Decoding is libsndfile (through soundfile: wav, flac, ogg/vorbis/opus and, since libsndfile 1.1, mp3);
resampling is soxr (HQ). Every way a file can be unusable (missing, unreadable, empty, not audio, corrupt,
truncated, zero samples, NaN samples) raises `AudioError` with the path and the reason, so a tokenize run can
put it in its rejects list and go on.

Ids are the path relative to the folder (or manifest) without extension, e.g. `spk1/book2/utt0003`: stable
across runs and machines, which is what resume and `--shard i/n` rely on. A manifest line may set its own
`id`, and carries `text`, `speaker` (or `voice`, used as the speaker when no speaker is given) and `words`
([{word, start, end}] or [[word, start, end]] in seconds) into the units dataset.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import soxr

from slam.errors import AudioError, SlamError

SAMPLE_RATE = 16000
EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")
MANIFEST_FIELDS = ("text", "speaker", "voice", "words")


_STREAMING_PLACEHOLDER = 0x7FFF0000


def _check_wav_truncation(path: Path, size: int) -> None:
    """libsndfile silently shortens a WAV whose data chunk runs past the end of the file (a copy cut short);
    treat that as corrupt rather than training on half an utterance. Streaming writers cannot know the size
    up front and leave a placeholder: 0, 0xFFFFFFFF, or 0x7FFFF000 (`espeak-ng --stdout`, sox on a pipe).
    Any declared length >= 0x7FFF0000 (~2 GiB, 18 h of 16 kHz 16-bit mono) is read as such a placeholder."""
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return  # RF64/W64/odd variants: leave them to libsndfile
        pos = 12
        while pos + 8 <= size:
            f.seek(pos)
            chunk, length = struct.unpack("<4sI", f.read(8))
            if chunk == b"data":
                if 0 < length < _STREAMING_PLACEHOLDER and pos + 8 + length > size:
                    raise AudioError(f"{path}: truncated WAV (data chunk declares {length} bytes, "
                                     f"the file holds {size - pos - 8})")
                return
            pos += 8 + length + (length & 1)


def load_audio(path: str | os.PathLike, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode `path` to mono float32 at `sample_rate` (channels averaged, soxr HQ resampling)."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise AudioError(f"{path}: file not found") from None
    except OSError as e:
        raise AudioError(f"{path}: unreadable ({e.strerror or e})") from None
    if path.is_dir():
        raise AudioError(f"{path}: is a folder, not an audio file")
    if size == 0:
        raise AudioError(f"{path}: empty file (0 bytes)")
    if path.suffix.lower() == ".wav":
        try:
            _check_wav_truncation(path, size)
        except (OSError, struct.error) as e:
            raise AudioError(f"{path}: unreadable ({e})") from None
    try:
        data, sr = sf.read(path, dtype="float32", always_2d=True)
    except sf.LibsndfileError as e:
        # libsndfile's messages are precise ("Format not recognised.", "flac decoder lost sync."); keep them.
        reason = str(e.error_string if hasattr(e, "error_string") else e).strip().rstrip(".")
        # (the file exists and is regular, checked above: libsndfile's "does not exist ... pipe?" is what
        # its mp3 probe says about bytes it cannot parse)
        unknown = "ecognised" in reason or "not a regular file" in reason
        kind = "not a recognised audio file" if unknown else "corrupt or unsupported audio"
        raise AudioError(f"{path}: {kind} ({reason})") from None
    except (OSError, RuntimeError, ValueError) as e:
        raise AudioError(f"{path}: unreadable ({e})") from None
    if data.shape[0] == 0:
        raise AudioError(f"{path}: no samples (zero-length audio)")
    wav = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
    if not np.isfinite(wav).all():
        raise AudioError(f"{path}: contains NaN or infinite samples")
    if sr != sample_rate:
        try:
            wav = soxr.resample(wav, sr, sample_rate, quality="HQ")
        except (ValueError, RuntimeError) as e:
            raise AudioError(f"{path}: cannot resample from {sr} Hz ({e})") from None
        if wav.shape[0] == 0:
            raise AudioError(f"{path}: too short to resample ({data.shape[0]} samples at {sr} Hz)")
    return np.ascontiguousarray(wav, dtype=np.float32)


def audio_duration(path: str | os.PathLike) -> float:
    """Duration in seconds from the header (no decoding); AudioError when the header cannot be read."""
    path = Path(path)
    if not path.exists():
        raise AudioError(f"{path}: file not found")
    try:
        info = sf.info(path)
    except (sf.LibsndfileError, RuntimeError, OSError) as e:
        raise AudioError(f"{path}: not a readable audio file ({e})") from None
    return info.frames / info.samplerate if info.samplerate else 0.0


def _strip_ext(rel: str) -> str:
    base, ext = os.path.splitext(rel)
    return base if ext.lower() in EXTENSIONS else rel


def _folder_items(folder: Path) -> list[tuple[str, Path, dict]]:
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in EXTENSIONS and p.is_file())
    rels = [p.relative_to(folder).as_posix() for p in paths]
    stems = [_strip_ext(r) for r in rels]
    # `a.wav` and `a.flac` side by side would share the id `a`: keep the extension for those (still stable).
    counts: dict[str, int] = {}
    for s in stems:
        counts[s] = counts.get(s, 0) + 1
    return [(s if counts[s] == 1 else r, p, {}) for s, r, p in zip(stems, rels, paths)]


def _check_words(words: Any, where: str) -> list[dict]:
    if not isinstance(words, list):
        raise SlamError(f"{where}: `words` must be a list of {{word, start, end}}")
    out = []
    for w in words:
        # `slam synth` writes each word as [word, start, end] (compact for 100k-line manifests): same fields
        if isinstance(w, (list, tuple)) and len(w) == 3:
            w = {"word": w[0], "start": w[1], "end": w[2]}
        if not (isinstance(w, dict) and isinstance(w.get("word"), str)
                and isinstance(w.get("start"), (int, float)) and isinstance(w.get("end"), (int, float))):
            raise SlamError(f"{where}: each of `words` needs word (str), start and end (seconds); got {w!r}")
        out.append({"word": w["word"], "start": float(w["start"]), "end": float(w["end"])})
    return out


def _manifest_items(manifest: Path) -> list[tuple[str, Path, dict]]:
    root = manifest.parent
    items = []
    with open(manifest) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{manifest}:{n}"
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise SlamError(f"{where}: not valid JSON ({e.msg})") from None
            if not isinstance(rec, dict) or not isinstance(rec.get("audio"), str):
                raise SlamError(f"{where}: each line needs an `audio` path (relative to the manifest)")
            path = (root / rec["audio"]) if not os.path.isabs(rec["audio"]) else Path(rec["audio"])
            id_ = rec.get("id")
            if id_ is None:
                id_ = _strip_ext(Path(rec["audio"]).as_posix())
            extra = {k: rec[k] for k in MANIFEST_FIELDS if rec.get(k) is not None}
            for k in ("text", "speaker", "voice"):
                if k in extra and not isinstance(extra[k], str):
                    extra[k] = str(extra[k])
            if "words" in extra:
                extra["words"] = _check_words(extra["words"], where)
            if "speaker" not in extra and "voice" in extra:
                extra["speaker"] = extra["voice"]
            items.append((str(id_), path, extra))
    return items


def find_audio(source: str | os.PathLike) -> list[tuple[str, Path, dict]]:
    """(id, path, extra) for every audio file under a folder (recursive) or listed in a manifest.jsonl,
    sorted by id. Missing files listed in a manifest are kept (they become rejects with a reason)."""
    source = Path(source)
    if not source.exists():
        raise SlamError(f"audio source {str(source)!r} does not exist")
    if source.is_dir():
        items = _folder_items(source)
    elif source.suffix.lower() in (".jsonl", ".json"):
        items = _manifest_items(source)
    elif source.suffix.lower() in EXTENSIONS:
        items = [(_strip_ext(source.name), source, {})]
    else:
        raise SlamError(f"{source}: expected a folder, a manifest (.jsonl) or an audio file "
                        f"({', '.join(EXTENSIONS)})")
    seen: dict[str, Path] = {}
    for id_, path, _ in items:
        if id_ in seen:
            raise SlamError(f"{source}: duplicate id {id_!r} ({seen[id_]} and {path}); ids must be unique")
        seen[id_] = path
    return sorted(items, key=lambda it: it[0])
