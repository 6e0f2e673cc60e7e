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

Environment errors are not rejects: a full disk, an I/O error, too many open files (any OSError), memory
exhaustion or a worker process that dies stop the whole job with one line saying what happened, and the
utterance is recorded nowhere, so the rerun (after freeing space, ...) retries everything not written.
Reject rows that earlier versions wrote for such errors (reason "OSError: ...") are retried too. A reject
is only what the text/voice itself caused (empty text, no audio, a backend refusing the text).

Workers are spawned processes that the kernel kills when the parent dies (PR_SET_PDEATHSIG) and that
ignore Ctrl-C (the parent stops them): after a kill nothing keeps running and nothing prints a traceback.
"""

from __future__ import annotations

import collections
import importlib
import inspect
import io
import json
import multiprocessing as mp
import os
import re
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from multiprocessing.connection import wait as wait_for
from typing import Any, Iterable, Protocol

import numpy as np
import soundfile as sf
from tqdm import tqdm

from slam.errors import EnvironmentFailure, MissingDependencyError, SlamError
from slam.lock import lock_output
from slam.utils import atomic_write_bytes, atomic_write_text, die_with_parent, format_duration

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
        obj = getattr(importlib.import_module(module), cls)
    except (ImportError, AttributeError) as e:
        raise SlamError(f"cannot load TTS backend {spec!r}: {e}") from e
    # only a class that looks like a backend is ever called: `os:system` or any other function is refused
    # before it could run
    if not inspect.isclass(obj) or not callable(getattr(obj, "synthesize", None)):
        raise SlamError(f"--backend {spec!r}: not a TTS backend class (a class with synthesize(text, voice) and "
                        f"default_voices)")
    try:
        backend = obj()
    except MissingDependencyError:
        raise
    except Exception as e:  # a third-party backend's own failure, in one line
        raise SlamError(f"cannot start TTS backend {spec!r}: {type(e).__name__}: {e}") from None
    if not getattr(backend, "default_voices", None):
        raise SlamError(f"--backend {spec!r}: the backend names no default_voices")
    return backend


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
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        raise SlamError(f"{path}:{line}: not UTF-8 text (byte {e.object[e.start]:#x}); save the file as UTF-8") from None
    if path.suffix == ".jsonl":
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                items.append(Utterance(str(row["id"]), str(row["text"]),
                                      str(row.get("voice") or voices[(n - 1) % len(voices)])))
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise SlamError(f"{path}:{n}: expected a JSON object with id and text ({e})") from e
    else:
        for n, line in enumerate(lines, 1):
            if line.strip():
                items.append(Utterance(f"{n:07d}", line.strip(), voices[(n - 1) % len(voices)]))
    return items


# ---- worker side ----------------------------------------------------------------------------------------

_backend: TTSBackend | None = None


def _init_worker(backend: str) -> None:
    global _backend
    _backend = load_backend(backend)


def _is_environment_error(e: BaseException) -> bool:
    """Errors of the machine, not of the utterance: any OSError (ENOSPC, EIO, EMFILE, EACCES on the output,
    a dead helper process: ChildProcessError) or MemoryError."""
    return isinstance(e, (OSError, MemoryError))


def _speak(job: tuple[Utterance, str]) -> dict:
    """Synthesise one utterance and write its wav; returns its manifest row, its reject row, or for an
    environment error a row with "fatal" (never written anywhere: the job stops and a rerun retries it)."""
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
        try:
            atomic_write_bytes(Path(out_dir) / rel, buf.getvalue())
        except OSError as e:  # a write error names no file by itself: name the wav
            raise OSError(e.errno, e.strerror, str(Path(out_dir) / rel)) from None
        return {"id": u.id, "audio": rel, "text": u.text, "voice": u.voice, "seconds": round(wav.size / SAMPLE_RATE, 4),
                "words": [[w, s, e] for w, s, e in words]}
    except Exception as e:  # noqa: BLE001 - one utterance's failure is a reject, the machine's stops the job
        reason = f"{type(e).__name__}: {e}"
        if _is_environment_error(e):
            return {"id": u.id, "fatal": reason}
        return {"id": u.id, "text": u.text, "voice": u.voice, "reason": reason}


def _worker_main(conn: Any, backend: str, parent: int) -> None:
    """A spawned worker: batches of jobs in, one row per job out, until None or the parent is gone."""
    die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent handles it
    try:
        _init_worker(backend)
        while (batch := conn.recv()) is not None:
            for job in batch:
                conn.send(_speak(job))
    except BaseException:  # noqa: BLE001 - the parent went away (EOF, broken pipe): end quietly
        pass
    os._exit(0)


class _Workers:
    """`n` spawned worker processes fed batches of `batch` jobs, at most two batches outstanding each (one
    being spoken, one queued: a worker never waits for the parent). Yields rows as they come; a worker that
    dies is an environment error. `close()` ends them all, at once if need be."""

    def __init__(self, n: int, backend: str, batch: int = 4) -> None:
        ctx = mp.get_context("spawn")
        self.batch, self.procs, self.conns, self.pending = batch, [], [], []
        for _ in range(n):
            mine, theirs = ctx.Pipe()
            p = ctx.Process(target=_worker_main, args=(theirs, backend, os.getpid()), daemon=True)
            p.start()
            theirs.close()
            self.procs.append(p)
            self.conns.append(mine)
            self.pending.append(0)

    def run(self, jobs: list) -> Iterable[dict]:
        queue = collections.deque(jobs)

        def feed(i: int) -> None:
            while self.pending[i] < 2 * self.batch and queue:
                part = [queue.popleft() for _ in range(min(self.batch, len(queue)))]
                self.pending[i] += len(part)
                try:
                    self.conns[i].send(part)
                except OSError:  # broken pipe: the worker is gone
                    raise self._dead(i) from None

        for i in range(len(self.procs)):
            feed(i)
        while any(self.pending):
            busy = [i for i, n in enumerate(self.pending) if n]
            ready = wait_for([self.conns[i] for i in busy] + [self.procs[i].sentinel for i in busy])
            for i in busy:
                while self.pending[i] and self.conns[i].poll():
                    try:
                        row = self.conns[i].recv()
                    except (EOFError, OSError):  # a closed pipe polls as readable: the worker is gone
                        raise self._dead(i) from None
                    self.pending[i] -= 1
                    yield row
                if self.pending[i] and self.procs[i].sentinel in ready and not self.conns[i].poll():
                    raise self._dead(i)
                feed(i)

    def _dead(self, i: int) -> EnvironmentFailure:
        self.procs[i].join(1)
        code = self.procs[i].exitcode
        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        return EnvironmentFailure(f"stopped: synthesis worker process {self.procs[i].pid} ended ({how}: out of memory "
                         f"or killed?) with {self.pending[i]} utterances in hand; nothing was recorded as "
                         f"rejected for them: rerun the same command, which retries every utterance not written")

    def close(self) -> None:
        for c in self.conns:
            try:
                c.send(None)
            except OSError:
                pass
        deadline = time.time() + 2.0
        for p in self.procs:
            p.join(max(0.0, deadline - time.time()))
        for p in self.procs:
            if p.is_alive():
                p.kill()
                p.join()
        for c in self.conns:
            c.close()


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
    rows = []
    for n, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise SlamError(f"{path}:{n}: not a JSON line ({e}); fix or delete that line") from None
    return rows


def _subclass_names(cls: type) -> set[str]:
    return {cls.__name__}.union(*(_subclass_names(c) for c in cls.__subclasses__()))


# Rejects written by versions that recorded environment errors as rejects ("OSError: [Errno 28] No space
# left on device"): not properties of the text, so they are retried.
_ENV_REASON = re.compile(r"^(%s|BrokenProcessPool)\b" % "|".join(sorted(_subclass_names(OSError) | {"MemoryError"})))


class _Appender:
    """Append-only jsonl writer on an O_APPEND descriptor: every row reaches the kernel at once (a kill
    loses nothing written), a failed write (ENOSPC) leaves at most a cut last line, which the next run's
    `read_jsonl(repair=True)` removes; fsync every second and at the end."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self.last_sync = time.time()

    def write(self, row: dict) -> None:
        view = memoryview((json.dumps(row) + "\n").encode())
        try:
            while view:
                view = view[os.write(self.fd, view):]
        except OSError as e:
            raise OSError(e.errno, e.strerror, str(self.path)) from None

    def sync(self, force: bool = False) -> None:
        if force or time.time() - self.last_sync > 1.0:
            os.fsync(self.fd)
            self.last_sync = time.time()

    def close(self) -> None:
        try:
            os.fsync(self.fd)
        finally:
            os.close(self.fd)


