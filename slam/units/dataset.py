"""The units dataset: a folder of `part-*.parquet` shards + `meta.json` + `rejects.jsonl`.

Columns: id (str), units (list<uint16>), durations (list<uint16>, frames per unit; all 1 without dedup),
seconds (float), source (str), optional text (str), speaker (str), words (list<struct<word,start,end>>).
Plain parquet, so pyarrow and HF `datasets` read it without slam.

Crash safety: rows are buffered and written as whole shards (temp file + rename), so a kill loses at most the
buffer, which the next run redoes; ids already in a shard or in rejects.jsonl are skipped on resume. A shard
name carries the writer's `--shard i/n` tag, so several machines can fill one folder without clashing.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from slam.errors import SlamError
from slam.utils import atomic_write_json, read_jsonl

META = "meta.json"
REJECTS = "rejects.jsonl"

WORD = pa.struct([("word", pa.string()), ("start", pa.float32()), ("end", pa.float32())])
SCHEMA = pa.schema([
    ("id", pa.string()),
    ("units", pa.list_(pa.uint16())),
    ("durations", pa.list_(pa.uint16())),
    ("seconds", pa.float32()),
    ("source", pa.string()),
    ("text", pa.string()),
    ("speaker", pa.string()),
    ("words", pa.list_(WORD)),
])


def dedup(frames: Any) -> tuple[np.ndarray, np.ndarray]:
    """Collapse consecutive repeats: [5,5,5,2,2,7] -> units [5,2,7], durations [3,2,1]."""
    f = np.asarray(frames)
    if f.size == 0:
        return f.astype(np.int64), np.zeros(0, dtype=np.int64)
    starts = np.flatnonzero(np.r_[True, f[1:] != f[:-1]])
    durations = np.diff(np.r_[starts, f.size])
    return f[starts].astype(np.int64), durations.astype(np.int64)


def read_meta(folder: str | Path) -> dict:
    path = Path(folder) / META
    if not path.exists():
        raise SlamError(f"{folder}: not a units dataset ({META} is missing)")
    return json.loads(path.read_text())


def shard_files(folder: str | Path) -> list[Path]:
    return sorted(Path(folder).glob("part-*.parquet"))


def read_rejects(folder: str | Path) -> list[dict]:
    return read_jsonl(Path(folder) / REJECTS)


def load_table(folder: str | Path, columns: list[str] | None = None) -> pa.Table:
    """All shards as one table, sorted by id (so the order never depends on workers or resumes)."""
    files = shard_files(folder)
    read_meta(folder)
    if not files:
        return SCHEMA.empty_table() if columns is None else SCHEMA.empty_table().select(columns)
    cols = None if columns is None else list(dict.fromkeys(["id", *columns]))
    tables = [pq.read_table(f, columns=cols, schema=SCHEMA) for f in files]
    table = pa.concat_tables(tables)
    table = table.sort_by("id")
    return table if columns is None else table.select(columns)


def iter_rows(folder: str | Path, columns: list[str] | None = None) -> Iterator[dict]:
    """Rows as dicts with numpy int64 `units`/`durations`, in id order."""
    table = load_table(folder, columns)
    for batch in table.to_batches(max_chunksize=4096):
        for row in batch.to_pylist():
            for key in ("units", "durations"):
                if key in row and row[key] is not None:
                    row[key] = np.asarray(row[key], dtype=np.int64)
            yield row


def existing_ids(folder: str | Path) -> set[str]:
    """Ids already written (in a shard) or rejected: what a resumed run must not redo."""
    ids: set[str] = set()
    for f in shard_files(folder):
        ids.update(pq.read_table(f, columns=["id"]).column("id").to_pylist())
    ids.update(r["id"] for r in read_rejects(folder) if "id" in r)
    return ids


def check_compatible(meta: dict, new: dict, folder: str | Path) -> None:
    """Refuse to mix units of different tokenizers (or dedup settings) in one dataset."""
    for key in ("tokenizer_hash", "n_units", "dedup"):
        if key in meta and key in new and meta[key] != new[key]:
            raise SlamError(
                f"{folder} was written with {key}={meta[key]!r}, this run has {key}={new[key]!r}; "
                f"write into a new folder (units from different tokenizers must never be mixed)")


@dataclass
class UnitsWriter:
    """Buffered, resumable shard writer. Use as a context manager; `skip` tells which ids are done."""

    folder: Path
    meta: dict
    shard_tag: str = "0000"
    rows_per_shard: int = 2048

    def __post_init__(self) -> None:
        self.folder = Path(self.folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        meta_path = self.folder / META
        if meta_path.exists():
            check_compatible(json.loads(meta_path.read_text()), self.meta, self.folder)
        else:
            atomic_write_json(meta_path, self.meta)
        self.skip = existing_ids(self.folder)
        seqs = [int(f.stem.rsplit("-", 1)[1]) for f in self.folder.glob(f"part-{self.shard_tag}-*.parquet")]
        self._seq = max(seqs, default=-1) + 1
        self._rows: list[dict] = []
        self.n_written = 0
        self.n_rejected = 0

    def add(self, id: str, units: Any, durations: Any, seconds: float, source: str, **extra: Any) -> None:
        units = np.asarray(units)
        if units.size and (units.min() < 0 or units.max() > 65535):
            raise ValueError(f"{id}: units out of uint16 range")
        row = {"id": id, "units": units.astype(np.uint16), "durations": np.asarray(durations).astype(np.uint16),
               "seconds": float(seconds), "source": source, "text": extra.get("text"),
               "speaker": extra.get("speaker"), "words": extra.get("words")}
        self._rows.append(row)
        self.skip.add(id)
        if len(self._rows) >= self.rows_per_shard:
            self.flush()

    def reject(self, id: str, source: str, reason: str) -> None:
        """Record a failed input (appended and fsynced at once, so a kill cannot lose the record)."""
        with open(self.folder / REJECTS, "a") as f:
            f.write(json.dumps({"id": id, "source": source, "reason": reason}) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.skip.add(id)
        self.n_rejected += 1

    def flush(self) -> None:
        if not self._rows:
            return
        cols = {name: [r[name] for r in self._rows] for name in SCHEMA.names}
        table = pa.table({
            "id": pa.array(cols["id"], pa.string()),
            "units": pa.array([u.tolist() for u in cols["units"]], pa.list_(pa.uint16())),
            "durations": pa.array([d.tolist() for d in cols["durations"]], pa.list_(pa.uint16())),
            "seconds": pa.array(cols["seconds"], pa.float32()),
            "source": pa.array(cols["source"], pa.string()),
            "text": pa.array(cols["text"], pa.string()),
            "speaker": pa.array(cols["speaker"], pa.string()),
            "words": pa.array(cols["words"], pa.list_(WORD)),
        }, schema=SCHEMA)
        final = self.folder / f"part-{self.shard_tag}-{self._seq:05d}.parquet"
        tmp = final.with_name(f".{final.name}.tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, final)
        self._seq += 1
        self.n_written += len(self._rows)
        self._rows = []

    def close(self, update_meta: dict | None = None) -> None:
        """Flush and refresh the counts in meta.json from what is on disk."""
        self.flush()
        meta = json.loads((self.folder / META).read_text())
        meta.update(update_meta or {})
        table = load_table(self.folder, ["seconds", "units"])
        meta["n_utterances"] = table.num_rows
        meta["n_tokens"] = int(pc.sum(pc.list_value_length(table.column("units"))).as_py() or 0)
        meta["hours"] = float(pc.sum(table.column("seconds")).as_py() or 0.0) / 3600
        meta["n_rejected"] = len(read_rejects(self.folder))
        atomic_write_json(self.folder / META, meta)

    def __enter__(self) -> "UnitsWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.flush()  # keep finished rows; a rerun resumes after them
