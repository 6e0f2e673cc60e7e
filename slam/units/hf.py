"""Audio from Hugging Face `datasets` for `slam tokenize` and `slam fit-kmeans`, read with pyarrow alone.

    slam tokenize my_ds/ --tokenizer mel:km.npz --out units/                # Dataset.save_to_disk folder
    slam tokenize my_ds/ --split test --tokenizer mel:km.npz --out units/   # DatasetDict.save_to_disk folder
    slam tokenize hub_snapshot/ --split train ...                           # parquet shards (data/train-*.parquet)
    slam tokenize hf:ORG/NAME --split train ...                             # the hub, streamed (needs slam[datasets])

Local layouts, read without the `datasets` package (pyarrow is already a dependency, so this always works):
- `Dataset.save_to_disk`: `data-XXXXX-of-NNNNN.arrow` (Arrow IPC stream) + `state.json` (`_data_files` in
  order) + `dataset_info.json`; `DatasetDict.save_to_disk`: one such folder per split + `dataset_dict.json`.
- Parquet shards (`push_to_hub` and hub snapshots): `*.parquet` anywhere below the folder; with `--split S`
  only files named `S-*.parquet` / `S.parquet` or inside a folder named S.

The audio column is the one whose feature is `Audio` (the `huggingface` key of the Arrow schema metadata or
dataset_info.json), else one named `audio`; a cell is `{bytes, path}` (HF's storage of `Audio`), raw bytes,
or a path (relative to the dataset folder). Bytes are decoded in memory at any sample rate
(slam.audio.load_audio_bytes). Optional columns: text (`text`, `transcription`, `sentence`,
`normalized_text`) and speaker (`speaker`, `speaker_id`, `client_id`), or named with --text-column /
--speaker-column.

Ids are the row index, zero-padded to 9 digits (an `id` column is used instead when it is a unique string
column), so a rerun skips the rows already in the units dataset or its rejects, exactly as for folders; a
streamed hub dataset resumes by skipping the contiguous prefix of rows already done without downloading
their audio. Audio is read one row group / record batch at a time, so memory stays flat.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.parquet as pq

from slam.audio import EXTENSIONS
from slam.errors import SlamError

HUB_PREFIX = "hf:"
TEXT_COLUMNS = ("text", "transcription", "sentence", "normalized_text")
SPEAKER_COLUMNS = ("speaker", "speaker_id", "client_id")
ID_DIGITS = 9


def is_hf_source(source: str | os.PathLike) -> bool:
    """A hub id (`hf:ORG/NAME`) or a folder in one of the module docstring's layouts."""
    s = str(source)
    if s.startswith(HUB_PREFIX):
        return True
    p = Path(s)
    if not p.is_dir() or (p / "meta.json").exists():  # a units dataset is parquet too: never audio
        return False
    if (p / "state.json").is_file() or (p / "dataset_dict.json").is_file() or any(p.glob("*.arrow")):
        return True
    # parquet shards, unless audio files sit beside them (then it is an audio folder holding other things)
    return any(p.rglob("*.parquet")) and not any(f.suffix.lower() in EXTENSIONS for f in p.rglob("*"))


@dataclass
class Entry:
    """One row: its id, where it came from (for rejects and the `source` column), and either the encoded
    audio (bytes), a local path, or why it cannot be read."""

    id: str
    source: str
    payload: bytes | Path | None
    extra: dict = field(default_factory=dict)
    error: str | None = None


# --- schema -------------------------------------------------------------------------------------------------
def _features(schema: pa.Schema, info_file: Path | None) -> dict:
    meta = (schema.metadata or {}).get(b"huggingface")
    if meta:
        try:
            return json.loads(meta).get("info", {}).get("features", {}) or {}
        except (ValueError, AttributeError):
            pass
    if info_file is not None and info_file.is_file():
        try:
            return json.loads(info_file.read_text()).get("features", {}) or {}
        except (ValueError, OSError, AttributeError):
            pass
    return {}


