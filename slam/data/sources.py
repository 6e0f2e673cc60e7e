"""Document sources: random access to the documents a training run reads, and the held-out split.

A document is an np.int64 array of model ids, already wrapped `<s> ... <s>`. A source gives `len`, the
length of every document up front (`lengths()`, so the packed loader plans an epoch without reading any
document) and `doc(i)`. Units datasets and text files become sources here; interleaved text-speech
documents are built in slam.data.interleave. Held-out membership is a hash of each document id, so the
same utterance is held out whatever the shard layout or dataset order.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Iterable, Iterator, Protocol, Sequence

import numpy as np

from slam.errors import SlamError
from slam.tokens import SlamInfo
from slam.units.dataset import load_table, read_meta

# --- document sources ----------------------------------------------------------------------------------------
class DocumentSource(Protocol):
    """Anything with random access to documents: `len`, `lengths()` (tokens per document) and `doc(i)`."""

    name: str

    def __len__(self) -> int: ...

    def lengths(self) -> np.ndarray: ...

    def doc(self, i: int) -> np.ndarray: ...


def in_val_split(key: str, val_fraction: float) -> bool:
    """Deterministic held-out membership from a hash of the document id (stable across runs and machines,
    unlike Python's `hash`): the same utterance is held out whatever the shard layout or dataset order."""
    if val_fraction <= 0:
        return False
    h = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")
    return h / 2**64 < val_fraction


def val_mask(keys: Sequence[str], val_fraction: float) -> np.ndarray:
    """Held-out membership of every key (in_val_split); when a positive fraction of a small set holds out
    nothing (0.005 of 150 documents), the one key of smallest hash is held out, so validation always has a
    document (and the same one on every run)."""
    val = np.fromiter((in_val_split(k, val_fraction) for k in keys), dtype=bool, count=len(keys))
    if val_fraction > 0 and len(keys) > 1 and not val.any():
        def h(i: int) -> int:  # the same hash as in_val_split: this key is the closest to being held out
            return int.from_bytes(hashlib.blake2b(keys[i].encode(), digest_size=8).digest(), "little")
        val[min(range(len(keys)), key=h)] = True
    return val


def _select(keys: Sequence[str], split: str, val_fraction: float) -> np.ndarray:
    if split not in ("train", "val", "all"):
        raise SlamError(f"split must be train, val or all, got {split!r}")
    if split == "all":
        return np.ones(len(keys), dtype=bool)
    val = val_mask(keys, val_fraction)
    return val if split == "val" else ~val


def keep_lengths(src: "ArraySource", min_length: int = 0, max_length: int | None = None) -> "ArraySource":
    """The documents of `src` whose length in tokens (as the model sees them, <s> ... <s> included) lies in
    [min_length, max_length], order and id transform kept; `src` itself when every document does."""
    lens = src.lengths()
    keep = lens >= min_length
    if max_length is not None:
        keep &= lens <= max_length
    if keep.all():
        return src
    raw = np.diff(src.offsets)[keep]
    starts = src.offsets[:-1][keep]
    offsets = np.concatenate([[0], np.cumsum(raw)]).astype(np.int64)
    index = np.arange(offsets[-1]) - np.repeat(offsets[:-1] - starts, raw)
    out = ArraySource(name=src.name, flat=src.flat[index], offsets=offsets, transform=src._transform)
    for attr in ("stats", "ids"):
        if hasattr(src, attr):
            value = getattr(src, attr)
            setattr(out, attr, [k for k, m in zip(value, keep) if m] if attr == "ids" else value)
    return out


class ArraySource:
    """Documents held as one flat array + offsets (compact: 2 bytes per token for uint16 units)."""

    def __init__(self, docs: Iterable[Any] | None = None, name: str = "docs", *, flat: np.ndarray | None = None,
                 offsets: np.ndarray | None = None, transform: Any = None) -> None:
        self.name = name
        if docs is not None:
            arrays = [np.asarray(d, dtype=np.int64) for d in docs]
            lens = np.array([len(a) for a in arrays], dtype=np.int64)
            flat = np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.int64)
            offsets = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
        if flat is None or offsets is None:
            raise SlamError("ArraySource needs documents, or flat + offsets")
        self.flat, self.offsets = flat, offsets
        self._transform = transform  # raw slice -> ids (e.g. units -> <s> ids <s>)
        # tokens the transform adds (bos + eos; + <speech> for interleaved models)
        self._extra = 0 if transform is None else len(transform(flat[:0]))

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets) + self._extra

    def doc(self, i: int) -> np.ndarray:
        raw = self.flat[self.offsets[i]:self.offsets[i + 1]]
        return raw.astype(np.int64) if self._transform is None else self._transform(raw)

    def __iter__(self) -> Iterator[np.ndarray]:
        return (self.doc(i) for i in range(len(self)))


