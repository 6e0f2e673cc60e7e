"""GenPPL and auto-BLEU: hand-worked arithmetic, and `slam eval` end to end on tiny local models."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from eval_helpers import mel_model_folder, tiny_text_lm, tiny_whisper
from slam.cli import main
from slam.eval.autobleu import auto_bleu, mean_auto_bleu, words
from slam.eval.genppl import TextLM, genppl_from_nll


def test_auto_bleu_hand_worked():
    # bigrams: [the cat] [cat the] [the cat] [cat sat]: the two "the cat" repeat -> 2 / 4
    assert auto_bleu("the cat the cat sat") == 0.5
    assert auto_bleu("go go go go") == 1.0  # [go go] x 3, all repeated
    assert auto_bleu("a b c d") == 0.0
    assert auto_bleu("word") == 0.0 and auto_bleu("") == 0.0
    assert words("Hi, it's me.") == ["Hi", ",", "it's", "me", "."]
    # [Hi ,] [, hi] [hi ,]: case kept, so no bigram repeats
    assert auto_bleu("Hi, hi,") == 0.0
    assert mean_auto_bleu(["the cat the cat sat", "a b c d", "go go go go"]) == pytest.approx(0.5)


def test_genppl_arithmetic_hand_worked():
    r = genppl_from_nll([1.0, 2.0, None])
    # exp(mean(1, 2)) = exp(1.5) = 4.4817; sd 0.70711, se 0.5, CI exp(1.5 -/+ 0.98)
    assert r["n"] == 2 and r["value"] == pytest.approx(4.481689, rel=1e-6)
    assert r["ci95"] == pytest.approx([math.exp(0.52), math.exp(2.48)], rel=1e-6)
    assert math.isnan(genppl_from_nll([None])["value"])


def test_text_lm_nll_is_mean_over_tokens_after_bos(tmp_path):
    lm = TextLM(str(tiny_text_lm(tmp_path / "lm")))
    ids = lm.token_ids("hello there")
    assert ids[0] == lm.tokenizer.bos_token_id and len(ids) == 1 + len("hello there")  # bytes, no merges
    logp = torch.log_softmax(lm.model(input_ids=torch.tensor([ids])).logits[0, :-1].float(), -1)
    manual = -logp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].mean().item()
    got = lm.nll(["hello there", "", "ok then, much longer text here"])
    assert got[0] == pytest.approx(manual, rel=1e-5) and got[1] is None and got[2] is not None


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("genppl")
    folder, wavs = mel_model_folder(root / "m", texts=("the quick brown fox jumps over the lazy dog",
                                                       "a speech model learns from sound alone",
                                                       "the lazy dog sleeps all day long"))
    pairs = root / "bench" / "pairs.jsonl"
    pairs.parent.mkdir()
    pairs.write_text("".join(json.dumps({"id": str(i), "positive": str(a), "negative": str(b), "group": g}) + "\n"
                             for i, (a, b, g) in enumerate([(wavs[0], wavs[1], "x"), (wavs[1], wavs[2], "x"),
                                                            (wavs[2], wavs[0], "y")])))
    return root, folder, wavs, tiny_whisper(root / "whisper"), tiny_text_lm(root / "lm")


def test_slam_eval_end_to_end(setup, capsys):
    root, folder, wavs, whisper, lm = setup
    out = root / "results.json"
    rc = main(["eval", str(folder), "--bench", f"mine={root / 'bench' / 'pairs.jsonl'}", "--genppl", str(wavs[0].parent),
               "--n-prompts", "2", "--prompt-seconds", "1.0", "--max-new-tokens", "12", "--asr", str(whisper), "--text-lm", str(lm),
               "--out", str(out), "--cache-dir", str(root / "cache")])
    assert rc == 0
    res = json.loads(out.read_text())
    printed = capsys.readouterr().out
    assert "mine" in printed and "genppl" in printed and "auto-BLEU" in printed and "Results in" in printed
    assert len(res["model"]["hash"]) == 64 and res["metrics"]["mine"]["n"] == 3
    assert set(res["metrics"]["mine"]["groups"]) == {"x", "y"}
    g = res["metrics"]["genppl"]
    assert g["n_prompts"] == 2 and g["prompt_seconds"] == 1.0 and g["sampling"]["top_k"] == 25
    samples = [json.loads(x) for x in (root / "results.genppl.jsonl").read_text().splitlines()]
    assert len(samples) == 2 and all(len(s["units"]) == 12 and s["text"] for s in samples)
    assert [s["prompt"] for s in samples] == [str(wavs[0]), str(wavs[1])]
    # the reported numbers follow from the transcripts: recompute with an independent TextLM
    nll = TextLM(str(lm)).nll([s["text"] for s in samples])
    assert g["value"] == pytest.approx(math.exp(np.mean(nll)), rel=1e-5)
    assert g["auto_bleu"] == pytest.approx(np.mean([auto_bleu(s["text"]) for s in samples]))
    # prompts cut to 1 s (25 frames); vocoded = the prompt at its own timing + 12 units held for the
    # prompt's mean duration (the mel vocoder's fill for units without one)
    from slam.audio import load_audio
    from slam.tokens import SlamInfo
    from slam.units.dataset import dedup
    from slam.units.tokenizer import load_tokenizer

    tok = load_tokenizer(SlamInfo.load(folder).tokenizer, root=folder)
    for s, w in zip(samples, wavs):
        _, d = dedup(tok.encode(load_audio(w)[:16000]))
        assert d.sum() == 25
        assert s["seconds"] == pytest.approx((25 + 12 * max(1, round(d.mean()))) * 0.04)

    # a second run reads the units cache and gives the same pair accuracy
    rc = main(["eval", str(folder), "--bench", f"mine={root / 'bench' / 'pairs.jsonl'}", "--score", "sum",
               "--out", str(root / "r2.json"), "--cache-dir", str(root / "cache")])
    r2 = json.loads((root / "r2.json").read_text())["metrics"]["mine"]
    assert rc == 0 and r2["score"] == "sum" and r2["benchmark_hash"] == res["metrics"]["mine"]["benchmark_hash"]


def test_missing_parts_are_one_line_errors(setup, capsys):
    root, folder, wavs, whisper, lm = setup
    rc = main(["eval", str(folder), "--genppl", str(wavs[0].parent), "--asr", str(root / "no-such-asr"),
               "--text-lm", str(lm), "--out", str(root / "x.json")])
    err = capsys.readouterr().err
    assert rc == 2 and "cannot load the ASR" in err and "--asr" in err
    rc = main(["eval", str(folder), "--bench", str(root / "nothing-here")])
    assert rc == 2 and "does not exist" in capsys.readouterr().err
    rc = main(["eval", str(folder)])
    assert rc == 2 and "nothing to evaluate" in capsys.readouterr().err
