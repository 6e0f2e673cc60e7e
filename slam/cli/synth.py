"""`slam synth TEXT --out DIR [--voices V ...] [--workers N] [--backend espeak]`: speak a text file.

TEXT is a `.txt` file (one utterance per line, e.g. stories.txt or sentences.txt of `slam corpus`), a
`.jsonl` of {"id", "text", optional "voice"}, or a text pairs.jsonl / prefs.jsonl of `slam corpus`: then
DIR also gets the audio twin of that file (same rows, texts replaced by wav paths relative to it).
Output layout, resume and crash safety: see slam/synth/tts.py. Voices for espeak: LANGUAGE[+VARIANT][@RATE].
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from slam.errors import SlamError
from slam.synth import tts


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("text", type=Path, help="text to speak: .txt (a line each), .jsonl, or pairs/prefs jsonl")
    parser.add_argument("--out", required=True, type=Path, help="output folder (wavs/, manifest.jsonl)")
    parser.add_argument("--voices", nargs="+", default=None,
                        help="voices, given in turn over lines/rows (espeak default: "
                             "en-us@170 en-gb+f3@155 en-us+m3@185 en-gb-x-rp+f2@165); comma lists accepted")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="processes (default 2)")
    parser.add_argument("--backend", default="espeak", help="espeak (default) or package.module:Class")
    parser.add_argument("--limit", type=int, default=None, help="speak only the first N lines/rows")


def _is_pairs_file(path: Path) -> bool:
    if path.suffix != ".jsonl":
        return False
    with open(path) as f:
        first = f.readline()
    try:
        row = json.loads(first)
    except json.JSONDecodeError:
        return False
    return isinstance(row, dict) and "text" not in row and (
        all(k in row for k in tts.PAIR_FIELDS) or all(k in row for k in tts.PREF_FIELDS))


def run(args: argparse.Namespace) -> int:
    if args.workers < 1:
        raise SlamError("--workers must be at least 1")
    if args.limit is not None and args.limit < 0:  # a negative slice would silently drop lines from the end
        raise SlamError(f"--limit must be 0 or more, got {args.limit}")
    voices = [v for item in (args.voices or []) for v in item.split(",") if v] or None
    if voices is None:
        voices = list(tts.load_backend(args.backend).default_voices)
    if _is_pairs_file(args.text):
        src = args.text
        if args.limit is not None:  # a cut copy inside OUT, so the audio twin lists only what was spoken
            args.out.mkdir(parents=True, exist_ok=True)
            src = args.out / ".input" / args.text.name
            src.parent.mkdir(exist_ok=True)
            src.write_text("".join(args.text.read_text().splitlines(keepends=True)[: args.limit]))
        target, s = tts.synthesize_pairs(src, args.out, voices, workers=args.workers, backend=args.backend)
        print(f"slam synth: {tts.summary_line(s)}; {s['rows_written']} of {s['rows']} rows in {target} "
              f"({s['rows_dropped']} dropped for a rejected text).")
        return 0
    items = tts.read_text(args.text, voices)
    if args.limit is not None:
        items = items[: args.limit]
    s = tts.synthesize(items, args.out, backend=args.backend, workers=args.workers)
    print(f"slam synth: {tts.summary_line(s)}; voices {', '.join(voices)}; wavs under {args.out}/wavs.")
    return 0
