"""Spoken preference data for DPO: readers (prefs.jsonl, units dataset) and the SpokenSwag-style builder.

A preference pair is (prompt, chosen, rejected), each a unit sequence (ints 0..K-1 of the policy model's
tokenizer). Two on-disk forms are read:

    prefs.jsonl     one JSON object a line: {"id", "prompt", "chosen", "rejected", ...}; each of the three is
                    an audio path (wav/flac/ogg/mp3, tokenised with the policy model's tokenizer), a `.npy`
                    file of units, or an inline list of units. Paths are relative to the jsonl file
                    (the audio twin that `slam synth prefs.jsonl` writes is such a file).
    units dataset   a folder of `slam tokenize` (part-*.parquet + meta.json) whose ids are `<pair>-prompt`,
                    `<pair>-chosen`, `<pair>-rejected` (the ids `slam synth` gives the three texts of a row).
                    Its meta.json records the tokenizer hash, which must be the policy model's.

The builder turns text triples into that units dataset the way the paper built SpokenSwag (47k SWAG pairs,
4 TTS voices): drop the pairs whose prompt + chosen text repeats itself (bigram auto-BLEU >= 0.3), speak
the rest (slam.synth: one voice per row, voices in turn), tokenise the audio with the policy model's
tokenizer (slam.units.tokenize, the `slam tokenize` machinery: workers, resume, HuBERT batching):

    from slam.prefs import build_spoken_prefs, load_prefs
    summary = build_spoken_prefs("corpus/prefs.jsonl", "data/prefs", model_dir="runs/slam/final")
    pairs, stats = load_prefs("data/prefs/units", info, model_dir="runs/slam/final")
    # or from the shell: slam dpo --build-prefs corpus/prefs.jsonl --model runs/slam/final --out data/prefs

Text triples come from `slam corpus` (its prefs.jsonl: prompt = a story's opening, chosen = its ending,
rejected = a wrong ending) or any jsonl with id/prompt/chosen/rejected text.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from slam.audio import load_audio
from slam.errors import SlamError
from slam.eval.autobleu import auto_bleu
from slam.model_folder import load_model_tokenizer
from slam.synth.tts import read_jsonl, synthesize_pairs
from slam.tokens import SlamInfo
from slam.units.dataset import iter_rows, read_meta
from slam.units.hf import hub_offline_reason
from slam.units.tokenize import tokenize_audio
from slam.units.tokenizer import load_tokenizer, tokenize
from slam.utils import atomic_write_json, atomic_write_text, read_jsonl_objects

FIELDS = ("prompt", "chosen", "rejected")
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")
AUTO_BLEU_MAX = 0.3
"""The paper drops SpokenSwag pairs whose prompt + chosen text has bigram auto-BLEU >= 0.3."""


@dataclass
class PrefPair:
    id: str
    prompt: np.ndarray
    """Units (np.int64, 0..K-1) of the prompt; the model sees `<s> prompt`."""
    chosen: np.ndarray
    """Units of the preferred continuation; the model sees `chosen <s>` (EOS closes a completion)."""
    rejected: np.ndarray
    """Units of the dispreferred continuation."""


# --- readers -------------------------------------------------------------------------------------------------
def _check_units(units: np.ndarray, info: SlamInfo | None, where: str) -> np.ndarray:
    u = np.asarray(units)
    if u.ndim != 1 or (u.size and not np.issubdtype(u.dtype, np.integer)):
        raise SlamError(f"{where}: units must be a 1-D list of integers")
    u = u.astype(np.int64)
    top = info.n_units if info is not None else None
    if u.size and (u.min() < 0 or (top is not None and u.max() >= top)):
        raise SlamError(f"{where}: unit ids must lie in [0, {top}), got [{u.min()}, {u.max()}]")
    return u


def read_units_prefs(folder: str | Path, info: SlamInfo | None = None) -> tuple[list[PrefPair], dict]:
    """A units dataset with ids `<pair>-prompt|chosen|rejected` -> pairs (in id order) and counts."""
    folder = Path(folder)
    meta = read_meta(folder)
    if info is not None:
        if int(meta.get("n_units", 0)) > info.n_units:
            raise SlamError(f"{folder}: units dataset has n_units={meta.get('n_units')}, the model only "
                            f"{info.n_units}")
        if info.tokenizer_hash and meta.get("tokenizer_hash") and meta["tokenizer_hash"] != info.tokenizer_hash:
            raise SlamError(f"{folder}: units were made by tokenizer {meta['tokenizer_hash'][:12]}, the model "
                            f"expects {info.tokenizer_hash[:12]}; rebuild the preference units with the "
                            f"policy model's tokenizer")
    parts: dict[str, dict[str, np.ndarray]] = defaultdict(dict)
    foreign = 0
    for row in iter_rows(folder, ["id", "units"]):
        pair_id, _, field = row["id"].rpartition("-")
        if field not in FIELDS or not pair_id:
            foreign += 1
            continue
        parts[pair_id][field] = _check_units(row["units"], info, f"{folder}: {row['id']}")
    pairs = [PrefPair(pid, p["prompt"], p["chosen"], p["rejected"]) for pid, p in sorted(parts.items())
             if len(p) == 3]
    if foreign and not pairs:
        raise SlamError(f"{folder}: no id ends in -prompt/-chosen/-rejected; this is not a preference units "
                        f"dataset (build one with `slam dpo --build-prefs`)")
    return pairs, {"pairs": len(pairs), "incomplete": len(parts) - len(pairs), "other_rows": foreign}


def read_jsonl_prefs(path: str | Path, info: SlamInfo | None = None,
                     tokenizer: Callable[[], Any] | None = None, dedup: bool = True,
                     progress: bool = True) -> tuple[list[PrefPair], dict]:
    """prefs.jsonl -> pairs. `tokenizer` is a callable returning the speech tokenizer, called only when an
    audio path is met (a file of units never loads a HuBERT)."""
    from tqdm import tqdm

    path = Path(path)
    rows = []
    for n, row in read_jsonl_objects(path, "preference file"):
        if not all(k in row for k in FIELDS):
            raise SlamError(f"{path}:{n}: each line needs prompt, chosen and rejected")
        rows.append((n, row))
    tok = None
    pairs = []
    seen: set[str] = set()
    for n, row in tqdm(rows, desc="read prefs", unit="pair", disable=not progress):
        pid = str(row.get("id", f"{n:07d}"))
        if pid in seen:
            raise SlamError(f"{path}:{n}: duplicate id {pid!r}")
        seen.add(pid)
        units = {}
        for field in FIELDS:
            value, where = row[field], f"{path}:{n} {field}"
            if isinstance(value, list):
                units[field] = _check_units(np.asarray(value), info, where)
                continue
            if not isinstance(value, str):
                raise SlamError(f"{where}: expected an audio path, a .npy path or a list of units")
            p = Path(value) if Path(value).is_absolute() else path.parent / value
            if p.suffix == ".npy":
                if not p.exists():
                    raise SlamError(f"{where}: {p} does not exist")
                units[field] = _check_units(np.load(p, allow_pickle=False), info, where)
            elif p.suffix.lower() in AUDIO_EXTENSIONS:
                if tokenizer is None:
                    raise SlamError(f"{where}: an audio path, but no speech tokenizer to turn it into units")
                tok = tok or tokenizer()
                u, _ = tokenize(tok, load_audio(p), dedup=dedup)
                units[field] = _check_units(u, info, where)
            else:
                raise SlamError(f"{where}: {value!r} is neither audio ({', '.join(AUDIO_EXTENSIONS)}) nor .npy")
        pairs.append(PrefPair(pid, units["prompt"], units["chosen"], units["rejected"]))
    return pairs, {"pairs": len(pairs), "incomplete": 0, "other_rows": 0}


def load_prefs(path: str | Path, info: SlamInfo, model_dir: str | Path | None = None,
               progress: bool = True) -> tuple[list[PrefPair], dict]:
    """Either form, checked against the policy model's layout; audio is tokenised with the model's tokenizer."""
    p = Path(path)
    if not p.exists():
        raise SlamError(f"preference data {str(path)!r} does not exist")
    if p.is_dir():
        pairs, stats = read_units_prefs(p, info)
    elif p.suffix == ".jsonl":
        def tokenizer():
            if model_dir is None:
                raise SlamError(f"{p}: holds audio; give the model folder whose tokenizer makes the units")
            return load_model_tokenizer(info, model_dir)

        pairs, stats = read_jsonl_prefs(p, info, tokenizer, dedup=bool(info.tokenizer.get("dedup", True)),
                                        progress=progress)
    else:
        raise SlamError(f"preference data {str(path)!r}: expected a units dataset folder or a prefs.jsonl")
    if not pairs:
        raise SlamError(f"preference data {str(path)!r} holds no complete pair")
    return pairs, stats


# --- the auto-BLEU filter ------------------------------------------------------------------------------------
def prompt_chosen_auto_bleu(row: dict) -> float:
    """Bigram auto-BLEU of the prompt followed by the chosen continuation (text), as the paper filters."""
    return auto_bleu(f"{row['prompt']} {row['chosen']}", n=2)


def filter_auto_bleu(rows: list[dict], threshold: float | None = AUTO_BLEU_MAX) -> tuple[list[dict], list[dict]]:
    """(kept, dropped): a row is dropped when its prompt + chosen auto-BLEU >= threshold (None = keep all).
    Dropped rows carry their score under `auto_bleu`."""
    if threshold is None:
        return list(rows), []
    kept, dropped = [], []
    for row in rows:
        score = prompt_chosen_auto_bleu(row)
        if score >= threshold:
            dropped.append({**row, "auto_bleu": round(score, 4)})
        else:
            kept.append(row)
    return kept, dropped


# --- SWAG -> text triples (SpokenSwag's construction) ---------------------------------------------------------
SWAG_COLUMNS = ("sent1", "sent2", "ending0", "ending1", "ending2", "ending3", "label")
"""Columns of the published SWAG files (rowanz/swagaf data/{train,val}.csv: an unnamed index, video-id,
fold-ind, startphrase, sent1, sent2, gold-source, ending0-3, label) and of the hub's `allenai/swag` (regular)."""


