"""x-realtime of `slam tokenize`, end to end (process start, decode, features, k-means, dedup, parquet).

    .venv/bin/python bench/tokenize_units.py                 # mel: 2160 files (~6 h) + HuBERT-base: 4 files
    .venv/bin/python bench/tokenize_units.py --mel-files 100 --hubert-files 0

Corpus: deterministic speech-like 16 kHz wavs (tests/conftest.py's synth_speechlike), 4-16 s each (mean
10 s, LibriSpeech-like), written to a temp folder (120 distinct files, the rest hard links to them: the same decode work, and like
any warm corpus it is read from the page cache); a 200-unit mel k-means fitted on it (not timed).

Three figures per configuration: end to end = audio seconds / wall seconds of the whole command (process
start and imports included, ~2-3 s, which a longer corpus amortises); loop = slam's own figure for its
tokenize loop (what the progress bar shows); per CPU-s = audio seconds / CPU seconds of the process tree,
the figure least disturbed by other load on the machine, also shown without the fixed start-up cost
(CPU of the same command rerun on the finished folder: imports, tokenizer load, resume scan).
Each configuration runs `slam tokenize` as a subprocess into a fresh folder; candidate and baseline are
interleaved and repeated, and the median is reported. The baseline is the same command with one file at a
time in one process (`--workers 1`, and `--batch-size 1` for HuBERT), as a straightforward loop would do (for HuBERT also a padded batch of 4, which a GPU run would use).

HuBERT: a randomly initialised model with mHuBERT-base-25Hz's exact shapes (12 layers, 768 wide, 8 convs of
512, conv_pos_batch_norm) and so the same FLOPs, with 500 random centroids; only speed is measured.
"""

from __future__ import annotations

import sys

# Run as a script, this file's folder comes first on sys.path, and its name would shadow the standard
# library's `tokenize` module (imported by inspect, linecache...): drop that entry before anything else.
sys.path[:] = [p for p in sys.path if p not in ("", __file__.rsplit("/", 1)[0]) and not p.endswith("/bench")]

import argparse
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from conftest import synth_speechlike  # noqa: E402

SLAM = [sys.executable, "-m", "slam.cli"]


def make_corpus(folder: Path, n: int, seed: int = 0, distinct: int = 120) -> float:
    """n files of 4-16 s; beyond `distinct` they are hard links to earlier ones (same decode work, no disk)."""
    rng = np.random.default_rng(seed)
    total = 0.0
    made: list[tuple[Path, float]] = []
    for i in range(n):
        sub = folder / f"spk{i % 20:02d}"
        sub.mkdir(parents=True, exist_ok=True)
        path = sub / f"utt{i:05d}.wav"
        if i < distinct:
            sec = int(float(rng.uniform(4, 16)) * 16000) / 16000
            sf.write(path, synth_speechlike(sec, seed=seed * 100000 + i), 16000, subtype="PCM_16")
            made.append((path, sec))
        else:
            src, sec = made[i % distinct]
            try:
                os.link(src, path)
            except OSError:
                shutil.copyfile(src, path)
        total += sec
    return total


