"""The built-in text generator: determinism, variety, held-out benchmark text, pair layouts, CLI."""

from __future__ import annotations

import json
import re

import pytest

from slam.cli import main
from slam.errors import SlamError
from slam.synth import corpus as C


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus")
    assert main(["corpus", "--out", str(out), "--stories", "3000", "--pairs", "200", "--prefs", "300",
                 "--seed", "3"]) == 0
    return out


def _jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _words(text):
    return set(re.findall(r"[a-z]+", text.lower()))


TOPIC_WORDS = {t.name: {w for x in (*t.places, *(o for pair in t.objects for o in pair),
                                    *(v for triple in t.verbs for v in triple), *t.adjectives)
                        for w in x.split()} for t in C.TOPICS}


def test_topics_own_their_words():
    # the topic signal of an ending relies on no content word being shared between topics
    names = list(TOPIC_WORDS)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not TOPIC_WORDS[a] & TOPIC_WORDS[b], (a, b, TOPIC_WORDS[a] & TOPIC_WORDS[b])


def test_deterministic_for_a_seed():
    a = C.build(stories=200, pairs=20, prefs=20, seed=7)
    b = C.build(stories=200, pairs=20, prefs=20, seed=7)
    c = C.build(stories=200, pairs=20, prefs=20, seed=8)
    assert a == b
    assert a["stories"] != c["stories"]
    # more pairs leave the training text unchanged (separate random streams)
    assert C.build(stories=200, pairs=40, prefs=20, seed=7)["stories"] == a["stories"]


def test_variety_and_shape(written):
    stories = (written / "stories.txt").read_text().splitlines()
    sentences = (written / "sentences.txt").read_text().splitlines()
    summary = json.loads((written / "corpus.json").read_text())
    assert len(stories) == 3000 and summary["stories"] == 3000
    assert len(set(sentences)) == len(sentences) > 5000  # thousands of distinct sentences
    assert len(set(stories)) > 2800
    vocab = C.vocabulary(stories)
    assert 200 < len(vocab) < 400 and summary["vocabulary"] == sorted(vocab)  # small enough to learn
    for s in sentences:
        assert 3 <= len(s.split()) <= 10, s  # ~1-3 s of speech each
    per_story = [len(C.split_sentences(s)) for s in stories]
    assert min(per_story) == 2 and max(per_story) == 5
    # one topic per story: content words of a single topic only, and every topic is used
    used = set()
    for s in stories:
        topics = {name for name, words in TOPIC_WORDS.items() if _words(s) & words}
        assert len(topics) == 1, s
        used |= topics
    assert used == set(TOPIC_WORDS)


def test_no_train_eval_overlap(written):
    train_sentences = set((written / "sentences.txt").read_text().splitlines())
    train_stories = set((written / "stories.txt").read_text().splitlines())
    n = 0
    for name in ("grammar", "story", "topic"):
        for row in _jsonl(written / "bench" / name / "pairs.jsonl"):
            for text in (row["positive"], row["negative"]):
                assert text not in train_stories
                for s in C.split_sentences(text):
                    assert s not in train_sentences, (name, s)
                    n += 1
    for line in (written / "bench" / "prompts.txt").read_text().splitlines():
        assert not set(C.split_sentences(line)) & train_sentences
    assert n > 2000
    # preference text is DPO training data: drawn from the train side, so disjoint from the benchmarks
    bench = {s for name in ("story", "topic") for row in _jsonl(written / "bench" / name / "pairs.jsonl")
             for s in C.split_sentences(row["positive"] + " " + row["negative"])}
    for row in _jsonl(written / "prefs.jsonl"):
        for s in C.split_sentences(" ".join((row["prompt"], row["chosen"], row["rejected"]))):
            assert s not in bench


def test_grammar_pairs_are_minimal(written):
    rows = _jsonl(written / "bench" / "grammar" / "pairs.jsonl")
    assert {r["group"] for r in rows} == set(C.GRAMMAR_GROUPS)
    assert len({r["id"] for r in rows}) == len(rows) == 200
    for r in rows:
        a, b = r["positive"].split(), r["negative"].split()
        assert a != b
        if r["group"] == "word-order":
            assert sorted(a) == sorted(b)  # same words, another order
        else:
            assert len(a) == len(b) and sum(x != y for x, y in zip(a, b)) == 1, r


def _split_pair(row):
    pos, neg = C.split_sentences(row["positive"]), C.split_sentences(row["negative"])
    assert pos[:-1] == neg[:-1] and pos[-1] != neg[-1] and 2 <= len(pos) - 1 <= 4
    return pos[:-1], pos[-1], neg[-1]


