"""Auto-BLEU: how much a transcript repeats itself (the degenerate-loop detector reported beside GenPPL).

auto_bleu(text, n=2) = share of the transcript's word n-grams that occur at least once more elsewhere in
the same transcript (each position counts on its own), 0 for fewer than n words. Example:
"the cat the cat sat" -> bigrams [the cat, cat the, the cat, cat sat] -> 2 of 4 repeat -> 0.5.
This is slamkit's definition (per transcript, then the mean over transcripts; the SpokenSwag DPO data drops
pairs with bigram auto-BLEU >= 0.3). Case is kept as the ASR wrote it.

Two word splitters:
    "nltk"  (the paper's protocol) `treebank_words`: NLTK's `NLTKWordTokenizer().tokenize`, which slamkit calls
            on the whole transcript (no sentence splitting first), re-implemented here rule by rule (the rules
            of NLTK 3.6.6-3.9, the versions of slamkit's time), so NLTK is not a dependency
    "regex" (slam's older choice) `words`: runs of letters/digits/apostrophes, each other mark on its own

They differ where transcripts have inner sentence ends ("sat. the" keeps "sat." as one word in NLTK, which
only splits the last period), clitics ("don't" -> "do n't"), quotes ('"' -> `` and '') and numbers with
commas or dots ("3,000" stays one word in NLTK).
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Callable, Iterable

WORD = re.compile(r"\w+(?:'\w+)*|[^\w\s]")


def words(text: str) -> list[str]:
    """slam's regex splitter: words (with inner apostrophes) and single punctuation marks."""
    return WORD.findall(text)


# --- NLTK's word tokenizer (NLTKWordTokenizer, the improved Treebank tokenizer) ------------------------------
# Each step is (pattern, replacement), applied in order to the whole string, which is then split on
# whitespace. Quotes: an opening " becomes ``, a closing one ''. Clitics split off ('s 'll n't ...).
_STARTING_QUOTES = [
    (re.compile("([«“‘„]|[`]+)"), r" \1 "),  # unicode opening quotes and backticks stand alone
    (re.compile(r'^"'), r"``"),  # a " at the very start opens a quote
    (re.compile(r"(``)"), r" \1 "),
    (re.compile(r"([ \(\[{<])(\"|\'{2})"), r"\1 `` "),  # " or '' after a space/bracket opens a quote
    (re.compile(r"(?i)(\')(?!re|ve|ll|m|t|s|d|n)(\w)\b"), r"\1 \2"),  # 'x (one letter, not a clitic)
]
_PUNCTUATION = [
    (re.compile(r'([^\.])(\.)([\]\)}>"\'' "»”’ " r"]*)\s*$"), r"\1 \2 \3 "),  # the final period
    (re.compile(r"([:,])([^\d])"), r" \1 \2"),  # , and : unless a digit follows (3,000 stays whole)
    (re.compile(r"([:,])$"), r" \1 "),
    (re.compile(r"\.{2,}"), r" \g<0> "),  # ellipses
    (re.compile(r"[;@#$%&]"), r" \g<0> "),
    (re.compile(r'([^\.])(\.)([\]\)}>"\']*)\s*$'), r"\1 \2\3 "),
    (re.compile(r"[?!]"), r" \g<0> "),
    (re.compile(r"([^'])' "), r"\1 ' "),  # a closing single quote
    (re.compile(r"[*]"), r" \g<0> "),
]
_PARENS = (re.compile(r"[\]\[\(\)\{\}\<\>]"), r" \g<0> ")
_DOUBLE_DASH = (re.compile(r"--"), r" -- ")
_ENDING_QUOTES = [
    (re.compile("([»”’])"), r" \1 "),
    (re.compile(r"''"), " '' "),
    (re.compile(r'"'), " '' "),  # any other " closes a quote
    (re.compile(r"([^' ])('[sS]|'[mM]|'[dD]|') "), r"\1 \2 "),  # clitics 's 'm 'd and a final '
    (re.compile(r"([^' ])('ll|'LL|'re|'RE|'ve|'VE|n't|N'T) "), r"\1 \2 "),
]
# Robert MacIntyre's contractions: cannot -> can not, gonna -> gon na, 'tis -> 't is, ...
_CONTRACTIONS = [re.compile(p) for p in (
    r"(?i)\b(can)(?#X)(not)\b", r"(?i)\b(d)(?#X)('ye)\b", r"(?i)\b(gim)(?#X)(me)\b", r"(?i)\b(gon)(?#X)(na)\b",
    r"(?i)\b(got)(?#X)(ta)\b", r"(?i)\b(lem)(?#X)(me)\b", r"(?i)\b(more)(?#X)('n)\b", r"(?i)\b(wan)(?#X)(na)(?=\s)",
    r"(?i) ('t)(?#X)(is)\b", r"(?i) ('t)(?#X)(was)\b")]


def treebank_words(text: str) -> list[str]:
    """NLTK's `NLTKWordTokenizer().tokenize(text)` (what slamkit's auto-BLEU uses), rule for rule."""
    for pattern, repl in _STARTING_QUOTES + _PUNCTUATION + [_PARENS, _DOUBLE_DASH]:
        text = pattern.sub(repl, text)
    text = " " + text + " "
    for pattern, repl in _ENDING_QUOTES:
        text = pattern.sub(repl, text)
    for pattern in _CONTRACTIONS:
        text = pattern.sub(r" \1 \2 ", text)
    return text.split()


SPLITTERS: dict[str, Callable[[str], list[str]]] = {"nltk": treebank_words, "regex": words}


def auto_bleu(text: str, n: int = 2, splitter: str = "nltk") -> float:
    w = SPLITTERS[splitter](text)
    grams = [tuple(w[i:i + n]) for i in range(len(w) - n + 1)]
    if not grams:
        return 0.0
    counts = Counter(grams)
    return sum(1 for g in grams if counts[g] > 1) / len(grams)


def mean_auto_bleu(texts: Iterable[str], n: int = 2, splitter: str = "nltk") -> float:
    values = [auto_bleu(t, n, splitter) for t in texts]
    return sum(values) / len(values) if values else float("nan")
