"""`slam train RECIPE.yaml [key=value ...]`: pre-train a speech LM within a budget.

    slam train slam/recipes/tiny-cpu.yaml data.train='[{path: units/}]' out=runs/tiny
    slam train runs/tiny resume=true                       # continue a killed run (its config.yaml)
    torchrun --nproc_per_node 2 -m slam.cli train recipe.yaml dist.strategy=fsdp
    slam train --keys                                      # every recipe key with its default and meaning

RECIPE may name a shipped recipe by its name alone (`slam`, `slam-scaled`, `twist-original`, `tiny-cpu`).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TypeVar

from slam.config import describe, load_config
from slam.errors import ConfigError
from slam.train.config import TrainConfig

C = TypeVar("C")

RECIPES = Path(__file__).resolve().parent.parent / "recipes"


def resolve_recipe(recipe: str) -> tuple[Path, list[str]]:
    """A YAML file, a shipped recipe name, or a run folder (then its config.yaml and resume=true)."""
    p = Path(recipe)
    if p.is_dir() and (p / "config.yaml").exists():
        return p / "config.yaml", [f"out={p}", "resume=true"]
    if "/" not in recipe and (RECIPES / f"{recipe}.yaml").exists():
        return RECIPES / f"{recipe}.yaml", []
    if p.is_dir():
        raise ConfigError(f"recipe: {recipe!r} is a folder without config.yaml (not a run folder)")
    return p, []


def load_recipe(config_cls: type[C], recipe: str, overrides: list[str]) -> C:
    path, implied = resolve_recipe(recipe)
    return load_config(config_cls, path, implied + list(overrides))


def load(recipe: str, overrides: list[str]) -> TrainConfig:
    return load_recipe(TrainConfig, recipe, overrides)


# --- shared with `slam dpo` (slam/train/dpo_cli.py) ---------------------------------------------------------
def add_recipe_arguments(parser: argparse.ArgumentParser, recipe_help: str, overrides_help: str) -> None:
    """RECIPE [key=value ...] plus --keys and --check."""
    parser.add_argument("recipe", nargs="?", help=recipe_help)
    parser.add_argument("overrides", nargs="*", help=overrides_help)
    parser.add_argument("--keys", action="store_true", help="list every recipe key with its default and meaning")
    parser.add_argument("--check", action="store_true", help="load and validate the recipe, print it, do not train")


def print_keys(config_cls: type) -> int:
    """`--keys`: every recipe key with its default and meaning."""
    for key, default, doc in describe(config_cls):
        print(f"{key} = {default}\n    {' '.join(doc.split())}")
    return 0


def recipe_or_check(args: argparse.Namespace, config_cls: type[C], missing: str) -> C | None:
    """The validated recipe of `args` (ConfigError `missing` without one); None when `--check` only asked to
    print it (done here)."""
    if not args.recipe:
        raise ConfigError(missing)
    cfg = load_recipe(config_cls, args.recipe, args.overrides)
    if args.check:
        import yaml

        from slam.config import to_dict

        print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
        return None
    return cfg


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_recipe_arguments(parser, "recipe YAML, shipped recipe name, or a run folder to resume",
                         "dotted key=value overrides, e.g. optim.lr=5e-4 budget.time=90m")


def run(args: argparse.Namespace) -> int:
    if args.keys:
        return print_keys(TrainConfig)
    cfg = recipe_or_check(args, TrainConfig, "recipe: give a recipe YAML (or a shipped name: slam, slam-scaled, "
                                             "twist-original, tiny-cpu)")
    if cfg is None:
        return 0
    from slam.train.loop import train

    train(cfg)
    return 0