def test_story_cloze_negatives_contradict_the_story(written):
    rows = _jsonl(written / "bench" / "story" / "pairs.jsonl")
    assert {r["group"] for r in rows} == set(C.STORY_GROUPS)
    names = set(C.GIRLS + C.BOYS)
    for r in rows:
        prefix, pos, neg = _split_pair(r)
        ctx = _words(" ".join(prefix))
        ctx |= {sing for t in C.TOPICS for sing, plural in t.objects if plural in ctx}  # "foxes" mentions fox
        topic = next(n for n, w in TOPIC_WORDS.items() if ctx & w)
        assert _words(neg) - _words(pos) <= TOPIC_WORDS[topic] | {w.lower() for w in names} | {"he", "she"} | \
            set(C.GOOD_FEELINGS + C.BAD_FEELINGS)  # plausible alone: same topic, one slot changed
        changed = (_words(neg) - _words(pos)).pop()
        if r["group"] == "object":
            assert changed not in ctx and (_words(pos) - _words(neg)).pop() in ctx
        elif r["group"] == "character":
            assert changed not in ctx and changed.capitalize() in names
        elif r["group"] == "pronoun":
            hero = re.match(r"(One day )?([A-Z][a-z]+)", prefix[0]).group(2)
            assert changed == ("he" if hero in C.GIRLS else "she")
        else:
            good = bool(ctx & {"found", "won", "got"})
            assert changed in (C.BAD_FEELINGS if good else C.GOOD_FEELINGS)


def test_topic_cloze_negative_ending_is_from_another_topic(written):
    rows = _jsonl(written / "bench" / "topic" / "pairs.jsonl")
    assert {r["group"] for r in rows} == set(TOPIC_WORDS)
    for r in rows:
        prefix, pos, neg = _split_pair(r)
        topic = r["group"]
        assert _words(" ".join(prefix)) & TOPIC_WORDS[topic]
        assert not _words(neg) & TOPIC_WORDS[topic]
        assert any(_words(neg) & w for n, w in TOPIC_WORDS.items() if n != topic)
        # the same ending with its topic words moved: the rest of the sentence is identical
        all_topic = set().union(*TOPIC_WORDS.values())
        assert [w for w in re.findall(r"[a-z]+", pos.lower()) if w not in all_topic] == \
            [w for w in re.findall(r"[a-z]+", neg.lower()) if w not in all_topic]
        # told about the same hero (name or matching pronoun), so only the topic differs
        hero = re.match(r"(One day )?([A-Z][a-z]+)", prefix[0]).group(2)
        assert set(re.findall(r"[A-Z][a-z]+", neg)) & set(C.GIRLS + C.BOYS) <= {hero}
        assert _words(neg) & {"he", "she"} <= {"she" if hero in C.GIRLS else "he"}


def test_prefs_layout(written):
    rows = _jsonl(written / "prefs.jsonl")
    assert len(rows) == 300
    assert {r["group"] for r in rows} == set(C.STORY_GROUPS) | {"topic"}
    for r in rows:
        assert set(r) == {"id", "prompt", "chosen", "rejected", "group"}
        assert r["chosen"] != r["rejected"] and len(C.split_sentences(r["prompt"])) >= 2


def test_fewer_topics_confine_every_part(tmp_path):
    # --topics 3: training text, every benchmark and the preferences use only the first 3 topics' words
    assert main(["corpus", "--out", str(tmp_path), "--stories", "300", "--pairs", "40", "--prefs", "40",
                 "--topics", "3"]) == 0
    kept = [t.name for t in C.TOPICS[:3]]
    assert json.loads((tmp_path / "corpus.json").read_text())["topics"] == kept
    dropped = set().union(*(TOPIC_WORDS[t.name] for t in C.TOPICS[3:]))
    texts = (tmp_path / "stories.txt").read_text().splitlines()
    for name in ("grammar", "story", "topic"):
        rows = _jsonl(tmp_path / "bench" / name / "pairs.jsonl")
        texts += [r["positive"] for r in rows] + [r["negative"] for r in rows]
    texts += [" ".join((r["prompt"], r["chosen"], r["rejected"])) for r in _jsonl(tmp_path / "prefs.jsonl")]
    assert all(not _words(t) & dropped for t in texts)
    assert {r["group"] for r in _jsonl(tmp_path / "bench" / "topic" / "pairs.jsonl")} == set(kept)
    with pytest.raises(SlamError, match="topics"):
        C.build(stories=10, pairs=2, prefs=2, topics=1)
