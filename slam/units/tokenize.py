"""Speech -> a units dataset (see slam.units.dataset): the engine of `slam tokenize AUDIO --tokenizer SPEC --out DIR`.

    slam tokenize corpus/ --tokenizer mel:km.npz --out units/
    slam tokenize corpus/manifest.jsonl --tokenizer hubert:slprl/mhubert-base-25hz@11:km500.bin --out units/
    slam tokenize corpus/ --tokenizer km.npz --out units/ --shard 3/8      # machine 3 of 8, same folder

How it runs:
- mel tokenizer: `--workers` processes each decode, featurise, quantise and dedup whole files (25 FFTs and
  a 25 x K distance block per second: all CPU); the main process only writes shards.
- HuBERT: workers decode and resample; the main process batches similar lengths on the GPU (or CPU) with
  exact per-file masking (slam.units.hubert), so units never depend on the batch.
- Memory stays flat: at most 2 x workers chunks of files are in flight, rows go to disk every
  `--shard-rows` files.
- Nothing lost, nothing twice: shards appear whole (temp + rename) and rejects are fsynced at once; a rerun
  after any crash or kill -9 skips the ids already in a shard or in rejects.jsonl and redoes the rest, so the
  final dataset (rows sorted by id) equals an uninterrupted run's. A folder made by another tokenizer (hash),
  unit count or dedup setting is refused.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from collections import deque
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from slam.audio import EXTENSIONS, REJECT, find_audio, load_audio, load_audio_bytes
from slam.errors import AudioError, SlamError
from slam.lock import lock_beside
from slam.units.dataset import META, REJECTS, UnitsWriter, check_compatible, dedup, read_meta
from slam.units.hf import Entry, LocalHF, is_hf_source, open_hf
from slam.units.kmeans import free_cores
from slam.units.tokenizer import load_tokenizer
from slam.utils import die_with_parent, format_duration

CHUNK_FILES = 8  # files per worker task: amortises inter-process overhead (~0.2 ms a task) over ~8 files


def parse_shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise SlamError(f"--shard {text!r}: expected i/n, e.g. 0/4") from None
    if not 0 <= i < n:
        raise SlamError(f"--shard {text!r}: need 0 <= i < n")
    return i, n


# --- work done in worker processes (or inline with --workers 1) ---------------------------------------
_TOK: Any = None
_DEDUP = True


def _init_worker(parent: int) -> None:
    die_with_parent(parent)  # a killed `slam tokenize` leaves no worker behind, and none prints a traceback
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent handles it
    torch.set_num_threads(1)  # one process per core; threads inside would only fight over the cores


def _load_worker(spec: dict, do_dedup: bool, parent: int) -> None:
    """Spawn start (no fork on this OS): load the tokenizer in the worker."""
    _init_worker(parent)
    _set_tokenizer(load_tokenizer(spec, device="cpu"), do_dedup)


def _set_tokenizer(tok: Any, do_dedup: bool) -> None:
    """Set before the pool forks: workers inherit the loaded tokenizer instead of loading it again."""
    global _TOK, _DEDUP
    _TOK, _DEDUP = tok, do_dedup


def _reject_short(n: int, min_frames_samples: int) -> str:
    return f"too short: {n} samples at 16 kHz, one frame needs {min_frames_samples}"


def _decode(payload: str | bytes, label: str) -> np.ndarray:
    """A path (decoded through `load_audio`, which tests replace to slow a run down) or encoded bytes (a
    Hugging Face `Audio` cell)."""
    if isinstance(payload, bytes):
        return load_audio_bytes(payload, label)
    return load_audio(payload)


def _mel_chunk(items: list[tuple[str, str | bytes, str]]) -> list[tuple]:
    """Whole files -> ("ok", id, units, durations, seconds) or ("err", id, reason)."""
    out: list[tuple] = []
    hop = _TOK.mel.params.hop_length
    for id_, payload, label in items:
        try:
            wav = _decode(payload, label)
        except AudioError as e:
            out.append(("err", id_, str(e)))
            continue
        if len(wav) < hop:
            out.append(("err", id_, f"{label}: {_reject_short(len(wav), hop)}"))
            continue
        frames = _TOK.kmeans.predict(_TOK.mel(wav))
        units, durs = dedup(frames) if _DEDUP else (frames, np.ones_like(frames))
        out.append(("ok", id_, units.astype(np.uint16), durs.astype(np.uint16), len(wav) / 16000))
    return out


def _decode_chunk(items: list[tuple[str, str | bytes, str]]) -> list[tuple]:
    out: list[tuple] = []
    for id_, payload, label in items:
        try:
            out.append(("ok", id_, _decode(payload, label)))
        except AudioError as e:
            out.append(("err", id_, str(e)))
    return out


def _bounded_map(fn, chunks: list, pool: Any, depth: int) -> Iterator[list]:
    """pool.imap in order, but never more than `depth` chunks submitted ahead: flat memory."""
    if pool is None:
        for c in chunks:
            yield fn(c)
        return
    pending: deque = deque()
    it = iter(chunks)
    for c in it:
        pending.append(pool.apply_async(fn, (c,)))
        if len(pending) >= depth:
            break
    while pending:
        res = pending.popleft().get()
        nxt = next(it, None)
        if nxt is not None:
            pending.append(pool.apply_async(fn, (nxt,)))
        yield res


class _Progress:
    def __init__(self, total: int, desc: str) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, desc=desc, unit="file", dynamic_ncols=True, smoothing=0.1)
        self.t0 = time.perf_counter()
        self.seconds = 0.0
        self.units = 0
        self.frames = 0
        self.ok = 0
        self.rejects = 0

    def update(self, n_files: int) -> None:
        elapsed = max(time.perf_counter() - self.t0, 1e-9)
        self.bar.set_postfix_str(f"{self.seconds / elapsed:,.0f}x realtime, {self.rejects} rejected",
                                 refresh=False)
        self.bar.update(n_files)

    def close(self) -> float:
        self.bar.close()
        return time.perf_counter() - self.t0


def _emit(writer: UnitsWriter, prog: _Progress, res: tuple, extra: dict, source: str) -> None:
    if res[0] == "err":
        writer.reject(res[1], source, res[2])
        prog.rejects += 1
        return
    _, id_, units, durs, seconds = res
    writer.add(id_, units, durs, seconds, source, **extra)
    prog.ok += 1
    prog.seconds += seconds
    prog.units += len(units)
    prog.frames += int(np.sum(durs, dtype=np.int64))


class _Files:
    """Audio files of a folder, manifest or single file (slam.audio.find_audio) as Entries."""

    def __init__(self, audio: str | Path) -> None:
        self.label = str(audio)
        self.items = find_audio(audio, include_unusable=True)
        if not self.items:
            raise SlamError(f"{audio}: holds no audio files ({', '.join(e[1:] for e in EXTENSIONS)}, searched "
                            f"recursively) and no manifest.jsonl; nothing to tokenize")

    def __len__(self) -> int:
        return len(self.items)

    def ids(self, shard: tuple[int, int]) -> list[str]:
        return [i for i, _, _ in self.items[shard[0]::shard[1]]]

    def entries(self, shard: tuple[int, int], skip: Any) -> Iterator[Entry]:
        for id_, path, extra in self.items[shard[0]::shard[1]]:
            if skip(id_):
                continue
            extra = dict(extra)
            error = extra.pop(REJECT, None)
            yield Entry(id_, str(path), path, extra, error)


def open_audio_source(audio: str | Path, split: str | None = None, audio_column: str | None = None,
                      text_column: str | None = None, speaker_column: str | None = None) -> Any:
    """What `slam tokenize AUDIO` reads: a Hugging Face dataset (slam.units.hf: a save_to_disk or parquet
    folder, or `hf:ORG/NAME`) or audio files (a folder, a manifest.jsonl, one file). Refuses an input with
    nothing to tokenize."""
    if is_hf_source(audio):
        src = open_hf(audio, split, audio_column, text_column, speaker_column)
        if isinstance(src, LocalHF) and not len(src):
            raise SlamError(f"{audio}: the dataset holds no rows; nothing to tokenize")
        return src
    if split is not None or audio_column is not None:
        raise SlamError(f"--split / --audio-column: {audio} is not a Hugging Face dataset folder (no state.json, "
                        f"dataset_dict.json, *.arrow or *.parquet) nor hf:ORG/NAME")
    return _Files(audio)


def tokenize_audio(audio: str | Path, tokenizer: str, out: str | Path, *, dedup_units: bool = True,
                   shard: str = "0/1", workers: int | None = None, batch_size: int | None = None,
                   device: str | None = None, compile: bool = False, shard_rows: int = 2048,
                   flush_seconds: float = 30.0, split: str | None = None, audio_column: str | None = None,
                   text_column: str | None = None, speaker_column: str | None = None) -> dict[str, Any]:
    """Tokenize every audio file of `audio` (a folder, manifest or Hugging Face dataset, see
    `open_audio_source`) into the units dataset `out` (resumable, see the module docstring); prints a
    one-paragraph summary and returns the dataset's meta. Finished rows reach disk every `shard_rows` files
    or every `flush_seconds` of work, whichever comes first, so a kill loses at most that much."""
    shard_i, shard_n = parse_shard(shard)
    if flush_seconds < 0:
        raise SlamError(f"--flush-seconds {flush_seconds}: must be >= 0")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SlamError(f"--out {out}: is a file; give a folder for the units dataset (created, or resumed)")
    workers = workers if workers is not None else (os.cpu_count() or 1)
    source = open_audio_source(audio, split, audio_column, text_column, speaker_column)
    if isinstance(source, _Files) and (Path(audio) / "manifest.jsonl").is_file() and Path(audio).is_dir():
        print(f"reading {Path(audio) / 'manifest.jsonl'} (text, speakers and word times of each utterance)")
    tok = load_tokenizer(tokenizer, device=device, compile=compile)
    do_dedup = dedup_units
    meta = {"tokenizer_hash": tok.hash, "n_units": tok.n_units, "frame_rate": tok.frame_rate,
            "dedup": do_dedup, "sample_rate": tok.sample_rate, "tokenizer_kind": tok.kind}
    if (out / META).exists():
        check_compatible(read_meta(out), meta, out)  # before touching anything in the folder
    tag = f"{shard_i:03d}of{shard_n:03d}"
    # One writer per shard of the folder (shards on other machines write beside it on purpose); held until
    # this process ends (the kernel releases it even on kill -9).
    held = lock_beside(out / f".shard-{tag}", f"tokenize --shard {shard_i}/{shard_n}")
    try:
        return _tokenize_shard(out, tag, source, tok, meta, audio, do_dedup, workers, batch_size, shard_rows,
                               flush_seconds, (shard_i, shard_n))
    finally:
        held.release()


def _tokenize_shard(out: Path, tag: str, source: Any, tok: Any, meta: dict, audio: Any, do_dedup: bool,
                    workers: int, batch_size: int | None, shard_rows: int, flush_seconds: float,
                    shard: tuple[int, int]) -> dict[str, Any]:
    shard_i, shard_n = shard
    # The dataset embeds its tokenizer: meta["tokenizer"] + root=out loads the very same units back.
    meta["tokenizer"] = tok.save_to(out)
    meta["audio"] = str(audio)
    for stale in out.glob(f".part-{tag}-*.tmp"):  # a shard half-written when a previous run was killed
        stale.unlink(missing_ok=True)
    writer = UnitsWriter(out, meta, shard_tag=tag, rows_per_shard=max(1, shard_rows))
    mine = source.ids((shard_i, shard_n))  # None: a streamed hub dataset, its length unknown
    skipped = sum(1 for i in mine if i in writer.skip) if mine is not None else 0
    extras: dict[str, dict] = {}
    sources: dict[str, str] = {}
    workers = max(1, int(workers))
    prog = _Progress(len(mine) - skipped if mine is not None else None, f"tokenize ({tok.kind})")
    last_flush = [time.monotonic()]

    def chunks() -> Iterator[list[tuple[str, str | bytes, str]]]:
        """Chunks of CHUNK_FILES readable entries; ones known bad while listing become rejects here."""
        chunk: list[tuple[str, str | bytes, str]] = []
        for e in source.entries((shard_i, shard_n), lambda i: i in writer.skip):
            if e.error is not None or e.payload is None:
                writer.reject(e.id, e.source, e.error or f"{e.source}: no audio")
                prog.rejects += 1
                prog.update(1)
                continue
            extras[e.id], sources[e.id] = e.extra, e.source
            chunk.append((e.id, e.payload if isinstance(e.payload, bytes) else str(e.payload), e.source))
            if len(chunk) >= CHUNK_FILES:
                yield chunk
                chunk = []
        if chunk:
            yield chunk

    def emit(res: tuple) -> None:
        _emit(writer, prog, res, extras.pop(res[1], {}), sources.pop(res[1], res[1]))
        if time.monotonic() - last_flush[0] >= flush_seconds:
            writer.flush()  # rows reach disk by time too: a kill between two full shards loses <= flush_seconds
            last_flush[0] = time.monotonic()

    # fork: a worker starts in milliseconds (spawn re-imports torch: 3-8 s per worker on a busy 2-core box,
    # longer than the whole run for an hour of audio). Safe as for DataLoader workers: the workers never
    # touch CUDA; mel workers run single-threaded torch CPU ops only, HuBERT decode workers no torch at all.
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    pool = None
    try:
        if tok.kind == "mel":
            # Per-file matrices are small (250 x 80 x K for 10 s): one thread per process, no OpenMP hand-offs,
            # which cost 10x when the cores are shared with other processes.
            torch.set_num_threads(1)
            _set_tokenizer(tok, do_dedup)
            if workers > 1 and (mine is None or len(mine) - skipped > CHUNK_FILES):
                if ctx.get_start_method() == "fork":
                    pool = ctx.Pool(workers, initializer=_init_worker, initargs=(os.getpid(),))
                else:
                    pool = ctx.Pool(workers, initializer=_load_worker, initargs=(tok.spec, do_dedup, os.getpid()))
            for results in _bounded_map(_mel_chunk, chunks(), pool, 2 * workers):
                for res in results:
                    emit(res)
                prog.update(len(results))
        else:
            # decode in workers (leave one core to the forward pass on a CPU-only machine)
            n_dec = workers if tok.hubert.device.type == "cuda" else workers - 1
            if tok.hubert.device.type == "cpu":
                torch.set_num_threads(free_cores())  # OpenMP threads on busy cores spin-wait (see free_cores)
            if n_dec >= 1 and (mine is None or len(mine) - skipped > CHUNK_FILES):
                pool = ctx.Pool(n_dec, initializer=_init_worker, initargs=(os.getpid(),))
            batch_size = batch_size or (16 if tok.hubert.device.type == "cuda" else 1)
            pending: list[tuple[str, np.ndarray]] = []
            group = max(1, batch_size) * 4  # sort-by-length window: 4 batches

            def flush() -> None:
                wavs = [w for _, w in pending]
                for (id_, wav), frames in zip(pending, tok.encode_batch(wavs, batch_size=batch_size)):
                    units, durs = dedup(frames) if do_dedup else (frames, np.ones_like(frames))
                    emit(("ok", id_, units, durs, len(wav) / 16000))
                prog.update(len(pending))
                pending.clear()

            need = tok.hubert.min_samples
            for results in _bounded_map(_decode_chunk, chunks(), pool, 2 * max(1, n_dec)):
                for res in results:
                    if res[0] == "ok" and tok.n_frames(len(res[2])) < 1:
                        res = ("err", res[1], f"{sources[res[1]]}: {_reject_short(len(res[2]), need)}")
                    if res[0] == "err":
                        emit(res)
                        prog.update(1)
                    else:
                        pending.append((res[1], res[2]))
                if len(pending) >= group:
                    flush()
            if pending:
                flush()
    except BaseException:
        writer.flush()  # keep finished rows; a rerun resumes after them
        raise
    finally:
        if pool is not None:
            pool.terminate()
    wall = prog.close()
    writer.close()
    final = read_meta(out)
    hours = prog.seconds / 3600
    xrt = prog.seconds / max(wall, 1e-9)
    rate = prog.units / max(prog.seconds, 1e-9)
    print(f"Tokenized {prog.ok} files ({hours:.2f} h of audio) into {prog.units:,} units "
          f"({rate:.1f} units/s of audio from {prog.frames:,} frames at {tok.frame_rate:g} Hz"
          f"{', deduplicated' if do_dedup else ''}) in {format_duration(wall)}, {xrt:,.0f}x realtime; "
          f"{prog.rejects} rejected{f' (reasons in {out / REJECTS})' if prog.rejects else ''}, "
          f"{skipped} already done. {out} now holds {final['n_utterances']} utterances, "
          f"{final['hours']:.2f} h, {final['n_tokens']:,} units, {final['n_rejected']} rejects "
          f"(tokenizer {tok.kind}, {tok.n_units} units, hash {tok.hash[:12]}).")
    return final
