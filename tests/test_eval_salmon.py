"""SALMon read from the released layout (`<part>/sample_<i>_<j>.wav`), scored per part as slamkit and the
official salmon.py score it; and one `slam eval` run over every benchmark layout writing one results.json."""

from __future__ import annotations

import json

import pytest

from eval_helpers import mel_model_folder, salmon_folder, write_wav, zr_folder
from slam.cli import main
from slam.errors import SlamError
from slam.eval.layouts import expand_bench, read_benchmark
from slam.eval.pairs import score_pairs
from slam.eval.salmon import PARTS


def test_salmon_part_pairs_sorted_files_first_positive_ties_half(tmp_path):
    part = tmp_path / "salmon" / "speaker_consistency"
    for i in (0, 1, 2, 11):  # indices need not be contiguous; 11 sorts after 2 (numerically)
        for j in (1, 0):  # written in reverse: the sorted order decides, not the directory's
            write_wav(part / f"sample_{i}_{j}.wav", 0.2, seed=10 * i + j)
    b = read_benchmark(part)
    assert b.layout == "salmon" and b.name == "salmon/speaker_consistency"
    assert [(p.id, p.positive[0].name, p.negative[0].name) for p in b.pairs] == [
        (str(i), f"sample_{i}_0.wav", f"sample_{i}_1.wav") for i in (0, 1, 2, 11)]
    # positive more likely in samples 0 and 11, less in 1, a tie in 2: (1 + 0 + 0.5 + 1) / 4 = 62.5 %
    nll = {}
    for p, (pos, neg) in zip(b.pairs, [(1.0, 2.0), (3.0, 1.0), (2.0, 2.0), (0.5, 0.7)]):
        nll[p.positive[0]], nll[p.negative[0]] = pos, neg
    r = score_pairs(b, nll)
    assert r["value"] == pytest.approx(62.5) and r["n"] == 4
    write_wav(part / "sample_5_0.wav", 0.2, seed=1)
    with pytest.raises(SlamError, match="sample 5 has 1 file"):
        read_benchmark(part)
    write_wav(part / "sample_5_1.wav", 0.2, seed=2), write_wav(part / "sample_5_2.wav", 0.2, seed=3)
    with pytest.raises(SlamError, match="sample 5 has 3 file"):
        read_benchmark(part)


def test_salmon_bench_names_all_parts_or_one(tmp_path):
    root = salmon_folder(tmp_path / "salmon_benchmark", PARTS, samples=1, seconds=0.1)
    parts = expand_bench("salmon", root)
    assert [n for n, _ in parts] == [f"salmon/{p}" for p in PARTS]
    assert all(b.layout == "salmon" and len(b.pairs) == 1 for _, b in parts)
    for path in (root, root / "rir_consistency"):  # salmon/<part>=ROOT or =ROOT/<part>
        [(name, b)] = expand_bench("salmon/rir_consistency", path)
        assert name == "salmon/rir_consistency" and b.path == root / "rir_consistency"
    with pytest.raises(SlamError, match="a SALMon folder of 8 parts"):
        read_benchmark(root)  # a whole SALMon folder is not one benchmark
    for f in (root / "gender_consistency").iterdir():
        f.unlink()
    (root / "gender_consistency").rmdir()
    with pytest.raises(SlamError, match="the SALMon parts gender_consistency are missing"):
        expand_bench("salmon", root)
    assert len(expand_bench("salmon/bg_alignment", root)) == 1  # the parts that are there still run alone


def test_slam_eval_runs_every_benchmark_into_one_results_json(tmp_path, capsys):
    model_dir, _ = mel_model_folder(tmp_path / "m", n_units=20)
    syn = tmp_path / "zr" / "syntactic" / "dev"
    zr_folder(syn, "syntactic", [dict(id=i, voice=v, type="agreement", subtype="s", transcription="t",
                                      correct=c, seed=10 * i + k + 5 * c)
                                 for i, voices in ((0, ["Alex", "Bruce"]), (1, ["Alex"]))
                                 for k, v in enumerate(voices) for c in (1, 0)], seconds=0.2)
    lex = tmp_path / "zr" / "lexical" / "dev"
    zr_folder(lex, "lexical", [dict(id=i, voice="Alex", frequency=f if c else "", word="w", phones="w",
                                    length=1, correct=c, seed=50 + 2 * i + c)
                               for i, f in ((0, 0), (1, 7), (2, 30)) for c in (1, 0)], seconds=0.2)
    ssc, tsc = tmp_path / "sSC", tmp_path / "tSC"
    for folder in (ssc, tsc):
        for n in range(4):
            write_wav(folder / f"{n}_story.wav", 0.2, seed=70 + n + (10 if folder == tsc else 0))
    root = salmon_folder(tmp_path / "salmon", PARTS, samples=2, seconds=0.1)
    # rir_consistency: every sample's two files identical -> all ties -> exactly 50 %
    for i in range(2):
        (root / "rir_consistency" / f"sample_{i}_1.wav").write_bytes(
            (root / "rir_consistency" / f"sample_{i}_0.wav").read_bytes())
    out = tmp_path / "results.json"
    assert main(["eval", str(model_dir), "--bench", f"sblimp={syn}", "--bench", f"swuggy={lex}", "--bench",
                 f"ssc={ssc}", "--bench", f"tsc={tsc}", "--bench", f"salmon={root}", "--out", str(out),
                 "--device", "cpu", "--no-cache"]) == 0
    m = json.loads(out.read_text())["metrics"]
    assert set(m) == {"sblimp", "swuggy", "ssc", "tsc"} | {f"salmon/{p}" for p in PARTS}
    assert (m["sblimp"]["n"], m["sblimp"]["n_comparisons"], m["swuggy"]["n"]) == (2, 3, 3)
    assert m["swuggy"]["invocab"]["n"] == 2 and m["ssc"]["n"] == m["tsc"]["n"] == 2
    assert m["salmon/rir_consistency"]["value"] == 50.0 and m["salmon/rir_consistency"]["n"] == 2
    for r in m.values():
        assert r["sample_rates"] == {"16000": r["n_files"]} and r["protocol"]
        assert 0 <= r["ci95"][0] <= r["value"] <= r["ci95"][1] <= 100
    table = capsys.readouterr().out
    assert "salmon/speaker_consistency" in table and "in-vocab" in table
    test = tmp_path / "zr" / "lexical" / "test"  # the ZeroSpeech test split comes without gold.csv
    write_wav(test / "aBcDeFgHiJk.wav", 0.1, seed=1)
    assert main(["eval", str(model_dir), "--bench", f"t={test}", "--out", str(out), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "needs its gold.csv" in err and "SALMon" in err