def units_layout(folders: str | Path | Sequence[str | Path]) -> SlamInfo:
    """The speech-only token layout for units datasets (pad 0, <s> 1, K units from 2), with the datasets'
    tokenizer spec made absolute (so `save_model` can copy its k-means into every model folder) and their
    dedup setting recorded. Datasets made by different tokenizers or dedup settings are refused."""
    folders = [folders] if isinstance(folders, (str, Path)) else list(folders)
    if not folders:
        raise SlamError("no units dataset given")
    metas = [(Path(f), read_meta(f)) for f in folders]
    first_path, first = metas[0]
    for path, meta in metas[1:]:
        for key in ("tokenizer_hash", "n_units", "dedup"):
            if meta.get(key) != first.get(key):
                raise SlamError(f"{path} has {key}={meta.get(key)!r} but {first_path} has {first.get(key)!r}; "
                                f"units of different tokenizers never mix")
    n_units = int(first.get("n_units") or 0)
    if n_units <= 0:
        raise SlamError(f"{first_path}/meta.json has no positive n_units")
    spec = dict(first.get("tokenizer") or {})
    if spec.get("kmeans") and not Path(spec["kmeans"]).is_absolute():
        spec["kmeans"] = str((first_path / spec["kmeans"]).resolve())
    if spec.get("model") and not Path(str(spec["model"])).is_absolute() and (first_path / spec["model"]).is_dir():
        spec["model"] = str((first_path / spec["model"]).resolve())
    if "dedup" in first:
        spec["dedup"] = bool(first["dedup"])
    return SlamInfo(n_units=n_units, tokenizer=spec, tokenizer_hash=str(first.get("tokenizer_hash") or ""))


def units_source(folders: str | Path | Sequence[str | Path], info: SlamInfo, split: str = "all",
                 val_fraction: float = 0.0, name: str | None = None) -> ArraySource:
    """One or several units dataset folders -> documents `<s> units+offset <s>` (ids via SlamInfo).

    Rows are read in id order (slam.units.dataset), so the document set never depends on shard layout.
    Units must fit the model's vocabulary, and a dataset written by another tokenizer is refused.
    """
    import pyarrow.compute as pc

    folders = [folders] if isinstance(folders, (str, Path)) else list(folders)
    flats, lens_all = [], []
    for folder in folders:
        meta = read_meta(folder)
        if int(meta.get("n_units", 0)) > info.n_units:
            raise SlamError(f"{folder}: units dataset has n_units={meta['n_units']}, the model only "
                            f"{info.n_units} units")
        if info.tokenizer_hash and meta.get("tokenizer_hash") and meta["tokenizer_hash"] != info.tokenizer_hash:
            raise SlamError(f"{folder}: units were made by tokenizer {meta['tokenizer_hash'][:12]}, the model "
                            f"expects {info.tokenizer_hash[:12]} (units of different tokenizers never mix)")
        table = load_table(folder, ["id", "units"])
        keep = _select(table.column("id").to_pylist(), split, val_fraction)
        units = table.column("units").filter(keep) if not keep.all() else table.column("units")
        lens = pc.list_value_length(units).to_numpy(zero_copy_only=False).astype(np.int64)
        flat = pc.list_flatten(units).to_numpy(zero_copy_only=False).astype(np.uint16, copy=False)
        nonempty = lens > 0
        if not nonempty.all():  # an empty utterance would only teach <s> -> <s>; it owns no units anyway
            lens = lens[nonempty]
        flats.append(flat)
        lens_all.append(lens)
    flat = np.concatenate(flats) if flats else np.zeros(0, np.uint16)
    lens = np.concatenate(lens_all) if lens_all else np.zeros(0, np.int64)
    offsets = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    if flat.size and int(flat.max()) >= info.n_units:
        raise SlamError(f"{folders}: unit id {int(flat.max())} >= n_units {info.n_units}")
    label = name or "+".join(Path(f).name for f in folders)
    return ArraySource(name=label, flat=flat, offsets=offsets, transform=info.units_to_ids)


def text_source(files: str | Path | Sequence[str | Path], tokenizer: Any, split: str = "all",
                val_fraction: float = 0.0, name: str | None = None, bos_id: int | None = None,
                eos_id: int | None = None) -> ArraySource:
    """Plain text files, one document per non-empty line, tokenized by an HF tokenizer (object or folder)
    and wrapped `bos ... eos` with the tokenizer's own specials (eos on both sides if it has no bos)."""
    if isinstance(tokenizer, (str, Path)):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer))
    bos = bos_id if bos_id is not None else (tokenizer.bos_token_id if tokenizer.bos_token_id is not None
                                             else tokenizer.eos_token_id)
    eos = eos_id if eos_id is not None else tokenizer.eos_token_id
    if bos is None or eos is None:
        raise SlamError("the text tokenizer has no bos/eos token; pass bos_id and eos_id")
    files = [files] if isinstance(files, (str, Path)) else list(files)
    lines: list[str] = []
    for f in files:
        p = Path(f)
        if not p.exists():
            raise SlamError(f"text file {str(p)!r} does not exist")
        lines.extend(line.strip() for line in p.read_text(encoding="utf-8").splitlines() if line.strip())
    lines = [t for t, k in zip(lines, _select(lines, split, val_fraction)) if k]
    ids = tokenizer(lines, add_special_tokens=False)["input_ids"] if lines else []
    docs = [np.concatenate([[bos], np.asarray(t, dtype=np.int64), [eos]]) for t in ids]
    return ArraySource(docs, name=name or "+".join(Path(f).name for f in files))


