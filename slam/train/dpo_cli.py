"""`slam dpo RECIPE.yaml [key=value ...]`: preference optimisation (DPO) of a pre-trained speech LM.

    slam dpo slam-dpo model=runs/slam/final data.train=data/prefs/units out=runs/slam-dpo
    slam dpo runs/slam-dpo                                 # continue a killed run (its config.yaml)
    torchrun --nproc_per_node 2 -m slam.cli dpo slam-dpo model=runs/slam/final
    slam dpo --keys                                        # every recipe key with its default and meaning

Building the preference data (SpokenSwag-style: text triples -> auto-BLEU filter -> TTS -> units made by
the policy model's tokenizer; see slam/prefs.py):

    slam corpus --out corpus                               # corpus/prefs.jsonl: prompt/chosen/rejected text
    slam dpo --build-prefs corpus/prefs.jsonl --model runs/slam/final --out data/prefs [--max-auto-bleu 0.3]

RECIPE may name a shipped recipe by its name alone (`slam-dpo`).
"""

from __future__ import annotations

import argparse
import os

from slam.errors import ConfigError
from slam.train.cli import add_recipe_arguments, load_recipe, print_keys, recipe_or_check
from slam.train.dpo import DPOConfig


def load(recipe: str, overrides: list[str]) -> DPOConfig:
    return load_recipe(DPOConfig, recipe, overrides)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_recipe_arguments(parser, "recipe YAML, shipped recipe name (slam-dpo), or a run folder",
                         "dotted key=value overrides, e.g. model=runs/slam/final")
    g = parser.add_argument_group("building preference data (instead of training)")
    g.add_argument("--build-prefs", metavar="TEXT_JSONL", default=None,
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


def build(args: argparse.Namespace) -> int:
    from slam.prefs import build_spoken_prefs

    if not args.out:
        raise ConfigError("--build-prefs needs --out DIR")
    if args.workers < 1:
        raise ConfigError("--workers must be at least 1")
    voices = [v for item in (args.voices or []) for v in item.split(",") if v] or None
    s = build_spoken_prefs(args.build_prefs, args.out, model_dir=args.model, tokenizer=args.tokenizer,
                           voices=voices, workers=args.workers, backend=args.backend,
                           max_auto_bleu=None if args.max_auto_bleu < 0 else args.max_auto_bleu, limit=args.limit,
                           device=args.device)
    print(f"slam dpo --build-prefs: {s['rows']} text triples, {s['dropped_auto_bleu']} dropped by the auto-BLEU "
          f"filter (prompt+chosen >= {s['max_auto_bleu']}), {s['rows_dropped_tts']} by the TTS; {s['pairs']} "
          f"spoken pairs ({s['audio_seconds'] / 3600:.2f} h of audio) tokenised into {s['units']} (tokenizer "
          f"{s['tokenizer_hash'][:12]}); audio twin {s['audio_file']}; summary in {args.out}/build.json. "
          f"Train with: slam dpo slam-dpo model={args.model or 'MODEL'} data.train={s['units']}")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.keys:
        return print_keys(DPOConfig)
    if args.build_prefs:
        if args.recipe:
            raise ConfigError("--build-prefs builds data only; run training as a separate `slam dpo RECIPE`")
        return build(args)
    cfg = recipe_or_check(args, DPOConfig, "recipe: give a recipe YAML (or the shipped name slam-dpo), or "
                                           "--build-prefs")
    if cfg is None:
        return 0
    from slam.train.dpo import dpo

    dpo(cfg)
    return 0
