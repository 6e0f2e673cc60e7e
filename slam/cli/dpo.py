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

from slam.errors import ConfigError
from slam.cli.recipe import add_recipe_arguments, print_keys, recipe_or_check
from slam.cli.prefs import add_build_arguments, build
from slam.train.config import DPOConfig
from slam.train.dpo import dpo


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_recipe_arguments(parser, "recipe YAML, shipped recipe name (slam-dpo), or a run folder",
                         "dotted key=value overrides, e.g. model=runs/slam/final")
    add_build_arguments(parser.add_argument_group("building preference data (instead of training; same as "
                                                   "`slam prefs`)"), text_flag="--build-prefs")


def run(args: argparse.Namespace) -> int:
    if args.keys:
        return print_keys(DPOConfig)
    if args.build_prefs:
        if args.recipe:
            raise ConfigError("--build-prefs builds data only; run training as a separate `slam dpo RECIPE`")
        args.text = args.build_prefs
        return build(args)
    cfg = recipe_or_check(args, DPOConfig, "recipe: give a recipe YAML (or the shipped name slam-dpo), or "
                                           "--build-prefs")
    if cfg is None:
        return 0
    dpo(cfg)
    return 0
