"""The built-in text: simple children's stories on 8 topics, plus held-out benchmark pairs and preference text.

Why it looks like this: a tiny speech LM trained ~20 minutes on a 2-core CPU must learn from it (the demo).
Two-sentence stories over 4 topics teach such a model grammar pairs (80-85%) but topic cloze only at
52-60%. So here topic is signalled by every sentence of a story: each topic owns its places, objects,
verbs and adjectives (farm: barn, goat, feed, muddy; space: moon, rocket, fix, silver...), a story of 2-5
sentences never leaves its topic, and endings are coherent in ways a small LM can pick up (they re-mention
the hero, an object of the story, the hero's pronoun, a feeling that fits the event). The vocabulary stays
small (~320 words) while slot combinations give thousands of distinct sentences. `topics=N` keeps the first
N topics only (the demo uses 4: twice the stories per topic moved its topic cloze from 51.5% to 56.3%).

Held out by construction: every sentence has a fixed side, train or eval, from a hash of its text (1 in 4
is eval). Training stories are drawn only from train sentences, benchmark items only from eval sentences
(both endings of a pair included), so no eval sentence or story appears in the training text, while the
words and templates are shared ("held-out combinations").

On-disk layout of `slam corpus --out DIR` (all UTF-8 text):

    DIR/stories.txt                 training text: one story per line (sentences joined by spaces)
    DIR/sentences.txt               the distinct training sentences, one per line (a synthesis list)
    DIR/prefs.jsonl                 preference triples from training stories (SpokenSwag-like, for DPO):
                                    {"id", "prompt", "chosen", "rejected", "group"}
    DIR/bench/grammar/pairs.jsonl   sBLIMP-like minimal pairs, one sentence each:
                                    {"id", "positive", "negative", "group"}; groups: agreement,
                                    det-number, pronoun-case, word-order, did-not
    DIR/bench/story/pairs.jsonl     sSC-like: positive = prefix + coherent ending, negative = prefix + an
                                    ending plausible alone that contradicts the story; groups: character,
                                    object, pronoun, feeling
    DIR/bench/topic/pairs.jsonl     tSC-like: the same prefix + the ending moved to another topic (its
                                    object, verb and place words); group = the story's topic
    DIR/bench/prompts.txt           held-out story prefixes (eval side), one per line, for generation
    DIR/corpus.json                 seed, counts, topics, vocabulary, distinct sentences, content hash

`positive`/`negative` are texts here; `slam.synth.tts.synthesize_pairs` turns a text pairs.jsonl or
prefs.jsonl into the same file with audio paths (relative to the file), which the evaluation reads.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm import tqdm

from slam.errors import SlamError
from slam.utils import atomic_write_json, atomic_write_text


@dataclass(frozen=True)
class Topic:
    name: str
    places: tuple[str, ...]
    objects: tuple[tuple[str, str], ...]  # (singular, plural)
    verbs: tuple[tuple[str, str, str], ...]  # (base, third person singular, past)
    adjectives: tuple[str, ...]


# Each topic owns its words: no place, object, verb or adjective is shared between topics, so any content
# word of an ending tells its topic. Verbs were chosen so that each fits each object of its topic.
TOPICS: tuple[Topic, ...] = (
    Topic("farm", ("farm", "barn", "field"),
          (("cow", "cows"), ("goat", "goats"), ("hen", "hens"), ("pig", "pigs"), ("horse", "horses"),
           ("lamb", "lambs")),
          (("feed", "feeds", "fed"), ("brush", "brushes", "brushed"), ("wash", "washes", "washed"),
           ("pet", "pets", "petted")),
          ("hungry", "muddy", "fat")),
    Topic("sea", ("beach", "shore", "harbor"),
          (("shell", "shells"), ("crab", "crabs"), ("boat", "boats"), ("seal", "seals"), ("pebble", "pebbles"),
           ("starfish", "starfishes")),
          (("collect", "collects", "collected"), ("spot", "spots", "spotted"), ("follow", "follows", "followed"),
           ("photograph", "photographs", "photographed")),
          ("wet", "sandy", "salty")),
    Topic("kitchen", ("kitchen", "bakery", "cafe"),
          (("cake", "cakes"), ("pie", "pies"), ("cookie", "cookies"), ("muffin", "muffins"), ("bun", "buns"),
           ("pancake", "pancakes")),
          (("bake", "bakes", "baked"), ("taste", "tastes", "tasted"), ("slice", "slices", "sliced"),
           ("decorate", "decorates", "decorated")),
          ("sweet", "hot", "sticky")),
    Topic("school", ("school", "classroom", "library"),
          (("book", "books"), ("letter", "letters"), ("map", "maps"), ("poem", "poems"), ("note", "notes"),
           ("card", "cards")),
          (("open", "opens", "opened"), ("copy", "copies", "copied"), ("share", "shares", "shared"),
           ("study", "studies", "studied")),
          ("long", "short", "neat")),
    Topic("forest", ("forest", "woods", "camp"),
          (("owl", "owls"), ("fox", "foxes"), ("bear", "bears"), ("rabbit", "rabbits"),
           ("squirrel", "squirrels"), ("beaver", "beavers")),
          (("watch", "watches", "watched"), ("track", "tracks", "tracked"), ("hear", "hears", "heard"),
           ("chase", "chases", "chased")),
          ("wild", "brown", "quiet")),
    Topic("space", ("moon", "planet", "space station"),
          (("rocket", "rockets"), ("robot", "robots"), ("helmet", "helmets"), ("satellite", "satellites"),
           ("telescope", "telescopes"), ("spaceship", "spaceships")),
          (("fix", "fixes", "fixed"), ("build", "builds", "built"), ("test", "tests", "tested"),
           ("launch", "launches", "launched")),
          ("silver", "shiny", "fast")),
    Topic("music", ("concert", "stage", "music room"),
          (("drum", "drums"), ("piano", "pianos"), ("guitar", "guitars"), ("flute", "flutes"),
           ("trumpet", "trumpets"), ("violin", "violins")),
          (("play", "plays", "played"), ("tune", "tunes", "tuned"), ("practice", "practices", "practiced"),
           ("hold", "holds", "held")),
          ("loud", "soft", "golden")),
    Topic("garden", ("garden", "park", "pond"),
          (("flower", "flowers"), ("rose", "roses"), ("carrot", "carrots"), ("tulip", "tulips"),
           ("daisy", "daisies"), ("tomato", "tomatoes")),
          (("water", "waters", "watered"), ("plant", "plants", "planted"), ("pick", "picks", "picked"),
           ("smell", "smells", "smelled")),
          ("green", "tall", "pretty")),
)

GIRLS = ("Anna", "Lily", "Mia", "Emma", "Zoe")
BOYS = ("Tom", "Ben", "Sam", "Max", "Leo")
GOOD_FEELINGS = ("happy", "glad", "proud")
BAD_FEELINGS = ("sad", "upset", "worried")
NUMBERS = ("two", "three", "four", "five")

EVAL_SHARE = 4  # one sentence in 4 is on the eval side


def is_eval(sentence: str) -> bool:
    """The fixed side of a sentence: eval when a hash of its normalised text falls in 1 of EVAL_SHARE."""
    key = re.sub(r"[^a-z ]", "", sentence.lower()).strip()
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "little") % EVAL_SHARE == 0


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in re.findall(r"[^.!?]+[.!?]", text) if s.strip()]


@dataclass
class Hero:
    name: str
    girl: bool

    @property
    def subj(self) -> str:
        return "She" if self.girl else "He"

    @property
    def obj(self) -> str:
        return "her" if self.girl else "him"

    @property
    def poss(self) -> str:
        return "her" if self.girl else "his"


def _a(word: str) -> str:
    """The indefinite article with its word: "a goat", "an owl"."""
    return f"{'an' if word[0] in 'aeiou' else 'a'} {word}"


def _cap(s: str) -> str:
    return s[0].upper() + s[1:]


class _Retry(Exception):
    """No sentence on the wanted side was found in a few draws: the caller starts the item over."""


class Generator:
    """Draws sentences, stories and benchmark items for one side (train or eval) from a seeded RNG."""

    def __init__(self, rng: np.random.Generator, eval_side: bool, topics: tuple[Topic, ...] = TOPICS):
        self.rng = rng
        self.eval_side = eval_side
        self.topics = topics

    # -- drawing helpers ------------------------------------------------------------------------------
    def pick(self, seq):
        return seq[int(self.rng.integers(len(seq)))]

    def on_side(self, make: Callable[[], str], tries: int = 40) -> str:
        """Draw sentences from `make` until one lies on this generator's side (train or eval)."""
        for _ in range(tries):
            s = make()
            if is_eval(s) == self.eval_side:
                return s
        raise _Retry

    def hero(self) -> Hero:
        girl = bool(self.rng.integers(2))
        return Hero(self.pick(GIRLS if girl else BOYS), girl)

    def other_name(self, hero: Hero, same_gender: bool, exclude: tuple[str, ...]) -> Hero:
        girl = hero.girl if same_gender else bool(self.rng.integers(2))
        names = [n for n in (GIRLS if girl else BOYS) if n not in exclude]
        return Hero(self.pick(names), girl)

    # -- story sentences --------------------------------------------------------------------------------
    def intro(self, t: Topic, h: Hero, friend: Hero | None) -> str:
        place = self.pick(t.places)
        if friend is not None:
            return self.pick((f"{h.name} and {friend.name} went to the {place}.",
                              f"{h.name} met {friend.name} at the {place}."))
        return self.pick((f"{h.name} went to the {place}.", f"One day {h.name} walked to the {place}.",
                          f"{h.name} was at the {place}.", f"{h.name} liked the {place}."))

    def middle(self, t: Topic, h: Hero, friend: Hero | None) -> str:
        """One sentence of the story body, about the hero (or friend) and the topic's words."""
        obj, plural = self.pick(t.objects)
        base, third, past = self.pick(t.verbs)
        adj = self.pick(t.adjectives)
        place = self.pick(t.places)
        kind = int(self.rng.integers(7 if friend is not None else 6))
        if kind == 0:
            return f"{self.pick((h.subj, h.name))} {past} the {adj} {obj}."
        if kind == 1:
            return f"{self.pick((h.subj, h.name))} saw {self.pick(NUMBERS)} {plural} near the {place}."
        if kind == 2:
            return f"{h.name} {self.pick(('likes', 'loves'))} to {base} the {plural}."
        if kind == 3:
            return self.pick((f"The {obj} was {adj}.", f"The {plural} were {adj}.",
                              f"The {obj} is very {adj}.", f"The {plural} are very {adj}."))
        if kind == 4:
            return f"{h.subj} did not {base} the {obj} at first."
        if kind == 5:
            return f"Every day {h.name} {third} {_a(obj)}."
        return self.pick((f"{friend.name} helped {h.obj} {base} the {obj}.",
                          f"{friend.name} gave {h.obj} {_a(adj)} {obj}."))

    def event(self, t: Topic, h: Hero, good: bool) -> str:
        """Something good or bad happens to the hero; a feeling ending must match it."""
        obj, _ = self.pick(t.objects)
        adj = self.pick(t.adjectives)
        if good:
            return self.pick((f"{h.name} found {_a(adj)} {obj}.", f"{h.name} won {_a(adj)} {obj}.",
                              f"{h.subj} got a new {obj}."))
        return self.pick((f"{h.name} lost {h.poss} {adj} {obj}.", f"{h.poss.capitalize()} {obj} was broken.",
                          f"{h.subj} could not find {h.poss} {obj}."))

    # endings: each kind is the story's coherent way to end, and the slot a negative changes
    def end_object(self, t: Topic, who: str, obj: str) -> str:
        base, _, past = self.pick(t.verbs)
        return self.pick((f"At the end {who} hugged the {obj}.", f"Then {who} {past} the {obj} again.",
                          f"{_cap(who)} took the {obj} home.", f"Later {who} showed the {obj} to mom."))

    def end_character(self, t: Topic, name: str) -> str:
        place = self.pick(t.places)
        return self.pick((f"Then {name} went home from the {place}.", f"At night {name} dreamed of the {place}.",
                          f"{name} smiled and left the {place}."))

    def end_feeling(self, who: str, feeling: str) -> str:
        return self.pick((f"{who} was very {feeling}.", f"{who} felt {feeling}.", f"Now {who} was {feeling}."))

    # -- whole stories ---------------------------------------------------------------------------------
    def story(self, n_sentences: int, ending: str | None = None, topic: Topic | None = None) -> dict:
        """A story on one topic: intro, body, ending. `ending` forces the ending kind (object, character,
        pronoun, feeling); the result keeps what a negative needs (hero, friend, topic, mentioned objects)."""
        t = topic or self.pick(self.topics)
        h = self.hero()
        kind = ending or self.pick(("object", "character", "pronoun", "feeling"))
        # a friend of the other gender would make "he"/"she" ambiguous in a pronoun ending
        friend = None
        if n_sentences >= 3 and self.rng.random() < 0.35:
            friend = self.other_name(h, same_gender=(kind == "pronoun"), exclude=(h.name,))
        mentioned: list[str] = []
        body = [self.on_side(lambda: self.intro(t, h, friend))]
        good = bool(self.rng.integers(2))
        n_body = n_sentences - 2
        if kind == "feeling" and n_body == 0:
            kind = "character"  # a feeling needs an event before it
        for i in range(n_body):
            if kind == "feeling" and i == n_body - 1:
                body.append(self.on_side(lambda: self.event(t, h, good)))
            else:
                body.append(self.on_side(lambda: self.middle(t, h, friend)))
            mentioned.extend(o for o in self._objects_in(t, body[-1]) if o not in mentioned)
        if kind == "object" and not mentioned:
            kind = "character"
        feeling = self.pick(GOOD_FEELINGS if good else BAD_FEELINGS)
        # endings about an object re-mention one of the story when there is one: a copy cue a small LM learns
        if kind == "object":
            obj = self.pick(mentioned)
            end = self.on_side(lambda: self.end_object(t, self.pick((h.subj.lower(), h.name)), obj))
        elif kind == "character":
            end = self.on_side(lambda: self.end_character(t, h.name))
        elif kind == "pronoun":
            end = self.on_side(lambda: self.end_object(
                t, h.subj.lower(), self.pick(mentioned) if mentioned else self.pick(t.objects)[0]))
        else:
            end = self.on_side(lambda: self.end_feeling(self.pick((h.subj, h.name)), feeling))
        return {"topic": t, "hero": h, "friend": friend, "kind": kind, "good": good, "feeling": feeling,
                "mentioned": mentioned, "body": body, "ending": end}

    @staticmethod
    def _objects_in(t: Topic, sentence: str) -> list[str]:
        words = set(re.findall(r"[a-z]+", sentence.lower()))
        return [s for s, p in t.objects if s in words or p in words]