def timed(cmd: list[str], out: Path, fresh: bool = True) -> tuple[float, float, float]:
    """(wall s, CPU s of the whole process tree, slam's own x-realtime for its tokenize loop)."""
    if fresh:
        shutil.rmtree(out, ignore_errors=True)
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    proc = subprocess.run(cmd + ["--out", str(out)], check=True, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    m = re.search(r"([\d,]+)x realtime", proc.stdout)
    return wall, cpu, float(m.group(1).replace(",", "")) if m else float("nan")


def compare(name: str, runs: dict[str, list[str]], seconds: float, tmp: Path, repeats: int) -> dict:
    res: dict[str, list[tuple[float, float, float]]] = {k: [] for k in runs}
    fixed: dict[str, float] = {}
    for r in range(repeats):
        for label, cmd in runs.items():  # interleaved: both see the same machine load
            out = tmp / f"out-{abs(hash(label))}"
            res[label].append(timed(cmd, out))
            if r == 0:  # the same command again on the finished folder: start-up + resume scan, no work
                fixed[label] = timed(cmd, out, fresh=False)[1]
    load = os.getloadavg()[0]
    print(f"\n{name}: {seconds / 60:.1f} min of audio, {repeats} interleaved repeats, medians "
          f"(1-min load average at the end: {load:.1f} on {os.cpu_count()} cores)")
    print(f"  {'configuration':<44} {'wall s':>7} {'x-rt end to end':>16} {'x-rt loop':>10} "
          f"{'x-rt per CPU-s':>15} {'(start-up excl.)':>17}")
    out = {}
    for label, runs_ in res.items():
        wall = statistics.median(w for w, _, _ in runs_)
        cpu = statistics.median(c for _, c, _ in runs_)
        loop = statistics.median(x for _, _, x in runs_)
        work = max(cpu - fixed[label], 1e-3)
        out[label] = (seconds / wall, loop, seconds / cpu, seconds / work)

        def f(x: float, w: int) -> str:
            return f"{x:{w},.0f}x" if x >= 100 else f"{x:{w}.1f}x"

        print(f"  {label:<44} {wall:7.2f} {f(seconds / wall, 15)} {f(loop, 9)} {f(seconds / cpu, 14)} "
              f"{f(seconds / work, 16)}   (walls: {', '.join(f'{w:.2f}' for w, _, _ in runs_)})")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mel-files", type=int, default=2160, help="~6 h of audio at the default")
    ap.add_argument("--hubert-files", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, {platform.processor() or ''} "
          f"python {platform.python_version()}; command: {' '.join(sys.argv)}")
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        if args.mel_files:
            import torch

            from slam.units.kmeans import fit_kmeans
            from slam.units.melkmeans import MelFeatures, MelParams

            torch.set_num_threads(1)
            seconds = make_corpus(tmp / "mel", args.mel_files)
            feats = MelFeatures()
            frames = np.concatenate([feats(synth_speechlike(10.0, seed=10_000 + i)) for i in range(40)])
            fit_kmeans(frames, 200, seed=0, params={"kind": "mel", **MelParams().to_dict()}, n_init=1).save(
                tmp / "km200.npz")
            base = SLAM + ["tokenize", str(tmp / "mel"), "--tokenizer", f"mel:{tmp / 'km200.npz'}"]
            compare("mel tokenizer (log-mel 25 Hz + k-means 200, dedup)", {
                f"slam tokenize --workers {args.workers}": base + ["--workers", str(args.workers)],
                "baseline: --workers 1": base + ["--workers", "1"],
            }, seconds, tmp, args.repeats)
        if args.hubert_files:
            import torch
            from transformers import HubertConfig, HubertModel

            seconds = make_corpus(tmp / "hub", args.hubert_files, seed=1)
            cfg = HubertConfig(conv_stride=[5, 2, 2, 2, 2, 2, 2, 2], conv_kernel=[10, 3, 3, 3, 3, 2, 2, 2],
                               conv_dim=[512] * 8, conv_pos_batch_norm=True)
            torch.manual_seed(0)
            HubertModel(cfg).save_pretrained(tmp / "hubert")
            np.save(tmp / "km500.npy", np.random.default_rng(0).standard_normal((500, 768)).astype(np.float32))
            base = SLAM + ["tokenize", str(tmp / "hub"), "--tokenizer",
                           f"hubert:{tmp / 'hubert'}@11:{tmp / 'km500.npy'}", "--device", "cpu"]
            compare("HuBERT-base 25 Hz layout, random weights, layer 11, k-means 500, CPU", {
                f"slam tokenize --workers {args.workers} (CPU: batch 1)": base + ["--workers", str(args.workers)],
                f"slam tokenize --workers {args.workers} --batch-size 4":
                    base + ["--batch-size", "4", "--workers", str(args.workers)],
                "baseline: --batch-size 1 --workers 1": base + ["--batch-size", "1", "--workers", "1"],
            }, seconds, tmp, max(1, args.repeats - 1))


if __name__ == "__main__":
    main()