def _stopped(what: str, n_left: int) -> EnvironmentFailure:
    return EnvironmentFailure(f"stopped: {what}; nothing was recorded as rejected for it: fix that (free disk space, "
                     f"raise `ulimit -n`, ...) and rerun the same command, which retries the {n_left} "
                     f"utterances not written")


def synthesize(items: Iterable[Utterance], out_dir: str | Path, backend: str = "espeak", workers: int = 1,
               progress: bool = True) -> dict:
    """Speak `items` into `out_dir` (layout in the module docstring), skipping ids already done; one writer
    per folder (slam.lock: a second process is refused, naming the first). Returns a summary: counts,
    seconds of audio, wall time, x realtime."""
    with lock_output(out_dir, "synth"):
        return _synthesize(items, out_dir, backend, workers, progress)


def _synthesize(items: Iterable[Utterance], out_dir: str | Path, backend: str, workers: int,
                progress: bool) -> dict:
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
    rejects = [r for r in rejects if not _ENV_REASON.match(str(r.get("reason", "")))]
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
            if _is_environment_error(e):
                raise _stopped(f"trying voice {voice!r}: {type(e).__name__}: {e}", len(todo)) from None
            raise SlamError(f"voice {voice!r} does not work with the {backend} backend: {e}") from e

    t0 = time.time()
    n_ok = n_bad = 0
    seconds = 0.0
    jobs = [(u, str(out)) for u in todo]
    man = rej = pool = None
    try:
        man, rej = _Appender(out / MANIFEST), _Appender(out / REJECTS)
        with tqdm(total=len(todo), unit="utt", disable=not progress, desc="synth") as bar:
            if workers <= 1:
                _init_worker(backend)
                results: Iterable[dict] = map(_speak, jobs)
            else:
                # spawn, not fork: the caller may be a process with torch's thread pools running (the demo),
                # which a forked child must not inherit; the start costs ~0.5 s, once. Each worker opens its
                # own engine.
                pool = _Workers(workers, backend)
                results = pool.run(jobs)
            for row in results:
                if "fatal" in row:
                    raise _stopped(f"utterance {row['id']}: {row['fatal']}", len(todo) - n_ok - n_bad)
                (man if "audio" in row else rej).write(row)
                if "audio" in row:
                    n_ok += 1
                    seconds += row["seconds"]
                else:
                    n_bad += 1
                man.sync()
                rej.sync()
                bar.update(1)
                wall = time.time() - t0
                bar.set_postfix_str(f"{seconds / max(wall, 1e-9):.0f}x realtime, {n_bad} rejected", refresh=False)
    except OSError as e:  # the parent's own writes: manifest, rejects, the wavs folder
        raise _stopped(f"{e.filename or out}: {e.strerror or e}", len(todo) - n_ok - n_bad) from None
    finally:
        if pool is not None:
            pool.close()
        for f in (man, rej):
            if f is not None:
                try:
                    f.close()
                except OSError:
                    pass  # already failing (a full disk): the error above is the one to report
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
    with lock_output(out, "synth"):
        summary = _synthesize(items, out, backend, workers, progress)
        return _write_twin(rows, text_jsonl, out, summary)


def _write_twin(rows: list[dict], text_jsonl: Path, out: Path, summary: dict) -> tuple[Path, dict]:
    """OUT/<name of the text file>: the rows with each text replaced by its wav path (the audio twin)."""
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
