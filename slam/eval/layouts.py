"""Benchmark folders -> pairs to compare: every published layout slam reads, recognised from the folder.

    bench = read_benchmark("zr2021/syntactic/dev")          # one Benchmark (Pair list + how it is scored)
    for name, bench in expand_bench("salmon", "salmon_benchmark"):   # a SALMon folder -> its eight parts
        ...

A Pair is one scored unit: `positive[k]` is compared with `negative[k]` and the unit's outcome is the mean over
k. That is where the official averaging lives: a ZeroSpeech 2021 unit holds all the voices of one id (so n
counts ids, not voice pairs); every other layout has one comparison per unit. Layouts (docs/evaluation.md):

- ZeroSpeech 2021 `lexical/{dev,test}` (sWUGGY) and `syntactic/{dev,test}` (sBLIMP): wavs + gold.csv, read
  by column name. As the official scorer (zerospeech2021 lexical.py / syntactic.py): the k-th row with
  correct=1 pairs with the k-th row with correct=0; syntactic units are (type, subtype, id), lexical units
  are ids, each averaged over its voices; a lexical unit keeps its word's `frequency` (in-vocab = >= 1).
- Spoken StoryCloze (sSC / tSC): wavs sorted by the integer before the first `_`, files 2i and 2i+1 form a
  pair, the first positive (slamkit's reader). A key that repeats is refused: the sort would then order
  those files by directory order, and the pairing with them.
- slamkit's repackaged folders: subfolders of such numbered wavs, each subfolder paired on its own and all
  scored in one run (ms_sSC, ms_tSC, slamkit's sWUGGY); sBLIMP's files are `<n>+...wav` (`+` separates the
  key). Group = subfolder.
- SALMon: `<part>/sample_<i>_<j>.wav` (slam.eval.salmon); one Benchmark per part.
- `pairs.jsonl`: {"id", "positive", "negative", optional "group"} with audio paths relative to the file.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slam.errors import SlamError
from slam.eval import salmon
from slam.utils import read_jsonl_objects

LAYOUTS = ("zerospeech-lexical", "zerospeech-syntactic", "storycloze", "slamkit-numbered", "salmon", "pairs.jsonl")
EXPECTED = ("expected one of: a ZeroSpeech 2021 lexical|syntactic/{dev,test} folder with its gold.csv; a Spoken "
            "StoryCloze folder of <n>_*.wav (2i positive, 2i+1 negative); slamkit's repackaged folders (subfolders "
            "of <n>_*.wav or <n>+*.wav: sBLIMP, sWUGGY, ms_sSC, ms_tSC); a SALMon folder (its part folders of "
            "sample_<i>_<j>.wav) or one part; a pairs.jsonl (or a folder holding one) with id, positive, "
            "negative[, group]")
PROTOCOLS = {
    "zerospeech-syntactic": "ZeroSpeech 2021 syntactic scorer: k-th correct vs k-th incorrect row of gold.csv, "
                            "each (type, subtype, id) averaged over its voices; n = those units; groups = type",
    "zerospeech-lexical": "ZeroSpeech 2021 lexical scorer: k-th word vs k-th nonword row of gold.csv, each id "
                          "averaged over its voices; n = ids; invocab = ids whose word has frequency >= 1 (the "
                          "leaderboard's lexical_invocab); groups = the scorer's frequency bands",
    "storycloze": "slamkit: files sorted by their leading integer, 2i positive vs 2i+1; n = pairs",
    "slamkit-numbered": "slamkit ModellingMetricDataset: in each subfolder files sorted by their leading integer, "
                        "2i positive vs 2i+1; one accuracy over all pairs; groups = subfolders",
    "salmon": "SALMon / slamkit: the two files of a sample sorted, the first positive; n = samples",
    "pairs.jsonl": "one comparison per line; n = lines",
}
# pandas.cut(frequency, [0, 1, 5, 20, 100, inf], right=False) with the official labels: '1-5' is [1, 5) and
# '6-20' is [5, 20), as the scorer has it.
FREQ_BANDS = ((0, 1, "oov"), (1, 5, "1-5"), (5, 20, "6-20"), (20, 100, "21-100"), (100, float("inf"), ">100"))


@dataclass
class Pair:
    """One scored unit: `positive[k]` vs `negative[k]`, outcome = the mean over k (the voices of a ZeroSpeech
    id; one comparison everywhere else)."""

    id: str
    positive: list[Path]
    negative: list[Path]
    group: str | None = None
    frequency: int | None = None  # sWUGGY: the word's count in LibriSpeech (gold.csv `frequency`)


@dataclass
class Benchmark:
    name: str
    layout: str
    path: Path
    pairs: list[Pair] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def protocol(self) -> str:
        return PROTOCOLS[self.layout]

    def files(self) -> list[Path]:
        return sorted({f for p in self.pairs for f in (*p.positive, *p.negative)})


def _visible(paths) -> list[Path]:
    # zip archives made on a Mac carry __MACOSX/ and ._name.wav resource forks: not audio
    return sorted(p for p in paths if not p.name.startswith(".") and p.name != "__MACOSX")


# --- ZeroSpeech 2021 ----------------------------------------------------------------------------------------
def _read_gold(folder: Path) -> list[dict[str, str]]:
    with open(folder / "gold.csv", newline="") as f:
        rows = [{(k or "").strip(): (v or "").strip() for k, v in r.items()} for r in csv.DictReader(f)]
    if not rows:
        raise SlamError(f"{folder}/gold.csv has no rows")
    return rows


def _wav(folder: Path, stem: str) -> Path:
    for ext in (".wav", ".flac"):
        p = folder / f"{stem}{ext}"
        if p.exists():
            return p
    raise SlamError(f"{folder}: gold.csv names {stem!r} but {stem}.wav is missing")


def _int_or_text(s: str) -> int | str:
    # pandas reads the id column as integers: "007" and "7" are the same id to the official scorer
    return int(s) if re.fullmatch(r"-?\d+", s) else s


def _frequency(s: str, where: str) -> int:
    if s == "":
        # the official scorer cannot band a word without a count (pandas.cut fails on NA), so it has no score
        raise SlamError(f"{where}: the word has no frequency; the lexical scorer needs one on every word row")
    try:
        x = float(s)
    except ValueError:
        raise SlamError(f"{where}: frequency {s!r} is not a number") from None
    if not x.is_integer():
        raise SlamError(f"{where}: frequency {s!r} is not a whole count (the scorer reads it as Int64)")
    return int(x)


def _band(freq: int) -> str | None:
    return next((b for lo, hi, b in FREQ_BANDS if lo <= freq < hi), None)  # negative: no band, as pandas.cut


def read_zerospeech(folder: str | Path) -> Benchmark:
    folder = Path(folder)
    rows = _read_gold(folder)
    cols = set(rows[0])
    need_lex = {"id", "filename", "voice", "frequency", "correct"}
    need_syn = {"id", "filename", "voice", "type", "subtype", "correct"}
    if need_lex <= cols and "type" not in cols:
        layout = "zerospeech-lexical"
    elif need_syn <= cols:
        layout = "zerospeech-syntactic"
    else:
        raise SlamError(f"{folder}/gold.csv has columns {sorted(cols)}: neither the lexical "
                        f"({sorted(need_lex)}) nor the syntactic ({sorted(need_syn)}) layout")
    good, bad = [], []
    for line, r in enumerate(rows, 2):  # line 1 is the header
        if r["correct"] not in ("0", "1"):
            raise SlamError(f"{folder}/gold.csv line {line}: correct is {r['correct']!r}, expected 1 or 0")
        (good if r["correct"] == "1" else bad).append((line, r))
    if len(good) != len(bad):
        raise SlamError(f"{folder}/gold.csv: {len(good)} correct rows but {len(bad)} incorrect ones; the scorer "
                        "pairs the k-th of each")
    lexical = layout == "zerospeech-lexical"

    def key(r: dict[str, str]) -> tuple:
        return (_int_or_text(r["id"]),) if lexical else (r["type"], r["subtype"], _int_or_text(r["id"]))

    units: dict[tuple, Pair] = {}
    for (lg, g), (lb, b) in zip(good, bad):
        if key(g) != key(b):
            # the official scorer pairs by position, keeps the correct row's id and never looks at the other
            # row's: rows of two items would compare unrelated recordings, so refuse (a re-sorted gold.csv)
            raise SlamError(f"{folder}/gold.csv: line {lg} (correct) and line {lb} (incorrect) are the same "
                            f"positional pair but differ in {'id' if lexical else '(type, subtype, id)'}: "
                            f"{key(g)} vs {key(b)}; keep the rows in the published order")
        k = key(g)
        if k not in units:
            freq = _frequency(g["frequency"], f"{folder}/gold.csv line {lg}") if lexical else None
            units[k] = Pair(id="/".join(map(str, k)), positive=[], negative=[], frequency=freq,
                            group=_band(freq) if lexical else g["type"])
        units[k].positive.append(_wav(folder, g["filename"]))
        units[k].negative.append(_wav(folder, b["filename"]))
    if not units:
        raise SlamError(f"{folder}/gold.csv: no complete pairs")
    return Benchmark(name=folder.parent.name + "/" + folder.name, layout=layout, path=folder,
                     pairs=list(units.values()))


# --- slamkit's numbered folders (Spoken StoryCloze and the repackaged sets) ----------------------------------
_LEADING = re.compile(r"^(\d+)([_+])")


def _numbered(folder: Path) -> tuple[list[Path], str]:
    """The wavs of one folder in slamkit's order (by the integer before the first `_` or `+`)."""
    keyed, seps = [], set()
    for p in _visible(folder.glob("*.wav")):
        m = _LEADING.match(p.name)
        if not m:
            raise SlamError(f"{folder}: {p.name} does not start with '<n>_' or '<n>+' like the other files; "
                            f"{EXPECTED}")
        keyed.append((int(m.group(1)), p))
        seps.add(m.group(2))
    if len(seps) > 1:
        raise SlamError(f"{folder}: file names mix '<n>_' and '<n>+'; slamkit sorts one folder on one separator")
    seen: dict[int, Path] = {}
    for k, p in keyed:
        if k in seen:
            raise SlamError(f"{folder}: {seen[k].name} and {p.name} share the pairing key {k}; files are paired "
                            "2i/2i+1 after sorting on it, so the pairs would depend on directory order")
        seen[k] = p
    if len(keyed) < 2 or len(keyed) % 2:
        raise SlamError(f"{folder}: {len(keyed)} wav files; this layout needs an even number (pairs)")
    keyed.sort(key=lambda kp: kp[0])
    return [p for _, p in keyed], seps.pop()


