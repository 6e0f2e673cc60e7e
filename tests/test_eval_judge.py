"""LLM-as-judge: template file, score parsing, CI, and a whole judged run with a tiny local causal LM whose
answers are known in advance (a bigram machine: each character's embedding is one-hot, attention and MLP are
zero, so the next token is a fixed function of the current one)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from eval_helpers import _byte_vocab, mel_model_folder, tiny_whisper
from slam.cli import main
from slam.errors import SlamError
from slam.eval.judge import DEFAULT_TEMPLATE, LocalJudge, fill, load_template, parse_score, score_stats


def bigram_judge(folder, chain: str, last: str = ":") -> str:
    """A 1-layer Llama over bytes that, greedy, writes `chain` after any text ending in `last`, then stops:
    hidden = one-hot of the current byte (x sqrt(d) after RMSNorm), lm_head maps it to the next byte."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab = _byte_vocab(["<|begin_of_text|>", "<|end_of_text|>"])
    bpe = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bos, eos = vocab["<|begin_of_text|>"], vocab["<|end_of_text|>"]
    bpe.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                                       special_tokens=[("<|begin_of_text|>", bos)])
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>",
                                  pad_token="<|end_of_text|>")
    tok.save_pretrained(folder)
    b2u = bytes_to_unicode()
    cid = {c: vocab[b2u[ord(c)]] for c in set(chain + last)}
    V, H = len(vocab), len(vocab) + 2  # even head size for RoPE
    cfg = LlamaConfig(vocab_size=V, hidden_size=H, intermediate_size=8, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=2, bos_token_id=bos, eos_token_id=eos, pad_token_id=eos,
                      tie_word_embeddings=False)
    m = LlamaForCausalLM(cfg)
    with torch.no_grad():
        for p in m.parameters():
            p.zero_()
        m.model.embed_tokens.weight[:, :V] = torch.eye(V)
        m.model.norm.weight.fill_(1.0)
        m.model.layers[0].input_layernorm.weight.fill_(1.0)
        m.model.layers[0].post_attention_layernorm.weight.fill_(1.0)
        head = m.lm_head.weight  # [V, H]: logit(next) = 16.1 * head[next, current]
        head[eos, :V] = 1.0  # every byte -> end, unless the chain says otherwise
        seq = [last] + list(chain)
        for a, b in zip(seq, seq[1:]):
            head[cid[b], cid[a]] = 10.0
    m.generation_config.pad_token_id = eos
    m.save_pretrained(folder)
    return str(folder)


def test_template_file_and_parsing(tmp_path):
    t = load_template()
    assert t["source"] == str(DEFAULT_TEMPLATE) and t["scale"] == [1, 5] and t["prompt_cut"] == "alignment"
    text = fill(t, "once upon a time", "there was a cat")
    assert '"once upon a time", and the text continuation is :"there was a cat"' in text
    assert parse_score("so The final answer is $\\boxed{4}$. later \\boxed{2}", t) == 4  # the first match
    assert parse_score("\\boxed{7}", t) is None and parse_score("four", t) is None  # outside 1-5, none
    bad = tmp_path / "t.json"
    for body, msg in ((dict(t, template="no fields"), "does not contain"), (dict(t, scale=[5, 1]), "lo < hi"),
                      (dict(t, answer_regex="\\d+"), "one group")):
        bad.write_text(json.dumps(body))
        with pytest.raises(SlamError, match=msg):
            load_template(bad)


def test_score_stats_hand_worked():
    # scores 2, 4, 4, 5 + one unparsed: mean 3.75, sd 1.2583, half 1.96 * 1.2583 / 2 = 1.2331
    r = score_stats([2, 4, None, 4, 5], [1, 5])
    assert (r["n"], r["n_unparsed"], r["ci_method"]) == (4, 1, "normal") and r["value"] == 3.75
    assert r["ci95"] == pytest.approx([3.75 - 1.23315, 3.75 + 1.23315], abs=1e-4)
    assert r["histogram"] == {"1": 0, "2": 1, "3": 0, "4": 2, "5": 1}
    # all 5 on a 1-5 scale: not the point [5, 5] but the Wilson interval of p = 1 over n = 3 rescaled:
    # [1 + 4 * 0.4385, 5] = [2.754, 5]
    r = score_stats([5, 5, 5], [1, 5])
    assert r["ci_method"] == "wilson" and r["ci95"] == pytest.approx([2.7540, 5.0], abs=1e-3)