def _pick_columns(schema: pa.Schema, features: dict, where: str, audio_column: str | None,
                  text_column: str | None, speaker_column: str | None) -> tuple[str, str | None, str | None, bool]:
    names = list(schema.names)
    for flag, col in (("--audio-column", audio_column), ("--text-column", text_column),
                      ("--speaker-column", speaker_column)):
        if col is not None and col not in names:
            raise SlamError(f"{flag} {col}: {where} has no such column (it has {', '.join(names)})")
    if audio_column is None:
        typed = [n for n in names if isinstance(features.get(n), dict) and features[n].get("_type") == "Audio"]
        structs = [n for n in names if pa.types.is_struct(schema.field(n).type)
                   and {"bytes", "path"} <= {f.name for f in schema.field(n).type}]
        audio_column = (typed or (["audio"] if "audio" in names else []) or structs or [None])[0]
    if audio_column is None:
        raise SlamError(f"{where} holds no audio column (columns: {', '.join(names)}); name it with "
                        f"--audio-column")
    text_column = text_column or next((c for c in TEXT_COLUMNS if c in names), None)
    speaker_column = speaker_column or next((c for c in SPEAKER_COLUMNS if c in names), None)
    use_id = "id" in names and pa.types.is_string(schema.field("id").type)
    return audio_column, text_column, speaker_column, use_id