def _pairs_of(files: list[Path], group: str | None = None) -> list[Pair]:
    def key(p: Path) -> str:
        return _LEADING.match(p.name).group(1)
    return [Pair(id=key(files[i]) if group is None else f"{group}/{key(files[i])}", positive=[files[i]],
                 negative=[files[i + 1]], group=group) for i in range(0, len(files), 2)]


def read_storycloze(folder: str | Path) -> Benchmark:
    """A flat folder of numbered wavs (sSC, tSC; or a flat slamkit folder with `+` keys)."""
    folder = Path(folder)
    files, sep = _numbered(folder)
    return Benchmark(name=folder.name, layout="storycloze" if sep == "_" else "slamkit-numbered", path=folder,
                     pairs=_pairs_of(files), details={"separator": sep})


def read_subfolders(folder: str | Path) -> Benchmark:
    """slamkit's `subfolder=True` folders: each subfolder paired on its own, all scored together."""
    folder = Path(folder)
    subs = [d for d in _visible(folder.iterdir()) if d.is_dir() and any(d.glob("*.wav"))]
    pairs, seps = [], set()
    for d in subs:  # sorted (slamkit takes directory order; the accuracy is the same, the pair list stable)
        files, sep = _numbered(d)
        seps.add(sep)
        pairs += _pairs_of(files, group=d.name)
    if not pairs:
        raise SlamError(f"{folder}: no subfolder of numbered wav files; {EXPECTED}")
    if len(seps) > 1:
        raise SlamError(f"{folder}: subfolders mix '<n>_' and '<n>+' file names")
    return Benchmark(name=folder.name, layout="slamkit-numbered", path=folder, pairs=pairs,
                     details={"separator": seps.pop(), "subfolders": len(subs)})


