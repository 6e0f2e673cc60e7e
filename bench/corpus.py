"""Benchmark: can the built-in benchmarks be solved from the built-in training text, at the text level?

    .venv/bin/python bench/corpus.py [--stories 20000 --pairs 1000]

A sanity check of the generator, not of a speech LM: word-level LMs are fitted on stories.txt and score the
held-out pairs the way `slam eval` does (mean NLL per word, end of utterance included; lower wins, ties 0.5):
  trigram        add-0.1 smoothed word trigram: sees only a two-word window, so it solves local grammar but
                 not story or topic cloze, whose cue is sentences back (expected near 50% there)
  trigram+cache  the trigram mixed (lambda 0.2) with a unigram cache of the words already in the utterance:
                 story context by copying only
  trigram+assoc  the trigram times word association learnt from the training stories, renormalised:
                 p(w | a, b, context) ~ p(w | a, b) * lift(w | context), lift = mean over context words v of
                 p(w | v in the same story) / p(w). Story context by co-occurrence (farm -> goat, Anna -> she),
                 which is what a speech LM has to learn here
Also the mean length (words) of positives vs negatives, so a length bias would show.
"""

from __future__ import annotations

import sys
from pathlib import Path


import argparse  # noqa: E402
import math  # noqa: E402
import re  # noqa: E402
from collections import Counter, defaultdict  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from slam.synth import corpus  # noqa: E402


def tokens(text: str) -> list[str]:
    return re.findall(r"[a-z]+|[.]", text.lower()) + ["</s>"]


class Trigram:
    def __init__(self, lines: list[str], k: float = 0.1):
        self.k = k
        self.index: dict[str, int] = {}
        story_words = []
        for line in lines:
            ids = {self.index.setdefault(w, len(self.index)) for w in tokens(line)}
            story_words.append(sorted(ids))
        co = np.zeros((len(self.index) + 1, len(self.index) + 1))
        for ids in story_words:
            co[np.ix_(ids, ids)] += 1
        co += 1e-3
        self.assoc = co / co.sum(axis=1, keepdims=True)  # p(w | v in the same story), rows v
        self.marginal = co.sum(axis=0) / co.sum()
        self.tri: dict[tuple[str, str], Counter] = defaultdict(Counter)
        vocab = set()
        for line in lines:
            t = ["<s>", "<s>"] + tokens(line)
            vocab.update(t)
            for a, b, c in zip(t, t[1:], t[2:]):
                self.tri[(a, b)][c] += 1
        self.V = len(vocab) + 1
        self.tot = {h: sum(c.values()) for h, c in self.tri.items()}

    def prob(self, a: str, b: str, c: str) -> float:
        return (self.tri[(a, b)][c] + self.k) / (self.tot.get((a, b), 0) + self.k * self.V)

    def mean_nll(self, text: str, mode: str = "trigram", lam: float = 0.2) -> float:
        t = ["<s>", "<s>"] + tokens(text)
        seen: Counter = Counter()
        nll = []
        unk = len(self.index)
        for a, b, c in zip(t, t[1:], t[2:]):
            p = self.prob(a, b, c)
            if mode == "cache" and seen:
                p = (1 - lam) * p + lam * seen[c] / sum(seen.values())
            elif mode == "assoc" and seen:
                rows = [self.index.get(v, unk) for v in seen]
                lift = self.assoc[rows].mean(axis=0) / self.marginal
                cnt = self.tri[(a, b)]
                tri = np.full(len(lift), self.k)
                for w, n in cnt.items():
                    tri[self.index.get(w, unk)] += n
                q = tri * lift
                p = float(q[self.index.get(c, unk)] / q.sum())
            nll.append(-math.log(p))
            seen[c] += 1
        return float(np.mean(nll))


def accuracy(model: Trigram, rows: list[dict], mode: str) -> tuple[float, dict[str, float]]:
    by_group: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        p, n = model.mean_nll(r["positive"], mode), model.mean_nll(r["negative"], mode)
        by_group[r["group"]].append(1.0 if p < n else 0.5 if p == n else 0.0)
    allv = [v for vs in by_group.values() for v in vs]
    return 100 * float(np.mean(allv)), {g: 100 * float(np.mean(v)) for g, v in sorted(by_group.items())}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--stories", type=int, default=20000)
    ap.add_argument("--pairs", type=int, default=1000)
    args = ap.parse_args()
    c = corpus.build(stories=args.stories, pairs=args.pairs, prefs=1)
    lm = Trigram(c["stories"])
    print(f"{args.stories} training stories, {args.pairs} pairs per benchmark (seed 0)\n")
    print("| benchmark | trigram | trigram+cache | trigram+assoc | words pos / neg | per group (trigram+assoc) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, rows in c["bench"].items():
        a0, _ = accuracy(lm, rows, "trigram")
        a1, _ = accuracy(lm, rows, "cache")
        a2, groups = accuracy(lm, rows, "assoc")
        lp = np.mean([len(tokens(r["positive"])) for r in rows])
        ln = np.mean([len(tokens(r["negative"])) for r in rows])
        gtxt = ", ".join(f"{g} {v:.0f}" for g, v in groups.items())
        print(f"| {name} | {a0:.1f} | {a1:.1f} | {a2:.1f} | {lp:.2f} / {ln:.2f} | {gtxt} |")


if __name__ == "__main__":
    main()
