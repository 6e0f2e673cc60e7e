"""The one `slam` command. Thin on purpose: each subcommand is a short module of this package exposing
`add_arguments(parser)` and `run(args) -> int`, which parses nothing itself and calls one library function.
A subcommand's module is imported only when it runs, so `slam --help` stays fast and a broken optional stage
cannot break the others. User errors (SlamError) end as one line and exit code 2."""

from __future__ import annotations

import argparse
import errno
import importlib
import sys

from slam.errors import EnvironmentFailure, SlamError

# Failures of the machine, not of the input (full disk, quota, I/O error, too many open files, read-only file
# system): one line and exit code 1, never recorded as a bad input by any stage.
ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EMFILE, errno.ENFILE, errno.EROFS, errno.ENOMEM}

DESCRIPTION = ("Train, evaluate and use spoken language models the Slamming way: each command below is one "
               "stage, from text and audio to units, training, preference alignment, evaluation and generation.")

# subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "corpus": ("slam.cli.corpus", "Write the built-in story text, benchmark pairs and preference text."),
    "synth": ("slam.cli.synth", "Speak a text file with a TTS into wavs and a manifest.jsonl."),
    "fit-kmeans": ("slam.cli.fit_kmeans", "Fit the k-means of a tokenizer on frames of an audio folder."),
    "tokenize": ("slam.cli.tokenize", "Turn speech into a units dataset (parquet shards and meta.json)."),
    "train": ("slam.cli.train", "Pre-train a speech LM within a budget."),
    "prefs": ("slam.cli.prefs", "Build spoken preference pairs (text triples -> speech -> units) for DPO."),
    "dpo": ("slam.cli.dpo", "Align a speech LM with preference optimisation (DPO) on spoken pairs."),
    "eval": ("slam.cli.eval", "Score a model on sBLIMP / sWUGGY / sSC / tSC pairs and GenPPL."),
    "generate": ("slam.cli.generate", "Continue a spoken (or text) prompt and vocode the result."),
    "convert": ("slam.cli.convert", "Convert a published slamkit checkpoint into a slam model folder."),
    "import-slamkit": ("slam.cli.import_slamkit", "Import slamkit's features/tokens or preference jsonl files."),
    "push": ("slam.cli.push", "Upload a model folder to the Hugging Face hub with a generated model card."),
    "demo": ("slam.cli.demo", "Run the whole recipe in miniature, end to end on a CPU."),
    "report": ("slam.cli.report", "Write the report of a demo folder (markdown, HTML and plots)."),
    "text-tokenizer": ("slam.cli.text_tokenizer", "Fit a word-level text tokenizer (the demo's text LM)."),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slam", description=DESCRIPTION,
                                     epilog="`slam COMMAND --help` describes a command's options.")
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
    except EnvironmentFailure as e:  # before SlamError, its base: the input was fine, the machine was not
        print(f"slam {name}: error: {e}", file=sys.stderr)
        return 1
    except SlamError as e:
        print(f"slam {name}: error: {e}", file=sys.stderr)
        return 2
    except UnicodeDecodeError as e:  # a reader that does not name its file: still one line, still a user error
        print(f"slam {name}: error: an input file is not UTF-8 text (byte {e.start}: {e.reason}); convert it to "
              f"UTF-8", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno not in ENVIRONMENT_ERRNOS:
            raise
        # the machine, not the input: nothing was recorded as a bad input; a rerun resumes where this stopped
        where = f" ({e.filename})" if e.filename else ""
        print(f"slam {name}: error: {e.strerror}{where}; fix the environment and rerun the same command to "
              f"resume", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"slam {name}: interrupted", file=sys.stderr)
        return 130