# --- SALMon and pairs.jsonl ---------------------------------------------------------------------------------
def read_salmon_part(folder: str | Path, name: str | None = None) -> Benchmark:
    folder = Path(folder)
    pairs = [Pair(id=str(i), positive=[pos], negative=[neg]) for i, pos, neg in salmon.read_part(folder)]
    return Benchmark(name=name or f"salmon/{folder.name}", layout="salmon", path=folder, pairs=pairs,
                     details={"part": folder.name})


def read_pairs_jsonl(path: str | Path) -> Benchmark:
    path = Path(path)
    pairs = []
    for n, r in read_jsonl_objects(path, "pairs file"):
        try:
            pos, neg = path.parent / r["positive"], path.parent / r["negative"]
        except (KeyError, TypeError) as e:
            raise SlamError(f"{path}:{n}: expected a JSON object with positive and negative paths ({e})") from None
        for p in (pos, neg):
            if not p.exists():
                raise SlamError(f"{path}:{n}: audio {p} does not exist")
        pairs.append(Pair(id=str(r.get("id", n)), positive=[pos], negative=[neg],
                          group=None if r.get("group") is None else str(r["group"])))
    if not pairs:
        raise SlamError(f"{path}: no pairs")
    name = path.parent.name if path.name == "pairs.jsonl" else path.stem
    return Benchmark(name=name, layout="pairs.jsonl", path=path, pairs=pairs)