def test_bigram_judge_writes_its_chain(tmp_path):
    t = load_template()
    j = LocalJudge(bigram_judge(tmp_path / "j", " \\boxed{4}"), dict(t, temperature=0, max_new_tokens=20))
    answers = j(["rate this:", "and this one, longer:"])
    assert answers == [" \\boxed{4}", " \\boxed{4}"]
    assert [parse_score(a, t) for a in answers] == [4, 4]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("judge")
    folder, wavs = mel_model_folder(root / "m", texts=("the quick brown fox jumps over the lazy dog today",
                                                       "a speech model learns from sound alone and then speaks",
                                                       "yes"))
    return root, folder, wavs, tiny_whisper(root / "whisper")


def test_slam_eval_judge_end_to_end(setup, tmp_path):
    root, folder, wavs, whisper = setup
    t = load_template()
    # the template ends its instruction with a colon-free sentence: give the machine a template ending in ":"
    mine = dict(t, template=t["template"] + " Score:", temperature=0, max_new_tokens=16, prompt_cut="seconds",
                min_file_seconds=2.0)
    mine.pop("source")
    (tmp_path / "t.json").write_text(json.dumps(mine))
    judge = bigram_judge(tmp_path / "judge", " \\boxed{3}")
    out = tmp_path / "r.json"
    rc = main(["eval", str(folder), "--judge", judge, "--judge-template", str(tmp_path / "t.json"), "--judge-prompts",
               str(wavs[0].parent), "--asr", str(whisper), "--max-new-tokens", "8", "--out", str(out),
               "--cache-dir", str(root / "cache")])
    assert rc == 0
    r = json.loads(out.read_text())["metrics"]["judge"]
    lengths = [len(np.asarray(__import__("slam.audio", fromlist=["x"]).load_audio(w))) / 16000 for w in wavs]
    n_long = sum(sec >= 2.0 for sec in lengths)  # "yes" is under 2 s: skipped as slamkit's min_file_length
    assert n_long == 2
    assert r["n_prompts"] == n_long and r["n"] == n_long and r["value"] == 3.0 and r["ci_method"] == "wilson"
    assert r["histogram"]["3"] == n_long and r["n_unparsed"] == 0 and r["protocol"] == "paper"
    rows = [json.loads(x) for x in (tmp_path / "r.judge.jsonl").read_text().splitlines()]
    assert [x["answer"] for x in rows] == [" \\boxed{3}"] * n_long and all(x["score"] == 3 for x in rows)
    assert all(x["prompt_seconds"] == 3.0 for x in rows)  # cut at 3 s (the template's prompt_seconds)
    assert len(list((tmp_path / "r.judge").glob("*.wav"))) == n_long
    # a judge that answers outside the scale: every answer unparsed, no score, NaN value
    bad = bigram_judge(tmp_path / "judge9", " \\boxed{9}")
    rc = main(["eval", str(folder), "--judge", bad, "--judge-template", str(tmp_path / "t.json"), "--judge-prompts",
               str(wavs[0].parent), "--asr", str(whisper), "--max-new-tokens", "8", "--out", str(tmp_path / "b.json"),
               "--cache-dir", str(root / "cache")])
    r = json.loads((tmp_path / "b.json").read_text())["metrics"]["judge"]
    assert rc == 0 and r["n"] == 0 and r["n_unparsed"] == n_long and math.isnan(r["value"])


def test_judge_errors_are_one_line(setup, tmp_path, capsys):
    root, folder, wavs, whisper = setup
    rc = main(["eval", str(folder), "--judge", str(tmp_path / "nope"), "--judge-prompts", str(wavs[0].parent),
               "--asr", str(whisper), "--out", str(tmp_path / "x.json"), "--judge-template", str(tmp_path / "no.json")])
    assert rc == 2 and "judge template" in capsys.readouterr().err
    rc = main(["eval", str(folder), "--judge", "x"])
    assert rc == 2 and "--judge needs prompts" in capsys.readouterr().err
