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

import errno
import io
import json
import os
import stat
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


def _unusable(path: Path) -> str | None:
    """Why `path` cannot be an audio file (never opening it: a FIFO would block), or None when it is a
    regular file (or a symlink to one)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        if path.is_symlink():
            return f"dangling symlink (points to {os.readlink(path)!r}, which does not exist)"
        return "file not found"
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "symlink loop (the link points back to itself through other links)"
        return f"unreadable ({e.strerror or e})"
    if stat.S_ISDIR(st.st_mode):
        return "is a folder, not an audio file"
    if not stat.S_ISREG(st.st_mode):
        kind = ("a FIFO" if stat.S_ISFIFO(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode)
                else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "special")
        return f"not a regular file ({kind})"
    if st.st_size == 0:
        return "empty file (0 bytes)"
    return None


def load_audio(path: str | os.PathLike, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode `path` to mono float32 at `sample_rate` (channels averaged, soxr HQ resampling)."""
    path = Path(path)
    why = _unusable(path)
    if why is not None:
        raise AudioError(f"{path}: {why}")
    if path.suffix.lower() == ".wav":
        try:
            _check_wav_truncation(path, path.stat().st_size)
        except (OSError, struct.error) as e:
            raise AudioError(f"{path}: unreadable ({e})") from None
    return _decode(path, str(path), sample_rate)


def load_audio_bytes(data: bytes, label: str, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode an encoded audio file held in memory (a Hugging Face `Audio` cell's bytes: wav, flac, ogg,
    mp3 at any rate); `label` names it in errors."""
    if not data:
        raise AudioError(f"{label}: empty audio bytes")
    return _decode(io.BytesIO(data), label, sample_rate)


def _decode(src: Any, label: str, sample_rate: int) -> np.ndarray:
    try:
        data, sr = sf.read(src, dtype="float32", always_2d=True)
    except sf.LibsndfileError as e:
        # libsndfile's messages are precise ("Format not recognised.", "flac decoder lost sync."); keep them.
        reason = str(e.error_string if hasattr(e, "error_string") else e).strip().rstrip(".")
        # (the file exists and is regular, checked above: libsndfile's "does not exist ... pipe?" is what
        # its mp3 probe says about bytes it cannot parse)
        unknown = "ecognised" in reason or "not a regular file" in reason
        kind = "not a recognised audio file" if unknown else "corrupt or unsupported audio"
        raise AudioError(f"{label}: {kind} ({reason})") from None
    except (OSError, RuntimeError, ValueError, TypeError) as e:
        raise AudioError(f"{label}: unreadable ({e})") from None
    if data.shape[0] == 0:
        raise AudioError(f"{label}: no samples (zero-length audio)")
    wav = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
    if not np.isfinite(wav).all():
        raise AudioError(f"{label}: contains NaN or infinite samples")
    if sr != sample_rate:
        try:
            wav = soxr.resample(wav, sr, sample_rate, quality="HQ")
        except (ValueError, RuntimeError) as e:
            raise AudioError(f"{label}: cannot resample from {sr} Hz ({e})") from None
        if wav.shape[0] == 0:
            raise AudioError(f"{label}: too short to resample ({data.shape[0]} samples at {sr} Hz)")
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


REJECT = "reject"
"""An item's `extra` key holding why it was refused while listing (a folder that links back to an ancestor):
tokenize records it as a reject without decoding."""


def _walk(folder: Path) -> list[tuple[Path, str | None]]:
    """Every entry with an audio extension under `folder` (regular or not: a FIFO, a dangling symlink, a link
    loop or a folder named *.wav become rejects with a reason instead of vanishing), following symlinked
    folders; a symlinked folder that leads back to one of its ancestors is listed with the reason."""
    out: list[tuple[Path, str | None]] = []

    def visit(d: Path, ancestors: frozenset) -> None:
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError as e:
            out.append((d, f"folder unreadable ({e.strerror or e})"))
            return
        for e in entries:
            p = Path(e.path)
            audio_name = p.suffix.lower() in EXTENSIONS
            try:
                is_dir = e.is_dir(follow_symlinks=True)
            except OSError:
                is_dir = False
            if is_dir:
                real = os.path.realpath(p)
                if real in ancestors:
                    out.append((p, f"symlink loop (links back to its ancestor folder {real})"))
                    continue
                if audio_name:
                    out.append((p, None))  # load_audio says "is a folder"; what it holds is still listed
                visit(p, ancestors | {real})
            elif audio_name:
                out.append((p, None))

    visit(folder, frozenset({os.path.realpath(folder)}))
    return out


def _folder_items(folder: Path, include_unusable: bool = False) -> list[tuple[str, Path, dict]]:
    found = _walk(folder)
    if not include_unusable:
        found = [(p, r) for p, r in found if r is None and p.is_file()]  # (as before: not FIFOs, links to nothing)
    paths = [p for p, _ in found]
    reasons = [r for _, r in found]
    rels = [p.relative_to(folder).as_posix() for p in paths]
    stems = [_strip_ext(r) for r in rels]
    # `a.wav` and `a.flac` side by side would share the id `a`: keep the extension for those (still stable).
    counts: dict[str, int] = {}
    for s in stems:
        counts[s] = counts.get(s, 0) + 1
    return [(s if counts[s] == 1 else r, p, {REJECT: f"{p}: {why}"} if why else {})
            for s, r, p, why in zip(stems, rels, paths, reasons)]


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
    try:
        lines = manifest.read_text(encoding="utf-8").split("\n")
    except UnicodeDecodeError as e:
        raise SlamError(f"{manifest}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{manifest}:{n}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            if n == len(lines):  # a last line without its newline: cut by a kill of the writer (`slam synth`)
                continue
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


def find_audio(source: str | os.PathLike, include_unusable: bool = False) -> list[tuple[str, Path, dict]]:
    """(id, path, extra) for every audio file under a folder (recursive, symlinked folders followed) or listed
    in a manifest.jsonl, sorted by id. Missing files listed in a manifest are kept (they become rejects with a
    reason); in a folder, entries named like audio that are not readable files (FIFOs, dangling links, link
    loops, folders named *.wav) are kept only with `include_unusable` (tokenize lists them as rejects). A
    folder holding a manifest.jsonl (what `slam synth` writes) is read through that manifest."""
    source = Path(source)
    if not source.exists():
        raise SlamError(f"audio source {str(source)!r} does not exist")
    if source.is_dir() and (source / "manifest.jsonl").is_file():
        # a `slam synth` folder (or any folder with a manifest): its manifest carries the text, speaker and word
        # times that interleaving needs, and lists only finished utterances
        items = _manifest_items(source / "manifest.jsonl")
    elif source.is_dir():
        items = _folder_items(source, include_unusable)
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
