"""`slam train RECIPE.yaml [key=value ...]`: pre-train a speech LM within a budget.

    slam train slam/recipes/tiny-cpu.yaml data.train='[{path: units/}]' out=runs/tiny
    slam train runs/tiny resume=true                       # continue a killed run (its config.yaml)
    torchrun --nproc_per_node 2 -m slam.cli train recipe.yaml dist.strategy=fsdp
    slam train --keys                                      # every recipe key with its default and meaning

RECIPE may name a shipped recipe by its name alone (`slam train --help` lists them).
"""

from __future__ import annotations

import argparse

from slam.cli.recipe import add_recipe_arguments, print_keys, recipe_or_check
from slam.config import shipped_recipes
from slam.train.config import TrainConfig
from slam.train.pretrain import train


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_recipe_arguments(parser, "recipe YAML, a run folder to resume, or a shipped recipe's name: "
                                 + ", ".join(shipped_recipes()),
                         "dotted key=value overrides, e.g. optim.lr=5e-4 budget.time=90m")


def run(args: argparse.Namespace) -> int:
    if args.keys:
        return print_keys(TrainConfig)
    cfg = recipe_or_check(args, TrainConfig, "recipe: give a recipe YAML, a run folder or a shipped recipe's name")
    if cfg is None:
        return 0
    train(cfg)
    return 0
