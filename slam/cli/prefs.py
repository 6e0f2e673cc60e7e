"""`slam prefs TEXT_JSONL --model MODEL --out DIR`: spoken preference pairs for DPO (SpokenSwag-style: text
triples -> auto-BLEU filter -> TTS -> units made by the policy model's tokenizer; see slam/prefs.py).

    slam corpus --out corpus                               # corpus/prefs.jsonl: prompt/chosen/rejected text
    slam prefs corpus/prefs.jsonl --model runs/slam/final --out data/prefs [--max-auto-bleu 0.3]
    slam dpo slam-dpo model=runs/slam/final data.train=data/prefs/units

`slam dpo --build-prefs TEXT_JSONL ...` does the same.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from slam.errors import ConfigError
from slam.prefs import build_spoken_prefs


def add_build_arguments(g: Any, text_flag: str | None = None) -> None:
    """The builder's options on a parser or argument group; `text_flag` names the input as an option
    (`slam dpo --build-prefs`) instead of a positional argument."""
    if text_flag:
        g.add_argument(text_flag, metavar="TEXT_JSONL", default=None,
                       help="text triples (id, prompt, chosen, rejected) to speak and tokenise into OUT/units")
    else:
        g.add_argument("text", metavar="TEXT_JSONL",
                       help="text triples (id, prompt, chosen, rejected) to speak and tokenise into OUT/units")
    g.add_argument("--model", default=None, help="model folder whose speech tokenizer makes the units")
    g.add_argument("--tokenizer", default=None, help="tokenizer spec, for a model folder that names none")
    g.add_argument("--out", default=None, help="output folder (text/, audio/, units/, build.json)")
    g.add_argument("--voices", nargs="+", default=None, help="TTS voices, one per row in turn (default: backend's)")
    g.add_argument("--backend", default="espeak", help="TTS backend: espeak or package.module:Class")
    g.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="TTS / tokenizer processes")
    g.add_argument("--max-auto-bleu", type=float, default=0.3,
                   help="drop pairs whose prompt+chosen bigram auto-BLEU is >= this (the paper: 0.3; "
                        "a negative value keeps every pair)")
    g.add_argument("--limit", type=int, default=None, help="only the first N text triples")
    g.add_argument("--device", default=None, help="HuBERT device (default: cuda when present)")




def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_build_arguments(parser)


def build(args: argparse.Namespace) -> int:
    if not args.out:
        raise ConfigError("--out: give the output folder (text/, audio/, units/, build.json)")
    if args.workers < 1:
        raise ConfigError("--workers must be at least 1")
    voices = [v for item in (args.voices or []) for v in item.split(",") if v] or None
    s = build_spoken_prefs(args.text, args.out, model_dir=args.model, tokenizer=args.tokenizer,
                           voices=voices, workers=args.workers, backend=args.backend,
                           max_auto_bleu=None if args.max_auto_bleu < 0 else args.max_auto_bleu, limit=args.limit,
                           device=args.device)
    print(f"slam prefs: {s['rows']} text triples, {s['dropped_auto_bleu']} dropped by the auto-BLEU "
          f"filter (prompt+chosen >= {s['max_auto_bleu']}), {s['rows_dropped_tts']} by the TTS; {s['pairs']} "
          f"spoken pairs ({s['audio_seconds'] / 3600:.2f} h of audio) tokenised into {s['units']} (tokenizer "
          f"{s['tokenizer_hash'][:12]}); audio twin {s['audio_file']}; summary in {args.out}/build.json. "
          f"Train with: slam dpo slam-dpo model={args.model or 'MODEL'} data.train={s['units']}")
    return 0



def run(args: argparse.Namespace) -> int:
    return build(args)
