"""Benchmark layouts and the official scoring: ZeroSpeech 2021 (voice-averaged units, in-vocab), Spoken
StoryCloze, slamkit's repackaged folders, unrecognised folders. Folders are built in the published layouts;
the expected accuracies are worked by hand and chosen so the official averaging and the naive one differ."""

from __future__ import annotations

import pytest

from eval_helpers import EnergyTokenizer, tiny_lm, write_wav, zr_folder
from slam.errors import SlamError
from slam.eval.layouts import Benchmark, Pair, read_benchmark
from slam.eval.pairs import evaluate_pairs, score_pairs

# sBLIMP units with unequal voice counts: (type, subtype, id, voices)
SYN_UNITS = [("agreement", "s1", 1, ["Alex", "Bruce", "Carl"]), ("agreement", "s1", 2, ["Alex"]),
             ("filler_gap", "wh", 1, ["Alex", "Bruce"])]  # id 1 again, another (type, subtype): its own unit


def _syntactic(folder, seeds):
    """seeds: one (positive seed, negative seed) per voice pair, in SYN_UNITS order. Rows: every correct row
    first, then the incorrect ones in the same order (pairing is by position, not by adjacency)."""
    flat = [(t, s, i, v) for t, s, i, voices in SYN_UNITS for v in voices]
    good = [dict(id=i, voice=v, type=t, subtype=s, transcription="good", correct=1, seed=ps)
            for (t, s, i, v), (ps, _) in zip(flat, seeds)]
    bad = [dict(id=i, voice=v, type=t, subtype=s, transcription="bad", correct=0, seed=ns)
           for (t, s, i, v), (_, ns) in zip(flat, seeds)]
    paths = zr_folder(folder, "syntactic", good + bad)
    return list(zip(paths[:len(flat)], paths[len(flat):]))


def _nll_for(pairs, outcomes):
    """File scores that give each (positive, negative) the wanted outcome (1, 0 or 0.5)."""
    nll = {}
    for (pos, neg), o in zip(pairs, outcomes):
        nll[pos], nll[neg] = {1: (1.0, 2.0), 0: (2.0, 1.0), 0.5: (1.5, 1.5)}[o]
    return nll


def test_syntactic_official_averaging_hand_worked(tmp_path):
    folder = tmp_path / "syntactic" / "dev"
    pairs = _syntactic(folder, [(10 + k, 20 + k) for k in range(6)])
    bench = read_benchmark(folder)
    assert bench.layout == "zerospeech-syntactic" and len(bench.pairs) == 3
    assert [len(p.positive) for p in bench.pairs] == [3, 1, 2]
    # outcomes per voice pair: unit 1: 1, 1, 0 -> 2/3; unit 2: 0 -> 0; unit 3: 1, tie -> 0.75
    r = score_pairs(bench, _nll_for(pairs, [1, 1, 0, 0, 1, 0.5]))
    assert r["value"] == pytest.approx(100 * (2 / 3 + 0 + 0.75) / 3)  # 47.22; naive 3.5/6 = 58.33
    assert (r["n"], r["n_comparisons"]) == (3, 6)
    assert r["groups"]["agreement"]["value"] == pytest.approx(100 / 3) and r["groups"]["agreement"]["n"] == 2
    assert r["groups"]["filler_gap"]["value"] == pytest.approx(75.0) and r["groups"]["filler_gap"]["n"] == 1


