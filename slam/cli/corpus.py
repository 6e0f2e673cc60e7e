"""`slam corpus --out DIR [--stories N --pairs N --prefs N --seed S --topics N]`: write the built-in story
text, the held-out benchmark pairs and the preference text (layout: see slam/synth/corpus.py)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from slam.synth import corpus


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--stories", type=int, default=20000, help="training stories (default 20000)")
    parser.add_argument("--pairs", type=int, default=1000, help="pairs per benchmark: grammar, story, topic")
    parser.add_argument("--prefs", type=int, default=2000, help="preference triples (DPO training text)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; same seed, same text")
    parser.add_argument("--topics", type=int, default=None,
                        help="use only the first N of the 8 topics (default all): more stories per topic")


def run(args: argparse.Namespace) -> int:
    t0 = time.time()
    s = corpus.write(args.out, stories=args.stories, pairs=args.pairs, prefs=args.prefs, seed=args.seed,
                     progress=True, topics=args.topics)
    print(f"slam corpus: wrote {s['stories']} training stories ({s['distinct_stories']} distinct, {s['words']} "
          f"words, {s['distinct_sentences']} distinct sentences, {len(s['vocabulary'])}-word vocabulary, "
          f"{len(s['topics'])} topics) to {args.out}/stories.txt and sentences.txt; held-out pairs "
          f"{', '.join(f'{k} {v}' for k, v in s['pairs'].items())} under {args.out}/bench/*/pairs.jsonl; "
          f"{s['prefs']} preference triples in prefs.jsonl; seed {s['seed']}, {time.time() - t0:.1f}s.")
    return 0
