"""What the recipe commands (`slam train`, `slam dpo`) share: RECIPE [key=value ...], --keys and --check."""

from __future__ import annotations

import argparse
from typing import TypeVar

import yaml

from slam.config import describe, load_recipe, shipped_recipes, to_dict
from slam.errors import ConfigError

C = TypeVar("C")


def add_recipe_arguments(parser: argparse.ArgumentParser, recipe_help: str, overrides_help: str) -> None:
    """RECIPE [key=value ...] plus --keys and --check, the flags anywhere on the line."""
    # intermixed: `slam train slam --check data.train=...` puts a flag between the positionals, which plain
    # parse_args refuses ("unrecognized arguments")
    parser.parse_args = parser.parse_intermixed_args  # type: ignore[method-assign]
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
        raise ConfigError(f"{missing}; shipped recipes: {', '.join(shipped_recipes())}")
    cfg = load_recipe(config_cls, args.recipe, args.overrides)
    if args.check:
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
        return None
    return cfg
