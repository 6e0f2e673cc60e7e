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

from slam.config import describe, load_config
from slam.errors import ConfigError
from slam.train.config import TrainConfig

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


def load(recipe: str, overrides: list[str]) -> TrainConfig:
    path, implied = resolve_recipe(recipe)
    return load_config(TrainConfig, path, implied + list(overrides))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", nargs="?", help="recipe YAML, shipped recipe name, or a run folder to resume")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. optim.lr=5e-4 budget.time=90m")
    parser.add_argument("--keys", action="store_true", help="list every recipe key with its default and meaning")
    parser.add_argument("--check", action="store_true", help="load and validate the recipe, print it, do not train")


def run(args: argparse.Namespace) -> int:
    if args.keys:
        for key, default, doc in describe(TrainConfig):
            print(f"{key} = {default}\n    {' '.join(doc.split())}")
        return 0
    if not args.recipe:
        raise ConfigError("recipe: give a recipe YAML (or a shipped name: slam, slam-scaled, twist-original, "
                          "tiny-cpu)")
    cfg = load(args.recipe, args.overrides)
    if args.check:
        import yaml

        from slam.config import to_dict

        print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
        return 0
    from slam.train.loop import train

    train(cfg)
    return 0