# --- local folders ------------------------------------------------------------------------------------------
class _Part:
    """One file of the dataset, read a record batch / row group at a time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        if path.suffix == ".parquet":
            self.pf = pq.ParquetFile(path)
            self.schema = self.pf.schema_arrow
            self.num_rows = self.pf.metadata.num_rows
            self.group_rows = [self.pf.metadata.row_group(i).num_rows for i in range(self.pf.num_row_groups)]
            self.table = None
            self._group: tuple[int, str, Any] | None = None  # the last row group read: rows arrive in order
        else:
            # save_to_disk writes the Arrow IPC *stream* format; a memory map reads it without copying
            src = pa.memory_map(str(path))
            try:
                self.table = pa.ipc.open_stream(src).read_all()
            except pa.ArrowInvalid:
                self.table = pa.ipc.open_file(pa.memory_map(str(path))).read_all()
            self.schema = self.table.schema
            self.num_rows = self.table.num_rows
            self.pf = None

    def columns(self, names: list[str]) -> dict[str, list]:
        if self.table is not None:
            return {n: self.table.column(n).to_pylist() for n in names}
        t = self.pf.read(columns=names)
        return {n: t.column(n).to_pylist() for n in names}

    def audio(self, column: str, rows: list[int]) -> dict[int, Any]:
        """Cells of `column` for the local `rows` (ascending), reading only the row groups they fall in."""
        if self.table is not None:
            col = self.table.column(column)
            return {r: col[r].as_py() for r in rows}
        out: dict[int, Any] = {}
        start, g = 0, 0
        want = iter(rows)
        r = next(want, None)
        for g, n in enumerate(self.group_rows):
            if r is None:
                break
            if r < start + n:
                if self._group is None or self._group[:2] != (g, column):
                    self._group = (g, column, self.pf.read_row_group(g, columns=[column]).column(column))
                cells = self._group[2]
                while r is not None and r < start + n:
                    out[r] = cells[r - start].as_py()
                    r = next(want, None)
            start += n
        return out


def _split_files(folder: Path, split: str | None) -> tuple[list[Path], Path, str]:
    """The data files of the chosen split, in order, and the folder paths in the dataset are relative to."""
    if (folder / "dataset_dict.json").is_file():
        try:
            splits = json.loads((folder / "dataset_dict.json").read_text())["splits"]
        except (ValueError, KeyError, OSError):
            raise SlamError(f"{folder / 'dataset_dict.json'}: not a datasets DatasetDict file (no `splits`)") from None
        if split is None:
            if len(splits) != 1:
                raise SlamError(f"{folder}: a DatasetDict with splits {', '.join(splits)}; choose one with --split")
            split = splits[0]
        if split not in splits:
            raise SlamError(f"--split {split}: {folder} has splits {', '.join(splits)}")
        return _split_files(folder / split, None)[0], folder / split, split
    if (folder / "state.json").is_file():
        try:
            names = [d["filename"] for d in json.loads((folder / "state.json").read_text())["_data_files"]]
        except (ValueError, KeyError, TypeError, OSError):
            raise SlamError(f"{folder / 'state.json'}: not a datasets save_to_disk state (no `_data_files`)") from None
        files = [folder / n for n in names]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise SlamError(f"{folder}: state.json lists {', '.join(missing)}, which is missing")
        return files, folder, split or ""
    arrows = sorted(folder.glob("*.arrow"))
    if arrows:
        return arrows, folder, split or ""
    files = sorted(folder.rglob("*.parquet"))
    if split is not None:
        files = [f for f in files if f.name.startswith(f"{split}-") or f.stem == split
                 or split in f.relative_to(folder).parts[:-1]]
        if not files:
            raise SlamError(f"--split {split}: no parquet file of that split under {folder} (expected "
                            f"{split}-*.parquet or a folder named {split})")
    return files, folder, split or ""


class LocalHF:
    def __init__(self, folder: Path, split: str | None, audio_column: str | None, text_column: str | None,
                 speaker_column: str | None) -> None:
        files, self.root, self.split = _split_files(folder, split)
        self.label = str(folder)
        try:
            self.parts = [_Part(f) for f in files]
        except (pa.ArrowException, OSError) as e:
            raise SlamError(f"{folder}: unreadable dataset file ({e})") from None
        if not self.parts:
            raise SlamError(f"{folder}: no data files")
        schema = self.parts[0].schema
        for p in self.parts[1:]:
            if p.schema.names != schema.names:
                raise SlamError(f"{p.path}: columns {p.schema.names} differ from {self.parts[0].path}'s")
        features = _features(schema, self.root / "dataset_info.json")
        self.audio_column, text, speaker, use_id = _pick_columns(schema, features, str(folder), audio_column,
                                                                 text_column, speaker_column)
        cols = [c for c in (text, speaker, "id" if use_id else None) if c]
        self.rows: list[tuple[int, int, str, dict]] = []  # (part, local row, id, extra)
        g = 0
        for k, part in enumerate(self.parts):
            data = part.columns(cols) if cols else {}
            for r in range(part.num_rows):
                extra = {}
                if text and data[text][r] is not None:
                    extra["text"] = str(data[text][r])
                if speaker and data[speaker][r] is not None:
                    extra["speaker"] = str(data[speaker][r])
                id_ = data["id"][r] if use_id else None
                self.rows.append((k, r, id_ if id_ else f"{g:0{ID_DIGITS}d}", extra))
                g += 1
        ids = [r[2] for r in self.rows]
        if use_id and len(set(ids)) != len(ids):  # ids must be unique: fall back to the row index
            self.rows = [(k, r, f"{i:0{ID_DIGITS}d}", e) for i, (k, r, _, e) in enumerate(self.rows)]

    def __len__(self) -> int:
        return len(self.rows)

    def ids(self, shard: tuple[int, int]) -> list[str] | None:
        return [row[2] for row in self.rows[shard[0]::shard[1]]]

    def entry(self, i: int) -> Entry:
        """Row i with its audio (random access, e.g. fit-kmeans' seeded sample of rows)."""
        k, r, id_, extra = self.rows[i]
        return self._entry(id_, f"{self.parts[k].path}#{r}", self.parts[k].audio(self.audio_column, [r])[r], extra)

    def entries(self, shard: tuple[int, int], skip: Callable[[str], bool], batch: int = 64) -> Iterator[Entry]:
        """Rows of this shard (every n-th row from i) not skipped, with their audio, in row order."""
        mine = [row for row in self.rows[shard[0]::shard[1]] if not skip(row[2])]
        for s in range(0, len(mine), batch):
            block = mine[s:s + batch]
            by_part: dict[int, list[int]] = {}
            for k, r, _, _ in block:
                by_part.setdefault(k, []).append(r)
            cells = {k: self.parts[k].audio(self.audio_column, rows) for k, rows in by_part.items()}
            for k, r, id_, extra in block:
                yield self._entry(id_, f"{self.parts[k].path}#{r}", cells[k][r], extra)

    def _entry(self, id_: str, source: str, cell: Any, extra: dict) -> Entry:
        return cell_entry(id_, source, cell, extra, self.root)


def cell_entry(id_: str, source: str, cell: Any, extra: dict, root: Path | None) -> Entry:
    """An `Audio` cell ({bytes, path}, bytes or a path) -> an Entry."""
    data, path = None, None
    if isinstance(cell, dict):
        data, path = cell.get("bytes"), cell.get("path")
    elif isinstance(cell, (bytes, bytearray)):
        data = cell
    elif isinstance(cell, str):
        path = cell
    elif cell is not None:
        return Entry(id_, source, None, extra, f"{source}: audio cell of unsupported type {type(cell).__name__}")
    if data:
        return Entry(id_, source, bytes(data), extra)
    if path:
        p = Path(path)
        if not p.is_absolute() and root is not None:
            p = root / p
        return Entry(id_, str(p), p, extra)
    return Entry(id_, source, None, extra, f"{source}: no audio (neither bytes nor a path)")


# --- the hub, streamed --------------------------------------------------------------------------------------
def hub_offline_reason() -> str | None:
    """Why the hub cannot be reached now (None when it can): HF_HUB_OFFLINE / HF_DATASETS_OFFLINE, or no
    network (a 5 s probe)."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return f"{var} is set"
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((url.hostname or "huggingface.co", url.port or 443), timeout=5).close()
    except OSError as e:  # no DNS, no route, refused: the same to the user, no hub now
        return f"the hub is unreachable ({e.strerror or type(e).__name__})"
    return None


class HubHF:
    def __init__(self, name: str, split: str | None, audio_column: str | None, text_column: str | None,
                 speaker_column: str | None) -> None:
        repo = name[len(HUB_PREFIX):]
        self.label = name
        why = hub_offline_reason()
        if why:
            raise SlamError(f"{name}: a hub dataset needs the network ({why}); save it with "
                            f"`datasets.load_dataset(...).save_to_disk(DIR)` where there is one and tokenize DIR")
        try:
            import datasets  # optional extra: only this path needs it
        except ImportError:
            raise SlamError(f"{name}: streaming a hub dataset needs the `datasets` package: "
                            f"pip install 'slam[datasets]'") from None
        repo, _, config = repo.partition(":")
        try:
            ds = datasets.load_dataset(repo, config or None, split=split or "train", streaming=True)
        except Exception as e:  # the hub's own errors (no such repo, split, gated): one line
            raise SlamError(f"{name}: cannot open split {split or 'train'} ({type(e).__name__}: {e})") from None
        features = {k: {"_type": type(v).__name__} for k, v in (ds.features or {}).items()}
        schema = pa.schema([(k, pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
                            if features[k]["_type"] == "Audio" else (k, pa.string()) for k in features])
        self.audio_column, self.text, self.speaker, _ = _pick_columns(schema, features, name, audio_column,
                                                                     text_column, speaker_column)
        self.ds = ds.cast_column(self.audio_column, datasets.Audio(decode=False))
        self.split = split or "train"

    def __len__(self) -> int:
        return 0  # unknown until streamed

    def ids(self, shard: tuple[int, int]) -> list[str] | None:
        return None  # unknown until streamed

    def entries(self, shard: tuple[int, int], skip: Callable[[str], bool], batch: int = 64) -> Iterator[Entry]:
        start = 0
        while skip(f"{start:0{ID_DIGITS}d}"):  # resume: the contiguous prefix already done is never downloaded
            start += 1
        for i, row in enumerate(self.ds.skip(start), start):
            id_ = f"{i:0{ID_DIGITS}d}"
            if i % shard[1] != shard[0] or skip(id_):
                continue
            extra = {}
            if self.text and row.get(self.text) is not None:
                extra["text"] = str(row[self.text])
            if self.speaker and row.get(self.speaker) is not None:
                extra["speaker"] = str(row[self.speaker])
            yield cell_entry(id_, f"{self.label}/{self.split}#{i}", row.get(self.audio_column), extra, None)


def open_hf(source: str | os.PathLike, split: str | None = None, audio_column: str | None = None,
            text_column: str | None = None, speaker_column: str | None = None) -> LocalHF | HubHF:
    s = str(source)
    if s.startswith(HUB_PREFIX):
        return HubHF(s, split, audio_column, text_column, speaker_column)
    return LocalHF(Path(s), split, audio_column, text_column, speaker_column)