# ---- benchmark items (eval side) --------------------------------------------------------------------------

def _names_in(sentence: str) -> set[str]:
    return set(re.findall(r"[A-Z][a-z]+", sentence)) & set(GIRLS + BOYS)


def story_cloze_item(g: Generator, group: str) -> tuple[str, str, str] | None:
    """(prefix, coherent ending, contradicting ending), all on the generator's side, or None."""
    st = g.story(int(g.rng.integers(3, 6)), ending=group)
    if st["kind"] != group:
        return None
    t, h, end = st["topic"], st["hero"], st["ending"]
    story_names = set().union(*(_names_in(s) for s in st["body"]))
    candidates: list[str] = []
    if group == "object":
        # the same ending about an object of the same topic that the story never mentioned
        for obj, _ in t.objects:
            if obj not in st["mentioned"]:
                candidates += [re.sub(rf"\b(the) \w+(?= (home|again|to mom)|\.)", rf"\1 {obj}", end, count=1)]
    elif group == "character":
        others = [n for n in (GIRLS if h.girl else BOYS) if n not in story_names]
        candidates = [end.replace(h.name, n) for n in others]
    elif group == "pronoun":
        wrong = Hero("", not h.girl)
        candidates = [_swap_pronoun(end, h, wrong)]
    else:  # feeling: the opposite valence
        opposite = BAD_FEELINGS if st["good"] else GOOD_FEELINGS
        candidates = [end.replace(st["feeling"], f) for f in opposite]
    candidates = [c for c in candidates if c != end and is_eval(c) == g.eval_side]
    if not candidates:
        return None
    return " ".join(st["body"]), end, g.pick(candidates)