# --- recognising a folder -----------------------------------------------------------------------------------
def _unrecognised(path: Path, found: str) -> SlamError:
    return SlamError(f"{path}: not a benchmark layout slam reads ({found}); {EXPECTED}")


def read_benchmark(path: str | Path) -> Benchmark:
    """Recognise the layout of `path` and read its pairs (a SALMon folder: use expand_bench)."""
    path = Path(path)
    if not path.exists():
        raise SlamError(f"benchmark {str(path)!r} does not exist")
    if path.is_file():
        if path.suffix == ".jsonl":
            return read_pairs_jsonl(path)
        if path.name == "gold.csv":
            return read_zerospeech(path.parent)
        raise _unrecognised(path, "a file that is neither a .jsonl nor a gold.csv")
    if (path / "pairs.jsonl").exists():
        return read_pairs_jsonl(path / "pairs.jsonl")
    if (path / "gold.csv").exists():
        return read_zerospeech(path)
    if salmon.is_root(path):
        raise SlamError(f"{path}: a SALMon folder of {len(salmon.PARTS)} parts; evaluate it with "
                        f"`--bench salmon={path}` (every part) or read one part folder (e.g. {path / salmon.PARTS[0]})")
    if salmon.is_part_folder(path):
        return read_salmon_part(path)
    wavs = _visible(path.glob("*.wav"))
    if wavs:
        if any(_LEADING.match(p.name) for p in wavs):
            return read_storycloze(path)
        zr = " (a ZeroSpeech 2021 split needs its gold.csv; the test split's is not distributed, its scores come " \
             "from an official submission)" if path.name in ("dev", "test") else ""
        raise _unrecognised(path, f"{len(wavs)} wav files named like {wavs[0].name}, no gold.csv, pairs.jsonl or "
                                  f"numbered names{zr}")
    subs = [d for d in _visible(path.iterdir()) if d.is_dir()]
    gold = [d.name for d in subs if (d / "gold.csv").exists()]
    if gold:
        raise SlamError(f"{path}: holds {', '.join(gold)}; pass one of them (e.g. {path / gold[0]})")
    if any(_LEADING.match(w.name) for d in subs for w in d.glob("*.wav")):
        return read_subfolders(path)
    raise _unrecognised(path, "no gold.csv, pairs.jsonl or wav files" + (
        f"; subfolders {', '.join(d.name for d in subs[:5])}" if subs else ""))


def expand_bench(name: str, path: str | Path) -> list[tuple[str, Benchmark]]:
    """The benchmarks one `--bench NAME=PATH` stands for: a SALMon folder -> its eight parts (NAME/<part>),
    `NAME/<part>=PATH` -> that part; anything else -> the one benchmark at PATH."""
    path = Path(path)
    tail = name.rpartition("/")[2]
    if path.is_dir() and (tail in salmon.PARTS or salmon.is_root(path)
                          or (path.name in salmon.PARTS and salmon.is_part_folder(path))):
        return [(n, read_salmon_part(f, n)) for n, f in salmon.salmon_parts(path, name)]
    return [(name, read_benchmark(path))]