def is_swag(source: str | Path) -> bool:
    """A SWAG file (.csv in the published layout, or .jsonl / .parquet with its columns) or `hf:ORG/NAME[@split]`."""
    s = str(source)
    if s.startswith("hf:"):
        return True
    p = Path(s)
    if p.suffix.lower() == ".csv":
        return True
    if p.suffix.lower() == ".parquet" and p.is_file():
        import pyarrow.parquet as pq

        return set(SWAG_COLUMNS) <= set(pq.read_schema(p).names)
    if p.suffix.lower() == ".jsonl" and p.is_file():
        with open(p, encoding="utf-8", errors="replace") as f:
            first = f.readline()
        try:
            return isinstance(json.loads(first), dict) and set(SWAG_COLUMNS) <= set(json.loads(first))
        except ValueError:
            return False
    return False


def _swag_rows(source: str | Path) -> list[dict]:
    s = str(source)
    if s.startswith("hf:"):
        name, _, split = s[3:].partition("@")
        why = hub_offline_reason()
        if why:
            raise SlamError(f"{s}: reading SWAG from the hub needs the network ({why}); give the published "
                            f"train.csv (github.com/rowanz/swagaf, data/) instead")
        try:
            import datasets  # optional extra: only the hub path needs it
        except ImportError:
            raise SlamError(f"{s}: reading a hub dataset needs `datasets`: pip install 'slam[datasets]'") from None
        repo, _, config = name.partition(":")
        try:
            ds = datasets.load_dataset(repo, config or "regular", split=split or "train")
        except Exception as e:  # the hub's own errors: one line
            raise SlamError(f"{s}: cannot load ({type(e).__name__}: {e})") from None
        return [dict(r) for r in ds]
    p = Path(s)
    if not p.is_file():
        raise SlamError(f"SWAG file {s!r} does not exist")
    if p.suffix.lower() == ".csv":
        import csv

        try:
            with open(p, newline="", encoding="utf-8") as f:
                return list(csv.DictReader(f))
        except UnicodeDecodeError as e:
            raise SlamError(f"{p}: not UTF-8 text ({e.reason})") from None
    if p.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(p).to_pylist()
    return read_jsonl(p)


