"""Auto-BLEU: how much a transcript repeats itself (the degenerate-loop detector reported beside GenPPL).

auto_bleu(text, n=2) = share of the transcript's word n-grams that occur at least once more elsewhere in
the same transcript (each position counts on its own), 0 for fewer than n words. Example:
"the cat the cat sat" -> bigrams [the cat, cat the, the cat, cat sat] -> 2 of 4 repeat -> 0.5.
This is the definition slamkit reports (per transcript, then the mean over transcripts; the SpokenSwag DPO
data drops pairs with bigram auto-BLEU >= 0.3). Words: runs of letters/digits/apostrophes, and each
punctuation mark on its own, close to the NLTK word tokenizer slamkit uses, without the dependency; case is
kept as the ASR wrote it.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Iterable

WORD = re.compile(r"\w+(?:'\w+)*|[^\w\s]")


def words(text: str) -> list[str]:
    return WORD.findall(text)


def auto_bleu(text: str, n: int = 2) -> float:
    w = words(text)
    grams = [tuple(w[i:i + n]) for i in range(len(w) - n + 1)]
    if not grams:
        return 0.0
    counts = Counter(grams)
    return sum(1 for g in grams if counts[g] > 1) / len(grams)


def mean_auto_bleu(texts: Iterable[str], n: int = 2) -> float:
    values = [auto_bleu(t, n) for t in texts]
    return sum(values) / len(values) if values else float("nan")
