"""Interleaved text-speech sequences: span policies, word-aligned cutting, round trip, vocabulary init, the
masked speech-only score and text-prompted sampling. Tiny local models and a locally trained BPE tokenizer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from slam.data.interleave import InterleaveConfig, decode, interleave_utterances, span_modalities, spans, unit_words
from slam.data.interleave import TimedUtterance as Utterance
from slam.eval.cross_modal import split_story
from slam.tokens import interleaved_layout

from tiny import SENTENCES, fake_words, make_base_model, make_text_tokenizer


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return make_text_tokenizer(tmp_path_factory.mktemp("tok"))


# --- span policies ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("policy", ["poisson", "span", "random"])
def test_speech_share_near_target_over_many_sequences(policy):
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 40, size=4000)  # short utterances too: the share must hold whatever N is
    speech = words = 0
    for n in lengths:
        m = span_modalities(int(n), policy, 0.3, 10.0, rng)
        assert m.shape == (n,) and m.dtype == bool
        speech += int(m.sum())
        words += int(n)
    assert abs(speech / words - 0.3) < 0.012, speech / words
    # a fixed length between one and a few spans: a naive first span (a full Poisson span) gives 0.19 at
    # N=15 for poisson; the stationary first span keeps every position at 0.3
    share = np.mean([span_modalities(15, policy, 0.3, 10.0, rng).mean() for _ in range(4000)])
    assert abs(share - 0.3) < 0.015, share


def test_poisson_span_lengths_follow_lambda():
    rng = np.random.default_rng(1)
    runs = {True: [], False: []}
    for _ in range(60):
        r = spans(span_modalities(2000, "poisson", 0.3, 10.0, rng))
        for s, a, b in r[1:-1]:  # interior spans: not cut by the utterance's ends
            runs[s].append(b - a)
    assert abs(np.mean(runs[True]) - 10.0) < 0.6
    assert abs(np.mean(runs[False]) - 10.0 * 0.7 / 0.3) < 1.5
    assert min(runs[True]) >= 1 and min(runs[False]) >= 1
    # alternation: two interior spans in a row never share a modality
    assert all(a[0] != b[0] for a, b in zip(r, r[1:]))


def test_policy_edges_and_bad_name():
    rng = np.random.default_rng(0)
    assert not span_modalities(12, "poisson", 0.0, rng=rng).any()
    assert span_modalities(12, "random", 1.0, rng=rng).all()
    assert span_modalities(0, "span", 0.3, rng=rng).size == 0
    with pytest.raises(Exception, match="poisson, span or random"):
        span_modalities(5, "words", 0.3, rng=rng)
    with pytest.raises(Exception, match="speech_share"):
        InterleaveConfig(speech_share=1.5)


# --- utterances -> ids -> words and units -------------------------------------------------------------------
def fake_utterance(text, seed=0, frame_rate=25.0):
    """Words laid out with pauses, units deduplicated from frames: the kind of row `slam tokenize` writes."""
    units, durations, words = fake_words(text, seed, frame_rate)
    return Utterance(f"u{seed}", units, durations, words, text)


def layout(tok, n_units=20):
    return interleaved_layout(tok, n_units, text_rows=len(tok) + 7)


def test_layout_keeps_text_ids_and_appends_units_markers_pad(tok):
    info = layout(tok)
    T = len(tok) + 7
    assert info.unit_offset == T and info.speech_token_id == T + 20 and info.text_token_id == T + 21
    assert info.pad_id == T + 22 and info.vocab_size == T + 23
    assert info.eos_id == tok.eos_token_id == info.bos_id
    # a speech utterance opens with <speech> (speech-only eval and sampling use this)
    assert info.units_to_ids([3, 4]).tolist() == [info.bos_id, T + 20, T + 3, T + 4, info.eos_id]
    assert info.ids_to_units(info.units_to_ids([3, 4])).tolist() == [3, 4]


def test_round_trip_back_to_words_and_units(tok):
    info = layout(tok)
    utts = [fake_utterance(s, seed=i) for i, s in enumerate(SENTENCES)]
    rng = np.random.default_rng(3)
    mods = [rng.random(len(u.words)) < 0.5 for u in utts]
    out = interleave_utterances(utts, tok, info, frame_rate=25.0, modalities=mods)
    switches = 0
    for u, (ids, plan) in zip(utts, out):
        assert ids[0] == info.bos_id and ids[-1] == info.eos_id
        # spans tile the words in order (aligned to word boundaries)
        assert plan[0][1] == 0 and plan[-1][2] == len(u.words)
        assert all(a[2] == b[1] and a[0] != b[0] for a, b in zip(plan, plan[1:]))
        segs = decode(ids, info, tok)
        assert [k == "speech" for k, _ in segs] == [s for s, _, _ in plan]
        owner = unit_words(u.durations, u.words, 25.0)
        surface = u.text.split()
        for (kind, payload), (s, a, b) in zip(segs, plan):
            if kind == "speech":
                assert payload.tolist() == u.units[(owner >= a) & (owner < b)].tolist()
            else:
                assert payload == " ".join(surface[a:b])
        switches += sum(1 for t in ids if t in (info.speech_token_id, info.text_token_id)) - 1
        # every unit of a speech word is there exactly once; text words carry no unit
        speech_words = np.concatenate([np.arange(a, b) for s, a, b in plan if s] or [np.zeros(0, int)])
        n_units = int(np.isin(owner, speech_words).sum())
        assert int(((ids >= info.unit_offset) & (ids < info.unit_offset + 20)).sum()) == n_units
    assert switches > 5  # the test did exercise modality switches


def test_units_are_cut_at_word_times():
    # 25 Hz: unit i of duration d covers frames; centres decide the word. Words [0.0,0.4) and [0.6,1.0),
    # the cut is the pause midpoint 0.5 s = frame 12.5.
    words = [("a", 0.0, 0.4), ("b", 0.6, 1.0)]
    durations = np.array([10, 2, 2, 11])  # centres at frames 5, 11, 13, 19.5 -> 0.2, 0.44, 0.52, 0.78 s
    assert unit_words(durations, words, 25.0).tolist() == [0, 0, 1, 1]


def test_speech_span_without_units_becomes_text(tok):
    info = layout(tok)
    u = Utterance("x", np.array([1, 2]), np.array([5, 5]), [("a", 0.0, 0.19), ("b", 0.2, 0.21), ("c", 0.25, 0.4)],
                  "a b c")
    ids, plan = interleave_utterances([u], tok, info, 25.0, modalities=[np.array([False, True, False])])[0]
    assert [s for s, _, _ in plan] == [False] and decode(ids, info, tok) == [("text", "a b c")]


def test_split_story():
    assert split_story("A b. C d. E f.", "A b. C d. G h.") == ("A b. C d.", "E f.", "G h.")
    assert split_story("A b. C d.", "X b. C e.") is None


# --- vocabulary init ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("tied", [False, True])
def test_text_rows_bit_identical_after_twist_init(tmp_path, tok, tied):
    from slam.model import twist_init
    from slam.model_folder import load_model, save_model

    base = make_base_model(tmp_path / "base", tok, tied=tied)
    info = interleaved_layout(tok, 20, text_rows=base.config.vocab_size, text_tokenizer_path=tmp_path / "base")
    model, info = twist_init(tmp_path / "base", 20, info=info)
    T = info.unit_offset
    assert T == base.config.vocab_size == len(tok) + 7
    old_in, new_in = base.get_input_embeddings().weight, model.get_input_embeddings().weight
    assert new_in.shape[0] == info.vocab_size
    assert torch.equal(new_in[:T], old_in)
    if not tied:
        assert torch.equal(model.get_output_embeddings().weight[:T], base.get_output_embeddings().weight)
    # new rows: near the mean text row (within a fraction of the rows' spread), and distinct from each other
    mean, std = old_in[:len(tok)].mean(0), old_in[:len(tok)].std(0)
    dev = ((new_in[T:] - mean) / std).abs().detach()
    assert float(dev.mean()) < 0.2 and float(dev.mean()) > 0.01
    assert torch.unique(new_in[T:], dim=0).shape[0] == new_in.shape[0] - T
    # the body is the base's, bit for bit
    assert torch.equal(model.model.layers[0].mlp.up_proj.weight, base.model.layers[0].mlp.up_proj.weight)
    # the folder carries the text tokenizer, and loads back
    save_model(model, info, tmp_path / "m")
    _, info2 = load_model(tmp_path / "m")
    assert info2.text_tokenizer == "text_tokenizer" and (tmp_path / "m" / "text_tokenizer").is_dir()
    from slam.text import model_text_tokenizer

    assert model_text_tokenizer(info2, tmp_path / "m")("Ben met Zoe")["input_ids"] == tok("Ben met Zoe")["input_ids"]


# --- scoring and sampling hooks -----------------------------------------------------------------------------
def tiny_interleaved(tok, n_units=20):
    from slam.model import random_init

    info = layout(tok, n_units)
    model, info = random_init({"model_type": "llama", "hidden_size": 32, "intermediate_size": 64,
                               "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                               "max_position_embeddings": 256}, n_units, info=info, seed=0)
    return model.eval(), info


def test_masked_scores_are_normalised_over_the_allowed_ids_only(tok):
    from slam.eval.pairs import score_sequences
    from slam.tokens import speech_targets

    model, info = tiny_interleaved(tok)
    seq = info.units_to_ids([1, 5, 7, 7, 2])
    allowed = speech_targets(info)
    got = score_sequences(model, [seq], "sum", allowed_ids=allowed, score_from=[2])[0]
    with torch.no_grad():
        logits = model(input_ids=torch.as_tensor(seq)[None]).logits[0, :-1].float()
    lp = torch.log_softmax(logits[:, torch.as_tensor(allowed)], -1)
    pos = {int(a): j for j, a in enumerate(allowed)}
    want = -sum(float(lp[t - 1, pos[int(seq[t])]]) for t in range(2, len(seq)))
    assert got == pytest.approx(want, rel=1e-5)
    # unmasked, the same tokens cost more (text ids take probability mass)
    full = score_sequences(model, [seq], "sum", score_from=[2])[0]
    assert full > got
    # padding in a batch changes nothing
    batch = score_sequences(model, [seq, info.units_to_ids([3] * 30)], "sum", allowed_ids=allowed,
                            score_from=[2, 2])
    assert batch[0] == pytest.approx(got, rel=1e-5)


def test_generation_draws_units_only_from_text_and_speech_prompts(tok):
    from slam.generate import generate_speech

    model, info = tiny_interleaved(tok)
    for kw in ({"prompt_text": ["Ben met Zoe", "The cake"]}, {"prompt_units": [[1, 2, 3], [4]]}):
        out = generate_speech(model, info, tok, max_new_tokens=12, temperature=1.0, top_k=None, seed=0, **kw)
        assert len(out) == 2 and all(len(o[0]) == 12 for o in out)
        assert all(0 <= int(x) < info.n_units for o in out for x in o[0])
    # the text prompt is what conditions the sample: greedy continuations of different prompts differ
    a = generate_speech(model, info, tok, prompt_text=["Ben met Zoe at the park."], max_new_tokens=8, temperature=0)
    b = generate_speech(model, info, tok, prompt_text=["Anna sliced the sticky bun."], max_new_tokens=8,
                        temperature=0)
    assert a[0][0].tolist() != b[0][0].tolist()


def test_interleaved_recipe_is_the_papers_interleaving_setup():
    from slam.train.config import load

    cfg = load("slam-interleaved", [])
    assert cfg.data.kind == "interleaved" and cfg.model.base == "Qwen/Qwen2.5-0.5B"
    i = cfg.data.interleave
    assert (i.policy, i.speech_share, i.mean_words) == ("poisson", 0.3, 10.0)
    assert sorted(s.stream for s in cfg.data.train) == ["interleaved", "speech", "text"]
    # same optimiser, schedule and budget as the speech-only recipe: only the data differs
    base = load("slam", [])
    assert (cfg.optim, cfg.schedule, cfg.budget, cfg.batch) == (base.optim, base.schedule, base.budget, base.batch)
    from slam.errors import ConfigError

    with pytest.raises(ConfigError, match="speech_share"):
        load("slam-interleaved", ["data.interleave.speech_share=2"])
    with pytest.raises(ConfigError, match="stream"):
        load("slam-interleaved", ["data.train=[{path: x, stream: video}]"])


def test_dataset_stream_split_and_chunking(tmp_path, tok, monkeypatch):
    """A units dataset with a `words` column -> interleaved documents: the same for any chunk size, the
    held-out split taken from the one build equals a build of that split, rows without words skipped."""
    import slam.data.interleave as il
    from slam.data import in_val_split
    from slam.units.dataset import UnitsWriter

    with UnitsWriter(tmp_path / "u", {"n_units": 20, "tokenizer_hash": "t", "dedup": True, "frame_rate": 25.0}) as w:
        for i, text in enumerate(SENTENCES * 3):
            u = fake_utterance(text, seed=i)
            w.add(f"x{i:03d}", u.units, u.durations, 3.0, "test", text=text,
                  words=[{"word": a, "start": b, "end": c} for a, b, c in u.words])
        w.add("nowords", np.array([1, 2, 3]), np.array([1, 1, 1]), 0.1, "test")
    info = layout(tok)
    cfg = InterleaveConfig()
    full = il.interleaved_source(tmp_path / "u", info, tok, cfg, seed=5, progress=False)
    assert len(full) == 27 and full.stats["skipped_without_words"] == 1
    assert 0.0 < full.stats["speech_word_share"] < 1.0
    monkeypatch.setattr(il, "CHUNK_ROWS", 4)
    chunked = il.interleaved_source(tmp_path / "u", info, tok, cfg, seed=5, progress=False)
    assert [chunked.doc(i).tolist() for i in range(27)] == [full.doc(i).tolist() for i in range(27)]
    held = np.array([in_val_split(k, 0.3) for k in full.ids])
    assert 0 < held.sum() < 27
    val = il.subset(full, held)
    direct = il.interleaved_source(tmp_path / "u", info, tok, cfg, seed=5, split="val", val_fraction=0.3,
                                   progress=False)
    assert [val.doc(i).tolist() for i in range(len(val))] == [direct.doc(i).tolist() for i in range(len(direct))]
    train = il.subset(full, ~held)
    assert len(train) + len(val) == 27 and int(train.lengths().sum() + val.lengths().sum()) == int(full.lengths().sum())
    # another seed draws other spans
    other = il.interleaved_source(tmp_path / "u", info, tok, cfg, seed=6, progress=False)
    assert any(other.doc(i).tolist() != full.doc(i).tolist() for i in range(27))


def test_stream_needs_interleaved_kind():
    from slam.errors import ConfigError
    from slam.train.config import load

    with pytest.raises(ConfigError, match="stream"):
        load("slam", ["data.train=[{path: x, stream: speech}]"])


def test_relative_text_tokenizer_is_left_as_is(tmp_path, tok, monkeypatch):
    """slam.json names the text tokenizer relative to the model folder ('.' = the folder itself, as text LMs
    do): saving must neither copy the working folder nor rename it."""
    import json

    from slam.model_folder import save_model

    model, info = tiny_interleaved(tok)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "big.bin").write_bytes(b"x" * 1000)
    info.text_tokenizer = "."
    save_model(model, info, tmp_path / "m")
    assert json.loads((tmp_path / "m" / "slam.json").read_text())["text_tokenizer"] == "."
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "generation_config.json",
                                                                 "model.safetensors", "slam.json"]


def test_text_tokenizer_from_a_text_lm_folder_keeps_its_own_class(tmp_path):
    """A slam text LM folder holds config.json (qwen2) and a word-level tokenizer: loading must not turn it
    into the family's BPE class."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import WordLevel
    from tokenizers.trainers import WordLevelTrainer
    from transformers import PreTrainedTokenizerFast, Qwen2Config

    from slam.text import load_text_tokenizer

    tk = Tokenizer(WordLevel(unk_token="<unk>"))
    tk.normalizer = normalizers.Lowercase()
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tk.train_from_iterator(SENTENCES, WordLevelTrainer(special_tokens=["<pad>", "</s>", "<unk>"]))
    PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="</s>", unk_token="<unk>").save_pretrained(str(tmp_path))
    Qwen2Config(vocab_size=64).save_pretrained(str(tmp_path))
    tok = load_text_tokenizer(tmp_path)
    assert tok.convert_ids_to_tokens(tok("Ben met Zoe.", add_special_tokens=False)["input_ids"]) == \
        ["ben", "met", "zoe", "."]
