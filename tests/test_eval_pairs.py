"""Pair metrics: layouts, batched scoring == one at a time, accuracy/CI arithmetic, the units cache."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from eval_helpers import EnergyTokenizer, tiny_lm, write_wav
from slam.errors import SlamError
from slam.eval.layouts import Benchmark, Pair, read_benchmark
from slam.eval.pairs import accuracy, evaluate_pairs, score_sequences, tokenize_files


def test_batched_scores_equal_one_at_a_time():
    model, info = tiny_lm()
    rng = np.random.default_rng(0)
    seqs = [info.units_to_ids(rng.integers(0, 20, size=n)) for n in (3, 17, 1, 40, 8, 8, 25)]
    for reduction in ("mean", "sum"):
        one = score_sequences(model, seqs, reduction, batch_tokens=0)
        batched = score_sequences(model, seqs, reduction, batch_tokens=120)
        np.testing.assert_allclose(batched, one, rtol=1e-5, atol=1e-5)
    # hand check of one sequence: mean NLL over every predicted token, the final EOS included
    s = torch.as_tensor(seqs[1])
    logp = torch.log_softmax(model(input_ids=s[None]).logits[0, :-1].float(), -1)
    manual = -logp[torch.arange(len(s) - 1), s[1:]]
    assert s[-1] == info.eos_id and len(manual) == 18
    np.testing.assert_allclose(score_sequences(model, [seqs[1]], "mean")[0], manual.mean().item(), rtol=1e-5)
    np.testing.assert_allclose(score_sequences(model, [seqs[1]], "sum")[0], manual.sum().item(), rtol=1e-5)


def test_accuracy_ties_and_wilson_ci_hand_worked():
    r = accuracy([1, 0, 0.5, 1])
    # Wilson, p = 0.625, n = 4, z = 1.96: d = 1 + 3.8416/4 = 1.9604; centre = (0.625 + 0.4802)/d = 0.563763;
    # half = 1.96 * sqrt(0.234375/4 + 3.8416/64) / d = 1.96 * 0.344411 / 1.9604 = 0.344341
    assert r["n"] == 4 and r["value"] == pytest.approx(62.5)
    assert r["ci95"] == pytest.approx([21.9422, 90.8104], abs=1e-3)
    # a group with no variance keeps a real interval: 0/4 -> [0, 2 * 0.4802/1.9604] = [0, 48.99]
    assert accuracy([0, 0, 0, 0])["ci95"] == pytest.approx([0.0, 48.990], abs=1e-3)
    assert accuracy([1, 1, 1, 1])["ci95"] == pytest.approx([51.010, 100.0], abs=1e-3)
    # n = 1,871 at 55%: the half-width the docstring quotes (2.3 points)
    lo, hi = accuracy([1.0] * 1029 + [0.0] * 842)["ci95"]
    assert (hi - lo) / 2 == pytest.approx(2.25, abs=0.01)
    assert math.isnan(accuracy([])["value"]) and accuracy([])["n"] == 0


def _zr_lexical(root):
    rows = ["id,filename,voice,frequency,word,phones,length,correct"]
    for i in range(3):
        for v, voice in enumerate(["Alex", "Bruce"]):
            write_wav(root / f"w{i}{v}.wav", 0.3, seed=10 * i + v)
            write_wav(root / f"n{i}{v}.wav", 0.3, seed=100 + 10 * i + v)
            rows.append(f"{i},w{i}{v},{voice},1,word{i},w o r d,4,1")
            rows.append(f"{i},n{i}{v},{voice},,nonword{i},n o n,3,0")
    (root / "gold.csv").write_text("\n".join(rows) + "\n")


def _zr_syntactic(root):
    rows = ["id,filename,voice,type,subtype,transcription,correct"]
    for i in range(4):
        typ = "agreement" if i < 2 else "filler_gap"
        write_wav(root / f"g{i}.wav", 0.3, seed=200 + i)
        write_wav(root / f"b{i}.wav", 0.3, seed=300 + i)
        rows.append(f"{i},g{i},Alex,{typ},s,good sentence,1")
        rows.append(f"{i},b{i},Alex,{typ},s,bad sentence,0")
    (root / "gold.csv").write_text("\n".join(rows) + "\n")


def test_readers_for_each_layout(tmp_path):
    lex = tmp_path / "lexical" / "dev"
    _zr_lexical(lex)
    b = read_benchmark(lex)
    assert b.layout == "zerospeech-lexical" and len(b.pairs) == 3
    assert [f.name for f in b.pairs[1].positive] == ["w10.wav", "w11.wav"]  # voices of id 1, paired by voice
    assert [f.name for f in b.pairs[1].negative] == ["n10.wav", "n11.wav"]
    with pytest.raises(SlamError, match="pass one of them"):
        read_benchmark(tmp_path / "lexical")

    syn = tmp_path / "syntactic" / "dev"
    _zr_syntactic(syn)
    b = read_benchmark(syn / "gold.csv")
    assert b.layout == "zerospeech-syntactic" and len(b.pairs) == 4
    assert (b.pairs[2].positive[0].name, b.pairs[2].negative[0].name, b.pairs[2].group) == ("g2.wav", "b2.wav",
                                                                                             "filler_gap")
    sc = tmp_path / "sSC"
    for n in (0, 1, 2, 3, 10, 11):  # sorted numerically, not as text (10 after 3)
        write_wav(sc / f"{n}_{'a' if n % 2 else 'b'}.wav", 0.2, seed=n)
    b = read_benchmark(sc)
    assert b.layout == "storycloze"
    assert [(p.positive[0].name, p.negative[0].name) for p in b.pairs] == [("0_b.wav", "1_a.wav"),
                                                                          ("2_b.wav", "3_a.wav"),
                                                                          ("10_b.wav", "11_a.wav")]
    (sc / "12_b.wav").write_bytes((sc / "0_b.wav").read_bytes())
    with pytest.raises(SlamError, match="even number"):
        read_benchmark(sc)

    jl = tmp_path / "mine"
    write_wav(jl / "a.wav", 0.2, 1), write_wav(jl / "b.wav", 0.2, 2)
    (jl / "pairs.jsonl").write_text(json.dumps({"id": "x", "positive": "a.wav", "negative": "b.wav",
                                                "group": "g"}) + "\n")
    b = read_benchmark(jl)
    assert b.layout == "pairs.jsonl" and b.pairs[0].group == "g" and b.pairs[0].positive[0] == jl / "a.wav"

    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("hi")
    with pytest.raises(SlamError, match="expected one of"):
        read_benchmark(tmp_path / "empty")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "gold.csv").write_text("a,b\n1,2\n")
    with pytest.raises(SlamError, match="neither the lexical"):
        read_benchmark(bad)


def test_evaluate_pairs_matches_manual_scoring_and_groups(tmp_path):
    model, info = tiny_lm()
    syn = tmp_path / "syntactic" / "dev"
    _zr_syntactic(syn)
    tok = EnergyTokenizer()
    res = evaluate_pairs(model, info, syn, tokenizer=tok, cache_dir=tmp_path / "cache", progress=False)
    bench = read_benchmark(syn)
    frames, _ = tokenize_files(bench.files(), tok, None, progress=False)
    from slam.units.dataset import dedup

    nll = dict(zip(bench.files(), score_sequences(model, [info.units_to_ids(dedup(frames[f])[0])
                                                          for f in bench.files()])))
    manual = [1.0 if nll[p.positive[0]] < nll[p.negative[0]] else 0.0 for p in bench.pairs]
    assert res["value"] == pytest.approx(100 * np.mean(manual)) and res["n"] == 4
    assert res["groups"]["agreement"]["value"] == pytest.approx(100 * np.mean(manual[:2]))
    assert res["groups"]["filler_gap"]["n"] == 2
    assert len(res["benchmark_hash"]) == 64 and res["layout"] == "zerospeech-syntactic"


def test_lexical_outcome_is_mean_over_voices_and_ties_count_half(tmp_path):
    model, info = tiny_lm()
    lex = tmp_path / "lexical" / "test"
    _zr_lexical(lex)
    bench = read_benchmark(lex)
    # make every nonword of voice Bruce (files n*1.wav) the same audio as its word: a tie -> 0.5
    for p in bench.pairs:
        p.negative[1].write_bytes(p.positive[1].read_bytes())
    tok = EnergyTokenizer()
    res = evaluate_pairs(model, info, bench, tokenizer=tok, progress=False)
    frames, _ = tokenize_files(bench.files(), tok, None, progress=False)
    from slam.units.dataset import dedup

    files = bench.files()
    nll = dict(zip(files, score_sequences(model, [info.units_to_ids(dedup(frames[f])[0]) for f in files])))
    per_id = [(float(nll[p.positive[0]] < nll[p.negative[0]]) + 0.5) / 2 for p in bench.pairs]
    assert res["value"] == pytest.approx(100 * np.mean(per_id)) and res["n"] == 3


def test_all_identical_pairs_give_fifty_percent(tmp_path):
    model, info = tiny_lm()
    write_wav(tmp_path / "a.wav", 0.4, 1)
    pairs = [Pair(id=str(i), positive=[tmp_path / "a.wav"], negative=[tmp_path / "a.wav"]) for i in range(5)]
    res = evaluate_pairs(model, info, Benchmark("same", "pairs.jsonl", tmp_path, pairs), tokenizer=EnergyTokenizer(),
                         progress=False)
    assert res["value"] == 50.0


def test_units_cache_is_keyed_by_tokenizer_and_audio(tmp_path):
    files = [write_wav(tmp_path / f"{i}.wav", 0.3, seed=i) for i in range(3)]
    tok = EnergyTokenizer(tag="a")
    first, hashes = tokenize_files(files, tok, tmp_path / "cache", progress=False)
    assert tok.calls == 3
    again = EnergyTokenizer(tag="a")
    second, _ = tokenize_files(files, again, tmp_path / "cache", progress=False)
    assert again.calls == 0 and all(np.array_equal(first[f], second[f]) for f in files)
    other = EnergyTokenizer(n_units=7, tag="b")  # another tokenizer: never served the first one's units
    third, _ = tokenize_files(files, other, tmp_path / "cache", progress=False)
    assert other.calls == 3 and max(int(third[f].max()) for f in files) < 7
    files[0].write_bytes(files[1].read_bytes())  # same path, new content: re-tokenised, not served stale
    newer = EnergyTokenizer(tag="a")
    fourth, h2 = tokenize_files(files, newer, tmp_path / "cache", progress=False)
    assert h2[files[0]] != hashes[files[0]] and newer.calls == 0  # its content (file 1) is cached already
    assert np.array_equal(fourth[files[0]], first[files[1]])