def test_syntactic_official_averaging_end_to_end(tmp_path):
    """The same averaging through the model: with audio A (seed 1) and B (seed 2) and o = outcome(A vs B),
    the voice pairs (A,B) (A,B) (B,A) | (B,A) | (A,B) (A,A) give units (1+o)/3, 1-o, (o+0.5)/2."""
    model, info = tiny_lm()
    tok = EnergyTokenizer()
    a, b = write_wav(tmp_path / "a.wav", 0.3, 1), write_wav(tmp_path / "b.wav", 0.3, 2)  # as zr_folder writes
    o = evaluate_pairs(model, info, Benchmark("ab", "pairs.jsonl", tmp_path, [Pair("0", [a], [b])]),
                       tokenizer=tok, progress=False)["value"] / 100
    assert o in (0.0, 1.0)
    folder = tmp_path / "syntactic" / "dev"
    _syntactic(folder, [(1, 2), (1, 2), (2, 1), (2, 1), (1, 2), (1, 1)])
    r = evaluate_pairs(model, info, folder, tokenizer=tok, progress=False)
    units = [(1 + o) / 3, 1 - o, (o + 0.5) / 2]
    naive = (o + o + (1 - o) + (1 - o) + o + 0.5) / 6
    assert r["value"] == pytest.approx(100 * sum(units) / 3) and r["n"] == 3
    assert abs(r["value"] - 100 * naive) > 5  # 47.2 vs 58.3 (o = 1) or 52.8 vs 41.7 (o = 0)
    assert r["groups"]["agreement"]["value"] == pytest.approx(100 * (units[0] + units[1]) / 2)
    assert r["sample_rates"] == {"16000": 12} and r["layout"] == "zerospeech-syntactic"
    assert "(type, subtype, id)" in r["protocol"]


def test_lexical_all_and_invocab_hand_worked(tmp_path):
    # ids with unequal voices; the word row carries the frequency, the nonword row leaves it empty.
    # id 1: freq 0 (oov), voices 1, 0, 0 -> 1/3; id 2: freq 3, 1 -> 1; id 3: freq 250, 1, tie -> 0.75;
    # id 4: freq 5 (the scorer's '6-20' band, which starts at 5), 0, 0 -> 0
    spec = [(1, 0, 3), (2, 3, 1), (3, 250, 2), (4, 5, 2)]
    rows, k = [], 0
    for i, freq, nv in spec:
        for v in ["Alex", "Bruce", "Carl"][:nv]:
            rows.append(dict(id=i, voice=v, frequency=freq, word=f"word{i}", phones="w o", length=2, correct=1,
                             seed=100 + k))
            rows.append(dict(id=i, voice=v, frequency="", word=f"nonw{i}", phones="n o", length=2, correct=0,
                             seed=200 + k))
            k += 1
    folder = tmp_path / "lexical" / "dev"
    paths = zr_folder(folder, "lexical", rows)
    bench = read_benchmark(folder)
    assert bench.layout == "zerospeech-lexical" and [p.frequency for p in bench.pairs] == [0, 3, 250, 5]
    r = score_pairs(bench, _nll_for(list(zip(paths[::2], paths[1::2])), [1, 0, 0, 1, 1, 0.5, 0, 0]))
    assert r["value"] == pytest.approx(100 * (1 / 3 + 1 + 0.75 + 0) / 4)  # 52.08; naive 3.5/8 = 43.75
    assert r["n"] == 4 and r["n_comparisons"] == 8
    assert r["invocab"]["value"] == pytest.approx(100 * (1 + 0.75 + 0) / 3) and r["invocab"]["n"] == 3
    assert {g: (v["value"], v["n"]) for g, v in r["groups"].items()} == {
        "oov": (pytest.approx(100 / 3), 1), "1-5": (100.0, 1), "6-20": (0.0, 1), ">100": (75.0, 1)}
    rows[0]["frequency"] = ""  # a word without a count: the official scorer cannot band it (and fails)
    zr_folder(folder, "lexical", rows)
    with pytest.raises(SlamError, match="line 2: the word has no frequency"):
        read_benchmark(folder)