def _swap_pronoun(sentence: str, src: Hero, dst: Hero) -> str:
    """Replace the subject pronoun of `src` by that of `dst`, keeping capitals ("She" -> "He")."""
    for a, b in ((src.subj, dst.subj), (src.subj.lower(), dst.subj.lower())):
        sentence = re.sub(rf"\b{a}\b", b, sentence)
    return sentence


def _topic_slots(t: Topic) -> dict[str, tuple[str, int]]:
    """Each topic word or phrase -> (category, form): "goats" -> ("object", 1), "fed" -> ("verb", 2)."""
    slots: dict[str, tuple[str, int]] = {p: ("place", 0) for p in t.places}
    for cat, table in (("object", t.objects), ("verb", t.verbs)):
        for forms in table:
            for f, w in enumerate(forms):
                slots.setdefault(w, (cat, f))
    slots.update({a: ("adjective", 0) for a in t.adjectives})
    return slots


def move_topic(sentence: str, src: Topic, dst: Topic, g: Generator) -> str:
    """The same sentence with every word of topic `src` replaced by a word of `dst` in the same slot and form
    ("Then she fed the goat again." -> "Then she fixed the rocket again."); a word keeps one replacement."""
    slots = _topic_slots(src)
    pattern = re.compile(r"\b(" + "|".join(sorted(map(re.escape, slots), key=len, reverse=True)) + r")\b")
    pools = {"place": [(p,) for p in dst.places], "object": dst.objects, "verb": dst.verbs,
             "adjective": [(a,) for a in dst.adjectives]}
    chosen: dict[str, str] = {}

    def swap(m: re.Match) -> str:
        word = m.group(1)
        if word not in chosen:
            cat, form = slots[word]
            chosen[word] = g.pick(pools[cat])[form]
        return chosen[word]

    out = pattern.sub(swap, sentence)
    # "a goat" -> "an owl": redo the article of a replaced word
    return re.sub(r"\b(a|an) (\w+)", lambda m: _a(m.group(2)), out)


