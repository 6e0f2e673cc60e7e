"""SALMon (slp-rl/salmon): eight acoustic-consistency and alignment tests, read from the released folders.

    parts = salmon_parts("salmon_benchmark", "salmon")          # [("salmon/bg_alignment", folder), ...]
    samples = read_part(folder)                                  # [(i, positive.wav, negative.wav)]

Released layout: `<root>/<part>/sample_<i>_<j>.wav`, one folder per part. The files of sample i, sorted as
strings, are (positive, negative): `sample_<i>_0.wav` is the consistent (or aligned) one. The
official `salmon.py` and slamkit's `SalmonDataset` both read it this way and compare the two likelihoods, a tie
counting 0.5; the number of a part is the mean over its samples (no average over parts is published).

A sample with one file, or with more than two, is refused: the official scorer cannot unpack it (it zips
each sample into exactly one positive and one negative) and slamkit would fail on one file or silently drop
the third.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

from slam.errors import SlamError

# In the order of slamkit's `parts=['all']` and the official `-p all`.
PARTS = ("bg_alignment", "bg_all_consistency", "bg_domain_consistency", "gender_consistency",
         "rir_consistency", "sentiment_alignment", "sentiment_consistency", "speaker_consistency")
SAMPLE = re.compile(r"^sample_(\d+)_(\d+)\.wav$")


def is_part_folder(folder: Path) -> bool:
    """A folder whose wavs are all `sample_<i>_<j>.wav` (at least one)."""
    names = [p.name for p in folder.glob("*.wav")]
    return bool(names) and all(SAMPLE.match(n) for n in names)


def is_root(folder: Path) -> bool:
    """A folder holding at least one SALMon part folder."""
    return any((folder / p).is_dir() and is_part_folder(folder / p) for p in PARTS)


def read_part(folder: str | Path) -> list[tuple[int, Path, Path]]:
    """(sample index, positive, negative) of one part, by sample index."""
    folder = Path(folder)
    by_sample: dict[int, list[Path]] = defaultdict(list)
    for p in folder.glob("*.wav"):
        m = SAMPLE.match(p.name)
        if not m:
            raise SlamError(f"{folder}: {p.name} is not named sample_<i>_<j>.wav (the SALMon layout)")
        by_sample[int(m.group(1))].append(p)
    if not by_sample:
        raise SlamError(f"{folder}: no sample_<i>_<j>.wav files (a SALMon part folder)")
    out = []
    for i in sorted(by_sample):
        files = sorted(by_sample[i], key=str)  # as both scorers: string order of the paths
        if len(files) != 2:
            raise SlamError(f"{folder}: sample {i} has {len(files)} file(s) ({', '.join(f.name for f in files)}); "
                            "a SALMon sample is exactly one positive and one negative")
        out.append((i, files[0], files[1]))
    return out


def salmon_parts(path: str | Path, name: str = "salmon") -> list[tuple[str, Path]]:
    """The parts a `--bench NAME=PATH` asks for: NAME `salmon` and a root -> all eight (named salmon/<part>);
    NAME ending in `/<part>` -> that part, from PATH/<part> or from PATH itself when it is the part folder;
    PATH a part folder -> that part (named NAME/<part>)."""
    path = Path(path)
    head, _, tail = name.rpartition("/")
    if tail in PARTS:
        folder = path / tail if (path / tail).is_dir() else path
        if not is_part_folder(folder):
            raise SlamError(f"--bench {name}={path}: neither {path / tail} nor {path} holds sample_<i>_<j>.wav "
                            f"files of the SALMon part {tail}")
        return [(name, folder)]
    if path.name in PARTS and is_part_folder(path):  # `salmon=ROOT/<part>`: that part alone
        return [(f"{name}/{path.name}", path)]
    missing = [p for p in PARTS if not ((path / p).is_dir() and is_part_folder(path / p))]
    if missing:
        raise SlamError(f"--bench {name}={path}: the SALMon parts {', '.join(missing)} are missing (a SALMon folder "
                        f"holds all eight: {', '.join(PARTS)}); to run one part give {name}/<part>=PATH")
    return [(f"{name}/{p}", path / p) for p in PARTS]
