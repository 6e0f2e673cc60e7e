"""GenPPL and auto-BLEU: hand-worked arithmetic, and `slam eval` end to end on tiny local models."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from eval_helpers import mel_model_folder, tiny_text_lm, tiny_whisper
from slam.cli import main
from slam.eval.autobleu import auto_bleu, mean_auto_bleu, treebank_words, words
from slam.eval.genppl import PROTOCOLS, TextLM, alignment_cut, genppl_from_nll, prompt_files
from slam.generate import sample_units
from slam.tokens import SlamInfo


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


def test_treebank_words_match_nltk_hand_worked():
    """NLTK's NLTKWordTokenizer on the whole transcript, as slamkit calls it (worked by hand from its rules)."""
    # NLTK's own docstring example: only the final period splits off ("York." and "them." stay whole),
    # "$" stands alone, "3,36" keeps its comma (a digit follows), brackets stand alone
    s = "Good muffins cost $3.88 (roughly 3,36 euros)\nin New York.  Please buy me\ntwo of them.\nThanks."
    assert treebank_words(s) == ["Good", "muffins", "cost", "$", "3.88", "(", "roughly", "3,36", "euros", ")",
                                 "in", "New", "York.", "Please", "buy", "me", "two", "of", "them.", "Thanks", "."]
    # clitics split (n't, 're), MacIntyre contractions (gonna -> gon na, cannot -> can not), ", " and the
    # final "." stand alone
    assert treebank_words("I don't think they're gonna stop, cannot.") == [
        "I", "do", "n't", "think", "they", "'re", "gon", "na", "stop", ",", "can", "not", "."]
    # an opening " after a space becomes ``, a closing one ''; the inner "twice." keeps its period
    assert treebank_words('She said "hi there" twice. Then left.') == [
        "She", "said", "``", "hi", "there", "''", "twice.", "Then", "left", "."]
    # Whisper's leading space changes nothing; '?' and '!' always split
    assert treebank_words(" What? No!") == ["What", "?", "No", "!"]
    assert words("I don't think they're") == ["I", "don't", "think", "they're"]


def test_auto_bleu_word_splitters_differ_where_nltk_keeps_inner_periods():
    # NLTK: the cat sat. the cat sat . -> bigrams [the cat][cat sat.][sat. the][the cat][cat sat][sat .]:
    # only "the cat" repeats -> 2/6. Regex: the cat sat . the cat sat . -> 7 bigrams, "the cat", "cat sat",
    # "sat ." repeat (2 each) -> 6/7.
    assert auto_bleu("the cat sat. the cat sat.") == pytest.approx(2 / 6)
    assert auto_bleu("the cat sat. the cat sat.", splitter="regex") == pytest.approx(6 / 7)


class Scripted(torch.nn.Module):
    """A stand-in LM whose next-token logits follow a script (one id per step, logit 100 vs 0)."""

    def __init__(self, script, vocab):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.script, self.vocab, self.step = script, vocab, 0

    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None, use_cache=True):
        logits = torch.zeros(input_ids.shape[0], input_ids.shape[1], self.vocab)
        logits[:, -1, self.script[min(self.step, len(self.script) - 1)]] = 100.0
        self.step += 1
        return type("Out", (), {"logits": logits, "past_key_values": None})()


def test_paper_sampling_draws_eos_and_drops_pad():
    """slamkit samples over every id: a drawn pad (0) stays in the context and is dropped from the units, a
    drawn eos (1) ends the continuation. slam's sampler never draws either: always max_new_tokens units."""
    info = SlamInfo(n_units=10)  # ids: pad 0, <s> 1, units 2..11
    script = [2 + 5, 0, 2 + 7, 1, 2 + 9]  # unit 5, pad, unit 7, eos, unit 9
    paper = sample_units(Scripted(script, 12), info, [[3, 4]], max_new_tokens=5, stop_at_eos=True)[0][0]
    assert paper.tolist() == [5, 7]
    slam = sample_units(Scripted(script, 12), info, [[3, 4]], max_new_tokens=5)[0][0]
    assert len(slam) == 5 and slam[0] == 5 and slam[2] == 7 and slam[4] == 9
    # eos at the first step: an empty continuation
    assert len(sample_units(Scripted([1], 12), info, [[3]], max_new_tokens=4, stop_at_eos=True)[0][0]) == 0