def topic_cloze_item(g: Generator) -> tuple[str, str, str, str] | None:
    """(prefix, ending, the same ending moved to another topic, topic name).

    The negative keeps the ending's words and moves only its topic words (object, verb, place) to one
    random other topic: a model that ignores topic scores 50% on average, and no template or length
    difference adds noise to the one contrast measured (bench/corpus.py: with the ending of another story
    instead, template differences swamped the topic word under mean-NLL scoring)."""
    st = g.story(int(g.rng.integers(3, 6)), ending=g.pick(("object", "character")))
    t = st["topic"]
    wrong = move_topic(st["ending"], t, g.pick([x for x in g.topics if x is not t]), g)
    if wrong == st["ending"] or is_eval(wrong) != g.eval_side:
        return None
    return " ".join(st["body"]), st["ending"], wrong, t.name


def grammar_item(g: Generator, group: str) -> tuple[str, str] | None:
    """(grammatical, minimally different ungrammatical) sentence, the grammatical one on the eval side."""
    t = g.pick(g.topics)
    h = g.hero()
    obj, plural = g.pick(t.objects)
    base, third, past = g.pick(t.verbs)
    adj = g.pick(t.adjectives)
    place = g.pick(t.places)
    if group == "agreement":
        good, bad = g.pick(((f"The {plural} are very {adj}.", f"The {plural} is very {adj}."),
                            (f"The {obj} is very {adj}.", f"The {obj} are very {adj}."),
                            (f"Every day {h.name} {third} {_a(obj)}.", f"Every day {h.name} {base} {_a(obj)}.")))
    elif group == "det-number":
        n = g.pick(NUMBERS)
        good, bad = g.pick(((f"{h.subj} saw {n} {plural} near the {place}.", f"{h.subj} saw {n} {obj} near the {place}."),
                            (f"{h.name} found {_a(adj)} {obj}.", f"{h.name} found {_a(adj)} {plural}.")))
    elif group == "pronoun-case":
        f = g.other_name(h, False, (h.name,))
        good, bad = g.pick(((f"{h.subj} {past} the {adj} {obj}.", f"{h.obj.capitalize()} {past} the {adj} {obj}."),
                            (f"{f.name} helped {h.obj} {base} the {obj}.", f"{f.name} helped {h.subj.lower()} {base} the {obj}.")))
    elif group == "word-order":
        good, bad = g.pick(((f"{h.name} {past} the {adj} {obj}.", f"{h.name} {past} {adj} the {obj}."),
                            (f"{h.name} went to the {place}.", f"{h.name} to the went {place}.")))
    elif group == "did-not":
        good, bad = f"{h.subj} did not {base} the {obj} at first.", f"{h.subj} did not {past} the {obj} at first."
    else:
        raise ValueError(group)
    if good == bad or not is_eval(good):
        return None
    return good, bad


