"""Token layout of a speech LM and the `slam.json` that records it beside every model folder.

Speech-only models use the published slamkit layout so that published checkpoints load unchanged:
id 0 = pad, id 1 = <s> (both bos and eos), unit u -> u + 2; every utterance is `<s> units <s>`.
Interleaved models keep a text tokenizer's vocabulary and append the units after it (`unit_offset` says
where), plus `<speech>`/`<text>` markers. Everything downstream maps units through a `SlamInfo`, never
through hard-coded offsets, so both layouts share one code path. Units are ints end to end.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from slam.errors import SlamError
from slam.utils import atomic_write_text

PAD_ID = 0
BOS_ID = 1
EOS_ID = 1
UNIT_OFFSET = 2
SLAM_JSON = "slam.json"


@dataclass
class SlamInfo:
    """What a model folder needs beyond the HF files: how units map to ids and which tokenizer made them."""

    n_units: int
    """Number of speech units K (ids unit_offset .. unit_offset+K-1)."""
    tokenizer: dict[str, Any] = field(default_factory=dict)
    """Speech tokenizer spec (see slam.units.tokenizer); file paths relative to the model folder."""
    tokenizer_hash: str = ""
    """Content hash of the tokenizer weights and k-means; eval refuses units made by another tokenizer."""
    unit_offset: int = UNIT_OFFSET
    pad_id: int = PAD_ID
    bos_id: int = BOS_ID
    eos_id: int = EOS_ID
    vocab_size: int = 0
    """Rows of the embedding table (units + specials, or text vocab + units + markers)."""
    text_tokenizer: str | None = None
    """Interleaved models: folder (relative to the model folder) of the HF text tokenizer."""
    speech_token_id: int | None = None
    """Interleaved models: id of the `<speech>` modality marker."""
    text_token_id: int | None = None
    """Interleaved models: id of the `<text>` modality marker."""
    base_model: str | None = None
    """The text LM this model was initialised from (TWIST), or None for random init."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Free-form provenance (training run, conversion source...)."""

    def __post_init__(self) -> None:
        if not self.vocab_size:
            self.vocab_size = self.unit_offset + self.n_units

    # --- unit <-> id mapping -------------------------------------------------------------------------
    @property
    def special_ids(self) -> list[int]:
        """Ids that are not speech units (to suppress when sampling speech)."""
        unit_ids = set(range(self.unit_offset, self.unit_offset + self.n_units))
        return [i for i in range(self.vocab_size) if i not in unit_ids]

    def units_to_ids(self, units: Any, bos: bool = True, eos: bool = True) -> np.ndarray:
        """Units (0..K-1) -> model ids, wrapped `<s> ... <s>` as published (interleaved models: `<s> <speech>
        ... <s>`, the marker that opens every speech segment, so speech-only eval and sampling need no branch)."""
        u = np.asarray(units, dtype=np.int64)
        if u.size and (u.min() < 0 or u.max() >= self.n_units):
            raise SlamError(f"unit ids must lie in [0, {self.n_units}); got range [{u.min()}, {u.max()}]")
        parts = []
        if bos:
            parts.append(np.array([self.bos_id], dtype=np.int64))
            if self.speech_token_id is not None:
                parts.append(np.array([self.speech_token_id], dtype=np.int64))
        parts.append(u + self.unit_offset)
        if eos:
            parts.append(np.array([self.eos_id], dtype=np.int64))
        return np.concatenate(parts)

    def ids_to_units(self, ids: Any) -> np.ndarray:
        """Model ids -> units, dropping every id that is not a unit."""
        a = np.asarray(ids, dtype=np.int64)
        keep = (a >= self.unit_offset) & (a < self.unit_offset + self.n_units)
        return a[keep] - self.unit_offset

    # --- slam.json -----------------------------------------------------------------------------------
    def save(self, folder: str | Path) -> None:
        atomic_write_text(Path(folder) / SLAM_JSON, json.dumps(dataclasses.asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, folder: str | Path) -> "SlamInfo":
        path = Path(folder) / SLAM_JSON
        if not path.exists():
            raise SlamError(f"{folder}: not a slam model folder ({SLAM_JSON} is missing)")
        try:
            data = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError) as e:
            raise SlamError(f"{path}: not valid JSON ({e}); the model folder is damaged") from None
        if not isinstance(data, dict):
            raise SlamError(f"{path}: expected a JSON object of token layout fields")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise SlamError(f"{path}: unknown keys {sorted(unknown)}")
        return cls(**data)


# --- interleaved layout --------------------------------------------------------------------------------------
TEXT_TOKENIZER_DIR = "text_tokenizer"
"""Folder inside an interleaved model folder that holds its HF text tokenizer."""


def interleaved_layout(text_tokenizer: Any, n_units: int, text_rows: int = 0, tokenizer: dict | None = None,
                       tokenizer_hash: str = "", text_tokenizer_path: str | Path | None = None) -> SlamInfo:
    """Token layout of the module docstring. `text_rows`: embedding rows of the base text LM (0 = random
    init, then the tokenizer's length)."""
    n_text = max(int(text_rows), len(text_tokenizer))
    eos = text_tokenizer.eos_token_id
    bos = text_tokenizer.bos_token_id if text_tokenizer.bos_token_id is not None else eos
    if eos is None:
        raise SlamError("the text tokenizer has no eos token; an interleaved model needs one to end documents")
    k = int(n_units)
    return SlamInfo(n_units=k, tokenizer=dict(tokenizer or {}), tokenizer_hash=tokenizer_hash,
                    unit_offset=n_text, pad_id=n_text + k + 2, bos_id=bos, eos_id=eos, vocab_size=n_text + k + 3,
                    text_tokenizer=None if text_tokenizer_path is None else str(text_tokenizer_path),
                    speech_token_id=n_text + k, text_token_id=n_text + k + 1,
                    extra={"interleaved": True, "text_vocab_size": len(text_tokenizer)})


def is_interleaved(info: SlamInfo) -> bool:
    return info.speech_token_id is not None and info.text_token_id is not None


def require_interleaved(info: SlamInfo) -> None:
    if not is_interleaved(info):
        raise SlamError("not an interleaved model: slam.json has no <speech>/<text> marker ids")


def unit_ids(info: SlamInfo) -> np.ndarray:
    return np.arange(info.unit_offset, info.unit_offset + info.n_units)


def speech_targets(info: SlamInfo) -> np.ndarray:
    """Ids a speech segment may continue with: units and the end of the document."""
    return np.r_[unit_ids(info), info.eos_id]


def text_targets(info: SlamInfo) -> np.ndarray:
    """Ids a text segment may continue with: the text tokenizer's entries (eos is one of them)."""
    return np.arange(int(info.extra.get("text_vocab_size", info.unit_offset)))