def swag_triples(source: str | Path, limit: int | None = None) -> list[dict]:
    """SWAG rows -> text triples as SpokenSwag builds them: prompt = the context's first sentence (sent1),
    chosen = the second sentence's start (sent2) + the gold ending, rejected = sent2 + one wrong ending (chosen
    by a hash of the row id, so the same on every run). Ids are `swag-<row>` (the file's index column when it
    has one). Rows without a gold label (SWAG's test split) stop the build."""
    rows = _swag_rows(source)
    if not rows:
        raise SlamError(f"{source}: holds no SWAG rows")
    missing = [c for c in SWAG_COLUMNS if c not in rows[0]]
    if missing:
        raise SlamError(f"{source}: not the SWAG layout (missing columns {', '.join(missing)}; expected "
                        f"{', '.join(SWAG_COLUMNS)})")
    out = []
    for n, r in enumerate(rows):
        index = r.get("") or r.get("Unnamed: 0") or r.get("__index_level_0__")
        rid = f"swag-{index if index not in (None, '') else n}"
        try:
            gold = int(r["label"])
        except (TypeError, ValueError):
            gold = -1
        if not 0 <= gold <= 3:
            raise SlamError(f"{source}: row {n + 1} has no gold label ({r.get('label')!r}); SWAG's test split "
                            f"is unlabelled, use train or val")
        endings = [str(r[f"ending{k}"]).strip() for k in range(4)]
        wrong = [e for k, e in enumerate(endings) if k != gold]
        pick = int.from_bytes(hashlib.blake2b(rid.encode(), digest_size=4).digest(), "little") % len(wrong)
        sent1, sent2 = str(r["sent1"]).strip(), str(r["sent2"]).strip()
        out.append({"id": rid, "prompt": sent1, "chosen": f"{sent2} {endings[gold]}".strip(),
                    "rejected": f"{sent2} {wrong[pick]}".strip()})
        if limit is not None and len(out) >= limit:
            break
    return out