GRAMMAR_GROUPS = ("agreement", "det-number", "pronoun-case", "word-order", "did-not")
STORY_GROUPS = ("object", "character", "pronoun", "feeling")


def _draw(make: Callable[[], object | None], what: str, max_tries: int = 200):
    for _ in range(max_tries):
        try:
            item = make()
        except _Retry:
            continue
        if item is not None:
            return item
    raise SlamError(f"corpus: could not draw a '{what}' item in {max_tries} tries (generator bug)")


def select_topics(n: int | None) -> tuple[Topic, ...]:
    """The first `n` topics (all 8 when None). Fewer topics = more stories per topic for the same text: at
    equal text, 4 topics lift the demo's topic cloze from ~51% to ~56% (docs/demo.md)."""
    if n is None:
        return TOPICS
    if not 2 <= n <= len(TOPICS):
        raise SlamError(f"topics: expected 2..{len(TOPICS)} (a topic negative needs another topic), got {n}")
    return TOPICS[:n]


def build(stories: int = 20000, pairs: int = 1000, prefs: int = 2000, seed: int = 0, progress: bool = False,
          topics: int | None = None) -> dict:
    """All the text of the corpus, in memory: training stories and sentences, benchmark pairs, prefs.
    `topics`: use only the first N topics (default all) for every part."""
    tps = select_topics(topics)
    # separate RNG streams per part, so e.g. asking for more pairs leaves the training text unchanged
    ss = np.random.SeedSequence(seed).spawn(5)
    train = Generator(np.random.default_rng(ss[0]), eval_side=False, topics=tps)
    story_lines: list[str] = []
    for _ in tqdm(range(stories), desc="stories", unit="story", disable=not progress):
        st = _draw(lambda: train.story(int(train.rng.integers(2, 6))), "story")
        story_lines.append(" ".join(st["body"] + [st["ending"]]))

    ev = Generator(np.random.default_rng(ss[1]), eval_side=True, topics=tps)
    out: dict = {"stories": story_lines, "bench": {}}
    items = []
    for i in range(pairs):
        group = GRAMMAR_GROUPS[i % len(GRAMMAR_GROUPS)]
        good, bad = _draw(lambda: grammar_item(ev, group), f"grammar/{group}")
        items.append({"id": f"grammar-{i:05d}", "positive": good, "negative": bad, "group": group})
    out["bench"]["grammar"] = items

    ev = Generator(np.random.default_rng(ss[2]), eval_side=True, topics=tps)
    items = []
    for i in range(pairs):
        group = STORY_GROUPS[i % len(STORY_GROUPS)]
        prefix, pos, neg = _draw(lambda: story_cloze_item(ev, group), f"story/{group}")
        items.append({"id": f"story-{i:05d}", "positive": f"{prefix} {pos}", "negative": f"{prefix} {neg}",
                      "group": group})
    out["bench"]["story"] = items

    ev = Generator(np.random.default_rng(ss[3]), eval_side=True, topics=tps)
    items = []
    for i in range(pairs):
        prefix, pos, neg, topic = _draw(lambda: topic_cloze_item(ev), "topic")
        items.append({"id": f"topic-{i:05d}", "positive": f"{prefix} {pos}", "negative": f"{prefix} {neg}",
                      "group": topic})
    out["bench"]["topic"] = items
    out["prompts"] = [" ".join(_draw(lambda: ev.story(3), "prompt")["body"]) for _ in range(20)]

    # preferences are DPO *training* data: drawn from the train side, rejected = one of the cloze negatives
    tr = Generator(np.random.default_rng(ss[4]), eval_side=False, topics=tps)
    pref_items = []
    for i in range(prefs):
        def make():
            if tr.rng.random() < 0.5:
                group = tr.pick(STORY_GROUPS)
                item = story_cloze_item(tr, group)
            else:
                group, item = "topic", topic_cloze_item(tr)
            if item is None:
                return None
            prefix, pos, neg = item[:3]
            return {"id": f"pref-{i:05d}", "prompt": prefix, "chosen": pos, "rejected": neg, "group": group}
        pref_items.append(_draw(make, "preference"))
    out["prefs"] = pref_items
    return out


