"""Benchmark: speech synthesis throughput (utterances/s, x realtime) and word-time accuracy.

    .venv/bin/python bench/synth.py [--sentences 400 --rounds 3] [--stories]

Candidates, interleaved in each round on the same sentences (or, with --stories, whole stories: what the demo
speaks, ~4x longer) of the built-in corpus (4 default voices in turn),
each writing 16 kHz wavs to a fresh folder:
  naive-1 / naive-2   the straightforward way: one `espeak-ng --stdout` process per sentence, soxr to
                      16 kHz, a wav written; no word times, no manifest (1 or 2 worker processes)
  slam-1 / slam-2     `slam.synth.tts.synthesize` with the espeak backend (libespeak-ng in-process, word times
                      from engine events, atomic wavs, fsynced manifest), 1 or 2 workers
  wordwise-1          word times by the other method: each word synthesised alone with the library,
                      joined by 100 ms pauses (times known by construction), 1 worker
Word-time accuracy of the event method: for two-sentence texts, |event start of the second sentence's
first word - onset of speech after the pause| (energy onset, 10 ms frames, -30 dB gate).
Other load on the machine slows every method: the 1-minute load average is printed with each run, and
beside wall-clock rates the CPU time of the run (this process and its reaped children, user + sys) gives
"x realtime per CPU-second", which contention changes much less.
"""

from __future__ import annotations

import sys
from pathlib import Path


import argparse
import io
import os
import resource
import shutil
import subprocess
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import soundfile as sf
import soxr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from slam.synth import corpus, tts  # noqa: E402
from slam.synth.espeak import DEFAULT_VOICES, EspeakBackend, parse_voice  # noqa: E402


def _naive_one(job: tuple[int, str, str, str]) -> float:
    i, text, voice, out = job
    lang, variant, rate = parse_voice(voice)
    v = f"{lang}+{variant}" if variant else lang
    wav_bytes = subprocess.run(["espeak-ng", "--stdout", "-v", v, "-s", str(rate), text], capture_output=True,
                               check=True).stdout
    x, sr = sf.read(io.BytesIO(wav_bytes), dtype="float32")
    y = soxr.resample(x, sr, 16000)
    sf.write(f"{out}/{i}.wav", y, 16000, subtype="PCM_16")
    return len(y) / 16000


def naive(items, out, workers):
    jobs = [(i, u.text, u.voice, out) for i, u in enumerate(items)]
    if workers == 1:
        return sum(map(_naive_one, jobs))
    with ProcessPoolExecutor(workers) as ex:
        return sum(ex.map(_naive_one, jobs, chunksize=8))


def slam_runner(items, out, workers):
    return tts.synthesize(items, out, workers=workers, progress=False)["audio_seconds"]


def wordwise(items, out, workers):
    b = EspeakBackend()
    pause = np.zeros(1600, np.float32)
    total = 0.0
    for i, u in enumerate(items):
        parts, times, t = [], [], 0.0
        for w in u.text.split():
            a, _ = b.synthesize(w, u.voice)
            parts += [a, pause]
            times.append((w, t, t + len(a) / 16000))
            t += (len(a) + len(pause)) / 16000
        y = np.concatenate(parts)
        sf.write(f"{out}/{i}.wav", y, 16000, subtype="PCM_16")
        total += len(y) / 16000
    return total


def start_error(n: int = 100) -> tuple[float, float]:
    """Median and 95th percentile |event start - energy onset| (ms) of words that follow a sentence pause."""
    b = EspeakBackend()
    sents = (corpus.build(stories=200, pairs=1, prefs=1, seed=1)["stories"])
    errs = []
    for k, story in enumerate(sents[:n]):
        s = corpus.split_sentences(story)
        text = f"{s[0]} {s[1]}"
        wav, words = b.synthesize(text, DEFAULT_VOICES[k % 4])
        n0 = len(s[0].split())
        prev_end, start = words[n0 - 1][2], words[n0][1]
        hop = 160
        e = (wav[: len(wav) // hop * hop].reshape(-1, hop) ** 2).mean(1)
        on = e > 1e-3 * e.max()
        i = int(prev_end * 100) + 1
        while i < len(on) and on[i]:  # leave the first word's tail
            i += 1
        while i < len(on) and not on[i]:  # through the pause to the onset of the next sentence
            i += 1
        errs.append(abs(start - i / 100) * 1000)
    return float(np.median(errs)), float(np.percentile(errs, 95))


def _cpu() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sentences", type=int, default=400)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--stories", action="store_true", help="speak whole stories (one per utterance)")
    args = ap.parse_args()
    stories = corpus.build(stories=args.sentences, pairs=1, prefs=1)["stories"]
    sentences = stories if args.stories else corpus.split_sentences(" ".join(stories))
    items = [tts.Utterance(f"s{i:05d}", t, DEFAULT_VOICES[i % 4]) for i, t in enumerate(sentences[: args.sentences])]
    runs = [("naive-1", naive, 1), ("slam-1", slam_runner, 1), ("wordwise-1", wordwise, 1),
            ("naive-2", naive, 2), ("slam-2", slam_runner, 2)]
    results: dict[str, list[tuple[float, float, float]]] = {name: [] for name, _, _ in runs}
    print(f"{len(items)} {'stories' if args.stories else 'sentences'}, {os.cpu_count()} CPUs, {args.rounds} rounds")
    for r in range(args.rounds):
        for name, fn, workers in runs:
            out = tempfile.mkdtemp(prefix=f"bench-synth-{name}-")
            load = os.getloadavg()[0]
            cpu0 = _cpu()
            t0 = time.perf_counter()
            audio = fn(items, out, workers)
            wall = time.perf_counter() - t0
            cpu = _cpu() - cpu0
            shutil.rmtree(out)
            results[name].append((len(items) / wall, audio / wall, audio / cpu, load))
            print(f"round {r}  {name:11s} {len(items) / wall:7.1f} utt/s  {audio / wall:7.1f}x realtime  "
                  f"{audio / cpu:7.1f}x per CPU-s  ({audio:.0f} s audio in {wall:.2f} s, {cpu:.2f} CPU-s, "
                  f"load {load:.2f})", flush=True)
    print("\n| method | workers | utterances/s | x realtime (wall) | x realtime per CPU-second | 1-min load |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, _, workers in runs:
        u, x, xc, ld = np.array(results[name]).T
        print(f"| {name} | {workers} | {np.median(u):.0f} | {np.median(x):.0f} | {np.median(xc):.0f} | "
              f"{ld.min():.1f}-{ld.max():.1f} |")
    print("(medians over rounds)")
    med, p95 = start_error()
    print(f"\nword start after a sentence pause vs energy onset: median {med:.0f} ms, 95th percentile {p95:.0f} ms")


if __name__ == "__main__":
    main()