# --- the SpokenSwag-style builder -----------------------------------------------------------------------------
def _read_text_triples(path: Path, limit: int | None) -> list[dict]:
    if not path.exists():
        raise SlamError(f"text preference file {str(path)!r} does not exist")
    try:
        rows = read_jsonl(path)
    except json.JSONDecodeError as e:
        raise SlamError(f"{path}: not valid jsonl ({e.msg})") from None
    out, seen = [], set()
    for n, row in enumerate(rows, 1):
        if not isinstance(row, dict) or not all(isinstance(row.get(k), str) and row[k].strip() for k in FIELDS):
            raise SlamError(f"{path}: row {n} needs non-empty prompt, chosen and rejected text")
        row = {"id": str(row.get("id", f"pref-{n:07d}")), **{k: v for k, v in row.items() if k != "id"}}
        if row["id"] in seen:
            raise SlamError(f"{path}: duplicate id {row['id']!r}")
        seen.add(row["id"])
        out.append(row)
    return out[:limit] if limit is not None else out


def build_spoken_prefs(text_jsonl: str | Path, out_dir: str | Path, model_dir: str | Path | None = None,
                       tokenizer: str | None = None, voices: list[str] | None = None, workers: int = 1,
                       backend: str = "espeak", max_auto_bleu: float | None = AUTO_BLEU_MAX,
                       limit: int | None = None, device: str | None = None, progress: bool = True) -> dict:
    """Text triples -> auto-BLEU filter -> TTS -> units with the policy model's tokenizer. Resumable.

    `text_jsonl` is a jsonl of id/prompt/chosen/rejected text, or SWAG itself (the published csv, a jsonl or
    parquet with its columns, or `hf:allenai/swag[@split]`), turned into triples by `swag_triples`.

        OUT/text/prefs.jsonl      the kept text triples        OUT/text/dropped.jsonl   the filtered ones + score
        OUT/audio/                wavs, manifest.jsonl and prefs.jsonl (audio paths; also readable by slam dpo)
        OUT/units/                the units dataset (ids <pair>-prompt|chosen|rejected): data.train of slam dpo
        OUT/build.json            the summary

    The tokenizer is the model folder's (its slam.json), or `tokenizer` (a spec string) for a model that
    does not carry one; when both are given their hashes must agree.
    """
    out = Path(out_dir)
    rows = swag_triples(text_jsonl, limit) if is_swag(text_jsonl) else _read_text_triples(Path(text_jsonl), limit)
    kept, dropped = filter_auto_bleu(rows, max_auto_bleu)
    if not kept:
        raise SlamError(f"{text_jsonl}: every pair was dropped by the auto-BLEU filter (>= {max_auto_bleu})")
    text_file = out / "text" / "prefs.jsonl"
    atomic_write_text(text_file, "".join(json.dumps(r) + "\n" for r in kept))
    atomic_write_text(out / "text" / "dropped.jsonl", "".join(json.dumps(r) + "\n" for r in dropped))

    tok = _builder_tokenizer(model_dir, tokenizer, device)
    audio_file, synth = synthesize_pairs(text_file, out / "audio", voices, workers=workers, backend=backend,
                                         progress=progress)
    dedup = True
    if model_dir is not None:
        dedup = bool(SlamInfo.load(model_dir).tokenizer.get("dedup", True))
    tokenize_audio(out / "audio" / "manifest.jsonl", tok.spec, out / "units", dedup_units=dedup, workers=workers,
                   batch_size=16, device=device)
    pairs, stats = read_units_prefs(out / "units")
    summary = {"text": str(text_jsonl), "rows": len(rows), "dropped_auto_bleu": len(dropped),
               "max_auto_bleu": max_auto_bleu, "spoken_rows": synth["rows_written"],
               "rows_dropped_tts": synth["rows_dropped"], "pairs": len(pairs), "incomplete": stats["incomplete"],
               "tokenizer_hash": tok.hash, "audio_seconds": synth["audio_seconds"],
               "audio_file": str(audio_file), "units": str(out / "units")}
    atomic_write_json(out / "build.json", summary)
    return summary


def _builder_tokenizer(model_dir: str | Path | None, spec: str | None, device: str | None) -> Any:
    if model_dir is None and spec is None:
        raise SlamError("--build-prefs needs --model (whose tokenizer makes the units) or --tokenizer SPEC")
    info = SlamInfo.load(model_dir) if model_dir is not None else None
    if spec is not None:
        tok = load_tokenizer(spec, device=device)
        if info is not None and info.tokenizer_hash and tok.hash != info.tokenizer_hash:
            raise SlamError(f"--tokenizer has hash {tok.hash[:12]}, the model {model_dir} was trained on units of "
                            f"{info.tokenizer_hash[:12]}")
        return tok
    return load_model_tokenizer(info, model_dir)