def vocabulary(lines: list[str]) -> set[str]:
    return {w for line in lines for w in re.findall(r"[a-z]+", line.lower())}


def write(out_dir: str | Path, stories: int = 20000, pairs: int = 1000, prefs: int = 2000, seed: int = 0,
          progress: bool = False, topics: int | None = None) -> dict:
    """Write the corpus layout of the module docstring; returns the summary written to corpus.json."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise SlamError(f"--out {out}: exists and is a file; the corpus is a folder")
    for name, n, least in (("stories", stories, 1), ("pairs", pairs, 0), ("prefs", prefs, 0)):
        if n < least:
            raise SlamError(f"--{name} must be {least} or more, got {n}")
    c = build(stories=stories, pairs=pairs, prefs=prefs, seed=seed, progress=progress, topics=topics)
    sentences = list(dict.fromkeys(s for line in c["stories"] for s in split_sentences(line)))
    atomic_write_text(out / "stories.txt", "\n".join(c["stories"]) + "\n")
    atomic_write_text(out / "sentences.txt", "\n".join(sentences) + "\n")
    for name, items in c["bench"].items():
        atomic_write_text(out / "bench" / name / "pairs.jsonl", "".join(json.dumps(x) + "\n" for x in items))
    atomic_write_text(out / "bench" / "prompts.txt", "\n".join(c["prompts"]) + "\n")
    atomic_write_text(out / "prefs.jsonl", "".join(json.dumps(x) + "\n" for x in c["prefs"]))
    h = hashlib.sha256()
    for p in sorted(out.rglob("*")):
        if p.is_file() and p.name != "corpus.json":
            h.update(str(p.relative_to(out)).encode())
            h.update(p.read_bytes())
    summary = {
        "seed": seed, "stories": len(c["stories"]), "distinct_sentences": len(sentences),
        "distinct_stories": len(set(c["stories"])),
        "words": sum(len(s.split()) for s in c["stories"]),
        "vocabulary": sorted(vocabulary(c["stories"])),
        "topics": [t.name for t in select_topics(topics)],
        "pairs": {k: len(v) for k, v in c["bench"].items()}, "prefs": len(c["prefs"]),
        "eval_share": f"1/{EVAL_SHARE} of sentences (by hash) are eval-only",
        "sha256": h.hexdigest(),
    }
    atomic_write_json(out / "corpus.json", summary)
    return summary
