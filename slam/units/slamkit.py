"""slamkit's files -> slam's formats: `slam import-slamkit units|prefs FILE --tokenizer SPEC --out DIR`.

    slam import-slamkit units features.jsonl --tokenizer hubert:slprl/mhubert-base-25hz@11:km500.bin --out units/
    slam import-slamkit prefs prefs.jsonl --tokenizer mel:km.npz --out prefs/    # -> slam dpo data.train=prefs/units

slamkit's layouts (github.com/slp-rl/slamkit, example_data/ and cli/):
- features jsonl (`extract_features.py`): {"file_name", "units": [u, ...], "duration": [frames, ...]}, units
  deduplicated, raw k-means indices 0..K-1, durations in 25 Hz frames.
- tokens jsonl (`prepare_tokens.py`): {"file_name", "audio_repr": "<Un3><Un49>..."}: the same units as text,
  without durations.
- preference jsonl (`preference_alignment_feature_extractor.py` input): {"prompt_path", "chosen_path",
  "rejected_path"} audio paths; its output adds "prompt" / "chosen" / "rejected" as {"audio_repr": ...}
  (or the bare string).

The units come from slamkit's tokenizer, which slam cannot recompute from the file, so the tokenizer is
named (`--tokenizer`, the same spec `slam tokenize` takes) and written into meta.json with its hash: a model
trained on the imported dataset carries that tokenizer and `slam eval` / `generate` turn audio into the
same units; a model of another tokenizer refuses the dataset as for any units dataset. A unit >= the
tokenizer's K stops the import with the line number (the wrong tokenizer was named).

Ids: the file name without extension (leading `../` and `./` dropped), `#<line>` appended to a repeat;
preference pairs are `<pair>-prompt|chosen|rejected` with pair = `id` or the line number.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from slam.audio import EXTENSIONS
from slam.errors import SlamError
from slam.units.dataset import META, UnitsWriter, read_meta
from slam.units.tokenize import tokenize_audio
from slam.units.tokenizer import load_tokenizer
from slam.utils import atomic_write_text, read_jsonl_objects

_UNIT = re.compile(r"<Un(\d+)>")
PREF_FIELDS = ("prompt", "chosen", "rejected")


def parse_audio_repr(text: str, where: str) -> np.ndarray:
    """"<Un3><Un49>..." -> [3, 49, ...]; anything else in the string (text tokens of an interleaved file)
    is refused rather than dropped."""
    units = _UNIT.findall(text)
    if _UNIT.sub("", text).strip():
        raise SlamError(f"{where}: audio_repr holds more than <UnN> unit tokens (an interleaved file?); "
                        f"import speech-only tokens")
    return np.asarray([int(u) for u in units], dtype=np.int64)


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise SlamError(f"--out {out}: is a file; give a folder (created, or resumed)")


def _read_lines(path: Path) -> list[tuple[int, dict]]:
    rows = read_jsonl_objects(path, "slamkit file")
    if not rows:
        raise SlamError(f"{path}: holds no lines; nothing to import")
    return rows


def _file_id(name: str) -> str:
    parts = [p for p in Path(os.path.normpath(name)).as_posix().split("/") if p not in ("..", ".", "")]
    rel = "/".join(parts)
    base, ext = os.path.splitext(rel)
    return base if ext.lower() in EXTENSIONS else rel


def _units_of(value: Any, where: str) -> np.ndarray:
    if isinstance(value, dict):
        value = value.get("audio_repr", value.get("units"))
    if isinstance(value, str):
        return parse_audio_repr(value, where)
    if isinstance(value, list) and all(isinstance(u, int) and not isinstance(u, bool) for u in value):
        return np.asarray(value, dtype=np.int64)
    raise SlamError(f"{where}: expected units (a list of ints) or an audio_repr string")


def _check_range(units: np.ndarray, n_units: int, where: str, spec: str) -> None:
    if units.size and (units.min() < 0 or units.max() >= n_units):
        raise SlamError(f"{where}: unit {int(units.max() if units.max() >= n_units else units.min())} is outside "
                        f"0..{n_units - 1} of --tokenizer {spec}; name the tokenizer that made these units")


def _meta(tok: Any, out: Path, source: Path, dedup: bool) -> dict:
    return {"tokenizer_hash": tok.hash, "n_units": tok.n_units, "frame_rate": tok.frame_rate, "dedup": dedup,
            "sample_rate": tok.sample_rate, "tokenizer_kind": tok.kind, "tokenizer": tok.save_to(out),
            "audio": str(source), "imported_from": "slamkit"}


def import_units(path: str | Path, tokenizer: str, out: str | Path) -> dict:
    """A slamkit features or tokens jsonl -> a units dataset at `out` (see the module docstring); returns
    its meta. Rerunning adds nothing twice (ids already there are skipped)."""
    path, out = Path(path), Path(out)
    _check_out(out)
    rows = _read_lines(path)
    tok = load_tokenizer(tokenizer)
    has_durations = all("duration" in r for _, r in rows)
    meta = _meta(tok, out, path, dedup=True)
    seen: set[str] = set()
    n_new = 0
    with UnitsWriter(out, meta, shard_tag="slamkit") as w:
        for n, row in rows:
            where = f"{path}:{n}"
            if "units" in row:
                units = _units_of(row["units"], where)
            elif "audio_repr" in row:
                units = _units_of(row["audio_repr"], where)
            else:
                raise SlamError(f"{where}: neither `units` (features jsonl) nor `audio_repr` (tokens jsonl)")
            _check_range(units, tok.n_units, where, tokenizer)
            if has_durations:
                durs = np.asarray(row["duration"], dtype=np.int64)
                if durs.shape != units.shape or (durs.size and durs.min() < 1):
                    raise SlamError(f"{where}: `duration` must hold one positive frame count per unit")
            else:
                durs = np.ones_like(units)  # tokens jsonl: durations are not in the file (1 frame each)
            name = row.get("file_name")
            id_ = _file_id(str(name)) if name else f"line-{n:07d}"
            if id_ in seen:
                id_ = f"{id_}#{n}"
            seen.add(id_)
            if id_ in w.skip:
                continue
            extra = {k: str(row[k]) for k in ("text", "speaker") if row.get(k) is not None}
            w.add(id_, units, durs, float(durs.sum()) / tok.frame_rate, str(name or where), **extra)
            n_new += 1
    final = read_meta(out)
    print(f"Imported {n_new} utterances from {path} ({'features: units and durations' if has_durations else 'tokens: units only, durations 1'}) "
          f"into {out}: {final['n_utterances']} utterances, {final['n_tokens']:,} units, tokenizer {tok.kind} "
          f"({tok.n_units} units, hash {tok.hash[:12]}).")
    return final


def import_prefs(path: str | Path, tokenizer: str, out: str | Path, workers: int = 1) -> dict:
    """A slamkit preference jsonl -> `out/units`, the units dataset `slam dpo data.train=` reads (ids
    <pair>-prompt|chosen|rejected). Lines with units (audio_repr) are imported as they are; lines with only
    audio paths are tokenized with `tokenizer` (through `slam tokenize`'s engine: resumable, rejects
    listed). Returns {"pairs", "tokenized", "imported", "units"}."""
    path, out = Path(path), Path(out)
    _check_out(out)
    rows = _read_lines(path)
    tok = load_tokenizer(tokenizer)
    manifest, direct = [], []
    seen: set[str] = set()
    for n, row in rows:
        where = f"{path}:{n}"
        pid = str(row.get("id", f"pair-{n:07d}"))
        if pid in seen:
            raise SlamError(f"{where}: duplicate id {pid!r}")
        seen.add(pid)
        if all(f in row for f in PREF_FIELDS):
            units = {f: _units_of(row[f], f"{where} {f}") for f in PREF_FIELDS}
            for f, u in units.items():
                _check_range(u, tok.n_units, f"{where} {f}", tokenizer)
            direct.append((pid, units, row))
        elif all(isinstance(row.get(f"{f}_path"), str) for f in PREF_FIELDS):
            for f in PREF_FIELDS:
                p = Path(row[f"{f}_path"])
                p = p if p.is_absolute() else (path.parent / p)
                line = {"id": f"{pid}-{f}", "audio": str(p.resolve())}
                if isinstance(row.get(f"{f}_text"), str):
                    line["text"] = row[f"{f}_text"]
                manifest.append(line)
        else:
            raise SlamError(f"{where}: needs prompt_path, chosen_path and rejected_path (audio) or prompt, "
                            f"chosen and rejected (units)")
    units_dir = out / "units"
    if manifest:
        man = out / "slamkit-audio.jsonl"
        atomic_write_text(man, "".join(json.dumps(x) + "\n" for x in manifest))
        tokenize_audio(man, tokenizer, units_dir, workers=workers)
    if direct:
        meta = _meta(tok, units_dir, path, dedup=True) if not (units_dir / META).exists() else read_meta(units_dir)
        with UnitsWriter(units_dir, meta, shard_tag="slamkit") as w:
            for pid, units, row in direct:
                for f in PREF_FIELDS:
                    if f"{pid}-{f}" not in w.skip:
                        text = row.get(f"{f}_text")
                        w.add(f"{pid}-{f}", units[f], np.ones_like(units[f]), len(units[f]) / tok.frame_rate,
                              str(path), **({"text": text} if isinstance(text, str) else {}))
    final = read_meta(units_dir)
    n_pairs = len(seen)
    print(f"Imported {n_pairs} preference pairs from {path} ({len(manifest) // 3} tokenized from audio with "
          f"{tok.kind} tokenizer {tok.hash[:12]}, {len(direct)} with units) into {units_dir} "
          f"({final['n_utterances']} utterances, {final['n_rejected']} rejects). Train with: "
          f"slam dpo slam-dpo data.train={units_dir} model=MODEL")
    return {"pairs": n_pairs, "tokenized": len(manifest) // 3, "imported": len(direct), "units": str(units_dir)}