def test_gold_csv_out_of_published_order_is_refused(tmp_path):
    folder = tmp_path / "syntactic" / "dev"
    _syntactic(folder, [(10 + k, 20 + k) for k in range(6)])
    lines = (folder / "gold.csv").read_text().splitlines()
    lines[7], lines[10] = lines[10], lines[7]  # two incorrect rows of different units swap places
    (folder / "gold.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(SlamError, match=r"line 2 \(correct\) and line 8 \(incorrect\).*published order"):
        read_benchmark(folder)


def test_storycloze_repeated_keys_refused_and_sample_rate_recorded(tmp_path):
    import soundfile as sf

    from conftest import synth_speechlike

    sc = tmp_path / "sSC"
    for n in range(4):
        write_wav(sc / f"{n}_story.wav", 0.3, seed=n)
    model, info = tiny_lm()
    r = evaluate_pairs(model, info, sc, tokenizer=EnergyTokenizer(), progress=False)
    assert r["layout"] == "storycloze" and r["n"] == 2 and r["sample_rates"] == {"16000": 4}
    sf.write(sc / "3_story.wav", synth_speechlike(0.3, sr=22050, seed=9), 22050)  # slamkit would not resample
    r = evaluate_pairs(model, info, sc, tokenizer=EnergyTokenizer(), progress=False)
    assert r["sample_rates"] == {"16000": 3, "22050": 1}
    write_wav(sc / "2_other.wav", 0.3, seed=7)
    write_wav(sc / "5_end.wav", 0.3, seed=8)
    with pytest.raises(SlamError, match="2_other.wav and 2_story.wav share the pairing key 2"):
        read_benchmark(sc)


def test_slamkit_repackaged_folders(tmp_path):
    # sBLIMP as slamkit repackages it: one subfolder per phenomenon, `<n>+...wav` (sorted numerically)
    sb = tmp_path / "sblimp"
    for sub in ("anaphor_agreement", "island_effects"):
        for n in (0, 1, 2, 3, 9, 10):
            write_wav(sb / sub / f"{n}+{sub}+{'good' if n % 2 == 0 else 'bad'}.wav", 0.2, seed=n)
    (sb / "__MACOSX").mkdir()
    (sb / "__MACOSX" / "._0+x.wav").write_bytes(b"\0\0")  # a Mac zip's resource fork: not audio, skipped
    b = read_benchmark(sb)
    assert b.layout == "slamkit-numbered" and b.details == {"separator": "+", "subfolders": 2}
    assert len(b.pairs) == 6 and {p.group for p in b.pairs} == {"anaphor_agreement", "island_effects"}
    assert [(p.positive[0].name[:2], p.negative[0].name[:2]) for p in b.pairs[:3]] == [
        ("0+", "1+"), ("2+", "3+"), ("9+", "10")]
    # ms_sSC: one subfolder per speaker of `<n>_...wav`, every subfolder in one run
    ms = tmp_path / "ms_sSC"
    for spk in ("spk_a", "spk_b", "spk_c"):
        for n in range(4):
            write_wav(ms / spk / f"{n}_{spk}.wav", 0.2, seed=n)
    b = read_benchmark(ms)
    assert b.details == {"separator": "_", "subfolders": 3} and len(b.pairs) == 6
    model, info = tiny_lm()
    r = evaluate_pairs(model, info, b, tokenizer=EnergyTokenizer(), progress=False)
    assert r["n"] == 6 and set(r["groups"]) == {"spk_a", "spk_b", "spk_c"}
    write_wav(ms / "spk_c" / "4_spk_c.wav", 0.2, seed=4)  # an odd subfolder would pair across subfolders
    with pytest.raises(SlamError, match="spk_c: 5 wav files; this layout needs an even number"):
        read_benchmark(ms)


def test_unrecognised_folders_get_one_line_listing_the_layouts(tmp_path):
    test = tmp_path / "lexical" / "test"  # ZeroSpeech test split: wavs, no gold.csv
    for k in range(3):
        write_wav(test / f"aBcDeFgHiJ{k}.wav", 0.1, seed=k)
    messages = []
    for path in (test, tmp_path / "lexical"):
        with pytest.raises(SlamError) as e:
            read_benchmark(path)
        msg = str(e.value)
        assert "\n" not in msg and "not a benchmark layout slam reads" in msg
        for layout in ("ZeroSpeech 2021", "StoryCloze", "SALMon", "ms_sSC", "pairs.jsonl"):
            assert layout in msg
        messages.append(msg)
    assert "a ZeroSpeech 2021 split needs its gold.csv" in messages[0]  # not "does not start with '<n>_'"
    assert "subfolders test" in messages[1]
    mixed = tmp_path / "mixed"
    write_wav(mixed / "0_a.wav", 0.1, 1), write_wav(mixed / "notes.wav", 0.1, 2)
    with pytest.raises(SlamError, match="notes.wav does not start with '<n>_' or '<n>\\+'"):
        read_benchmark(mixed)