def test_prompt_selection_alignment_cut_and_min_length(tmp_path):
    from eval_helpers import write_wav

    for i, sec in enumerate((2.0, 7.0, 6.5)):
        write_wav(tmp_path / f"f{i}.wav", sec, seed=i)
    assert [f.name for f in prompt_files(tmp_path, 10, min_seconds=6.0)] == ["f1.wav", "f2.wav"]
    (tmp_path / "f1.json").write_text(json.dumps({"aligned_text": [["a", 0.1, 1.2], ["b", 1.3, 2.9],
                                                                  ["c", 3.0, 3.4], ["d", 3.5, 4.0]]}))
    # word ends 1.2, 2.9, 3.4, 4.0: nearest to 3.0 is 2.9 (0.1 away; 3.4 is 0.4 away)
    assert alignment_cut(tmp_path / "f1.wav", 3.0) == pytest.approx(2.9)
    from slam.errors import SlamError

    with pytest.raises(SlamError, match="no word alignment"):
        alignment_cut(tmp_path / "f2.wav", 3.0)


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
               "--out", str(out), "--cache-dir", str(root / "cache"), "--genppl-protocol", "slam"])
    assert rc == 0
    res = json.loads(out.read_text())
    printed = capsys.readouterr().out
    assert "mine" in printed and "genppl" in printed and "auto-BLEU" in printed and "Results in" in printed
    assert len(res["model"]["hash"]) == 64 and res["metrics"]["mine"]["n"] == 3
    assert set(res["metrics"]["mine"]["groups"]) == {"x", "y"}
    g = res["metrics"]["genppl"]
    assert g["n_prompts"] == 2 and g["prompt_seconds"] == 1.0 and g["sampling"]["top_k"] == 25
    assert g["protocol"] == {**PROTOCOLS["slam"].__dict__} and g["asr_language"] == "en" and g["n_eos"] == 0
    assert sorted(p.name for p in (root / "results.genppl").iterdir()) == ["0000.wav", "0001.wav"]
    samples = [json.loads(x) for x in (root / "results.genppl.jsonl").read_text().splitlines()]
    assert len(samples) == 2 and all(len(s["units"]) == 12 and s["text"] for s in samples)
    assert [s["prompt"] for s in samples] == [str(wavs[0]), str(wavs[1])]
    # the reported numbers follow from the transcripts: recompute with an independent TextLM
    nll = TextLM(str(lm)).nll([s["text"] for s in samples])
    assert g["value"] == pytest.approx(math.exp(np.mean(nll)), rel=1e-5)
    assert g["auto_bleu"] == pytest.approx(np.mean([auto_bleu(s["text"], splitter="regex") for s in samples]))
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

    # the paper's protocol (the default): eos may end a continuation, every duration predicted (the mel
    # vocoder's default for units without one), Whisper's language detected, transcripts unstripped
    import soundfile as sf

    rc = main(["eval", str(folder), "--genppl", str(wavs[0].parent), "--n-prompts", "2", "--prompt-seconds", "1.0",
               "--max-new-tokens", "12", "--asr", str(whisper), "--text-lm", str(lm), "--out", str(root / "p.json"),
               "--cache-dir", str(root / "cache")])
    assert rc == 0
    gp = json.loads((root / "p.json").read_text())["metrics"]["genppl"]
    assert gp["protocol"]["name"] == "paper" and gp["asr_language"] is None and gp["text_lm_dtype"] == "float32"
    sp = [json.loads(x) for x in (root / "p.genppl.jsonl").read_text().splitlines()]
    from slam.vocoder import load_vocoder

    default = load_vocoder(SlamInfo.load(folder), folder).default_duration
    for s in sp:
        assert len(s["units"]) <= 12 and s["eos"] == (len(s["units"]) < 12)
        assert s["seconds"] == pytest.approx((s["prompt_units"] + len(s["units"])) * default * 0.04)
        assert sf.info(str(root / s["audio"])).frames == round(s["seconds"] * 16000)
    assert gp["auto_bleu"] == pytest.approx(np.mean([auto_bleu(s["text"]) for s in sp]))
    nll = TextLM(str(lm), dtype="float32").nll([s["text"] for s in sp])
    assert gp["value"] == pytest.approx(math.exp(np.mean([v for v in nll if v is not None])), rel=1e-5)

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
