"""Cross-modal story cloze from the published layout (slamkit / SIMS: `<key>_{mutual,correct,incorrect}.{wav,txt}`,
flat or in subfolders): all four directions scored as slamkit does, checked against sequences built by hand;
and speech -> text generation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eval_helpers import EnergyTokenizer, write_wav
from slam.errors import SlamError
from slam.eval.cross_modal import cross_modal_square, is_cross_modal_folder, read_cross_modal_folder
from slam.generate import generate_text, sample_units
from slam.units.dataset import dedup
from test_eval_genppl import Scripted
from test_interleave import tiny_interleaved
from tiny import make_text_tokenizer

STORIES = [("Ben met Zoe at the park.", "They played ball.", "The moon ate soup."),
           ("Anna sliced the sticky bun.", "She ate it.", "It flew to Mars."),
           ("The dog barked at night.", "Ben woke up.", "The sea was dry.")]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return make_text_tokenizer(tmp_path_factory.mktemp("tok"))


def write_item(folder, key, texts, seed):
    folder.mkdir(parents=True, exist_ok=True)
    for j, (role, text) in enumerate(zip(("mutual", "correct", "incorrect"), texts)):
        (folder / f"{key}_{role}.txt").write_text(text + "\n")
        write_wav(folder / f"{key}_{role}.wav", 0.6 + 0.2 * j, seed=10 * seed + j)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("xm")
    for i, s in enumerate(STORIES):
        write_item(root / "flat", f"{i}", s, i)
    write_item(root / "sub" / "b_set", "7", STORIES[0], 0)
    write_item(root / "sub" / "a_set", "3", STORIES[1], 1)
    write_item(root / "sub" / "a_set", "1", STORIES[2], 2)
    return root


def test_reader_flat_and_subfolders(folders, tmp_path):
    flat = read_cross_modal_folder(folders / "flat")
    assert [it["key"] for it in flat] == ["0", "1", "2"] and {it["group"] for it in flat} == {None}
    assert flat[0]["text"] == {"mutual": STORIES[0][0], "correct": STORIES[0][1], "incorrect": STORIES[0][2]}
    sub = read_cross_modal_folder(folders / "sub")
    assert [(it["group"], it["key"]) for it in sub] == [("a_set", "1"), ("a_set", "3"), ("b_set", "7")]
    assert is_cross_modal_folder(folders / "flat") and is_cross_modal_folder(folders / "sub")
    assert not is_cross_modal_folder(tmp_path)
    write_item(tmp_path / "broken", "5", STORIES[0], 0)
    (tmp_path / "broken" / "5_incorrect.txt").unlink()
    with pytest.raises(SlamError, match="5_correct.wav has no 5_incorrect.txt"):
        read_cross_modal_folder(tmp_path / "broken")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SlamError, match="no `<key>_correct.wav`"):
        read_cross_modal_folder(tmp_path / "empty")


def mean_nll(model, ids):
    with torch.no_grad():
        logits = model(input_ids=torch.as_tensor(ids)[None]).logits[0, :-1].float()
    lp = torch.log_softmax(logits, -1)
    return float(-lp[torch.arange(len(ids) - 1), torch.as_tensor(ids[1:])].mean())


def test_square_matches_hand_built_sequences(folders, tok):
    """Each direction's sequence as slamkit's interleaving tokeniser writes it, scored over every token after
    <s>: t2t joins prompt and ending text as they are; s2s tokenises the two waves concatenated."""
    from slam.audio import load_audio

    model, info = tiny_interleaved(tok)
    speech = EnergyTokenizer(info.n_units)
    res = cross_modal_square(model, info, tok, speech, folders / "flat", progress=False)
    B, S, T, off = info.bos_id, info.speech_token_id, info.text_token_id, info.unit_offset

    def ids(s):
        return list(tok(s, add_special_tokens=False)["input_ids"])

    def units(*paths):
        return list(dedup(speech.encode(np.concatenate([load_audio(p) for p in paths])))[0] + off)

    items = read_cross_modal_folder(folders / "flat")
    for d in ("t2t", "t2s", "s2t", "s2s"):
        outcomes = []
        for it in items:
            nll = []
            for role in ("correct", "incorrect"):
                pt, et, pw, ew = it["text"]["mutual"], it["text"][role], it["wav"]["mutual"], it["wav"][role]
                seq = {"t2t": [B, T] + ids(pt + et), "t2s": [B, T] + ids(pt) + [S] + units(ew),
                       "s2t": [B, S] + units(pw) + [T] + ids(et), "s2s": [B, S] + units(pw, ew)}[d]
                nll.append(mean_nll(model, seq))
            outcomes.append(1.0 if nll[0] < nll[1] else 0.5 if nll[0] == nll[1] else 0.0)
        assert res[d]["value"] == pytest.approx(100 * np.mean(outcomes)) and res[d]["n"] == 3, d
        assert res[d]["span"] == "all" and "published layout" in res[d]["layout"]
    grouped = cross_modal_square(model, info, tok, speech, folders / "sub", directions=["t2s"], progress=False)
    assert set(grouped["t2s"]["groups"]) == {"a_set", "b_set"} and grouped["t2s"]["groups"]["a_set"]["n"] == 2
    with pytest.raises(SlamError, match="directions"):
        cross_modal_square(model, info, tok, speech, folders / "flat", directions=["x2y"])


def test_speech_to_text_generation(tok):
    model, info = tiny_interleaved(tok)
    n_text = int(info.extra["text_vocab_size"])
    # only text ids are drawn, whatever the model prefers; greedy, the same prompt gives the same text
    rows = sample_units(model, info, [np.zeros(0, np.int64)], prefixes=[[info.bos_id, info.speech_token_id,
                        info.unit_offset + 3, info.text_token_id]], candidates=np.arange(n_text),
                        max_new_tokens=10, temperature=1.0, top_k=None, seed=1)
    assert rows[0][0].size <= 10 and all(0 <= x < n_text and x != info.eos_id for x in rows[0][0])
    a = generate_text(model, info, tok, [[1, 2, 3]], max_new_tokens=6, temperature=0)
    assert a == generate_text(model, info, tok, [[1, 2, 3]], max_new_tokens=6, temperature=0)
    assert isinstance(a[0][0], str)
    # a scripted model: two text tokens then eos -> exactly those two decoded; the prompt is <s> <speech> u <text>
    w1, w2 = tok("Ben", add_special_tokens=False)["input_ids"][0], tok(" met", add_special_tokens=False)["input_ids"][0]
    scripted = Scripted([w1, w2, info.eos_id, w1], info.vocab_size)
    assert generate_text(scripted, info, tok, [[4, 5]], max_new_tokens=6) == [[tok.decode([w1, w2])]]
