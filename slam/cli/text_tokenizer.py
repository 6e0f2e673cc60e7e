"""`slam text-tokenizer TEXT... --out DIR`: a word-level HF tokenizer folder for a small closed-vocabulary text
corpus (the demo's text LM; slam.demo.textlm)."""

from __future__ import annotations

import argparse

from slam.demo.textlm import train_tokenizer


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("text", nargs="+", help="UTF-8 text files (e.g. stories.txt of `slam corpus`)")
    p.add_argument("--out", required=True, help="tokenizer folder to write")
    p.add_argument("--min-frequency", type=int, default=1, help="drop words seen fewer times (default 1)")


def run(args: argparse.Namespace) -> int:
    s = train_tokenizer(args.text, args.out, args.min_frequency)
    print(f"slam text-tokenizer: word-level tokenizer of {s['vocab_size']} tokens (pad {s['pad_id']}, <s>/</s> "
          f"{s['eos_id']}, unk {s['unk_id']}) fitted on {', '.join(s['files'])}; wrote {s['out']} (an HF "
          f"tokenizer folder for `slam train ... data.kind=text data.text_tokenizer={s['out']}`).")
    return 0
