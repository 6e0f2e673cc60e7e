"""The one `slam` command. Thin on purpose: each subcommand lives in its stage's module, which exposes
`add_arguments(parser)` and `run(args) -> int`. Modules are imported only when their subcommand runs, so
`slam --help` stays fast and a broken optional stage cannot break the others."""

from __future__ import annotations

import argparse
import importlib
import sys

from slam.errors import SlamError

# subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "corpus": ("slam.synth.corpus_cli", "write the built-in story text, benchmark pairs and preference text"),
    "synth": ("slam.synth.cli", "speak a text file with a TTS into wavs + manifest.jsonl"),
    "fit-kmeans": ("slam.units.cli_kmeans", "fit the k-means of a tokenizer on frames of an audio folder"),
    "tokenize": ("slam.units.cli", "speech -> units dataset (parquet shards + meta.json)"),
    "train": ("slam.train.cli", "pre-train a speech LM within a budget"),
    "dpo": ("slam.train.dpo_cli", "preference optimisation (DPO) on spoken preference pairs"),
    "eval": ("slam.eval.cli", "sBLIMP / sSC / tSC / sWUGGY pair metrics and GenPPL"),
    "generate": ("slam.generate", "continue a spoken prompt and vocode the result"),
    "convert": ("slam.model_cli", "convert a published slamkit checkpoint into a slam model folder"),
    "demo": ("slam.demo", "the whole recipe in miniature, end to end on a CPU"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slam", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_) in COMMANDS.items():
        sub.add_parser(name, help=help_, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        parser = build_parser()
        if argv and argv[0] not in ("-h", "--help"):
            parser.error(f"unknown command {argv[0]!r}; choose from {', '.join(COMMANDS)}")
        parser.print_help()
        return 0
    name, rest = argv[0], argv[1:]
    module_name, help_ = COMMANDS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and e.name.startswith(module_name):
            print(f"slam {name}: not available in this version ({module_name} is missing)", file=sys.stderr)
            return 2
        raise
    parser = argparse.ArgumentParser(prog=f"slam {name}", description=help_)
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    try:
        return int(module.run(args) or 0)
    except SlamError as e:
        print(f"slam {name}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"slam {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
