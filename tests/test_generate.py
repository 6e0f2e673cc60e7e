"""Sampling: seeded, batch-invariant, only units, top-k / temperature / repetition penalty arithmetic."""

from __future__ import annotations

import numpy as np
import torch

from eval_helpers import tiny_lm
from slam.generate import next_unit_logits, sample_units


def greedy_reference(model, info, prompt, n):
    ids = list(info.units_to_ids(prompt, eos=False))
    out = []
    for _ in range(n):
        logits = model(input_ids=torch.tensor([ids]), use_cache=False).logits[0, -1]
        u = int(logits[info.unit_offset:info.unit_offset + info.n_units].argmax())
        out.append(u)
        ids.append(u + info.unit_offset)
    return out


def test_greedy_batched_with_left_padding_equals_full_recompute():
    model, info = tiny_lm()
    prompts = [[3, 4, 5, 6, 7, 8, 9], [1], [12, 0, 19]]
    got = sample_units(model, info, prompts, max_new_tokens=6, temperature=0, batch_size=3)
    for p, prompt in enumerate(prompts):
        assert got[p][0].tolist() == greedy_reference(model, info, prompt, 6)


def test_sampling_is_seeded_and_independent_of_batching():
    model, info = tiny_lm()
    prompts = [[3, 4, 5], [7, 7, 1, 2, 9], [11]]
    a = sample_units(model, info, prompts, max_new_tokens=12, seed=5, num_samples=2, batch_size=6)
    b = sample_units(model, info, prompts, max_new_tokens=12, seed=5, num_samples=2, batch_size=1)
    c = sample_units(model, info, prompts, max_new_tokens=12, seed=6, num_samples=2, batch_size=6)
    for p in range(3):
        for s in range(2):
            assert a[p][s].tolist() == b[p][s].tolist()
            assert len(a[p][s]) == 12 and a[p][s].min() >= 0 and a[p][s].max() < info.n_units
    assert any(a[p][s].tolist() != c[p][s].tolist() for p in range(3) for s in range(2))
    assert a[0][0].tolist() != a[0][1].tolist()  # samples of one prompt differ


def test_special_ids_are_never_drawn():
    model, info = tiny_lm()
    with torch.no_grad():  # make pad and bos/eos overwhelmingly likely: still never sampled
        model.lm_head.weight[:2] *= 0
        model.lm_head.weight[:2] += 50 * model.model.norm.weight.sign()
    out = sample_units(model, info, [[1, 2, 3]], max_new_tokens=20, temperature=1.0, top_k=None)
    assert len(out[0][0]) == 20 and out[0][0].min() >= 0


def test_top_k_temperature_and_repetition_penalty_arithmetic():
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0, -2.0]])
    seen = torch.tensor([[True, True, False, False, False]])
    got = next_unit_logits(logits, seen, temperature=0.5, top_k=3, repetition_penalty=2.0)
    # penalty: 2.0 -> 1.0 (positive, divided), -1.0 -> -2.0 (negative, multiplied); temperature 0.5 doubles;
    # top-3 of [2, -4, 1, 6, -4] keeps 6, 2, 1
    expected = torch.tensor([[2.0, float("-inf"), 1.0, 6.0, float("-inf")]])
    assert torch.equal(got, expected)
    # top-k 1 at any temperature is greedy: only the best unit has a finite logit
    g = next_unit_logits(logits, seen, temperature=0.8, top_k=1, repetition_penalty=None)
    assert torch.isfinite(g).sum() == 1 and int(g.argmax()) == 3


def test_top_k_restricts_the_drawn_units():
    model, info = tiny_lm(n_units=30)
    prompt = [4, 5, 6]
    ids = torch.as_tensor(info.units_to_ids(prompt, eos=False))[None]
    first = model(input_ids=ids).logits[0, -1, 2:32]
    allowed = set(torch.topk(first, 3).indices.tolist())
    out = sample_units(model, info, [prompt] * 1, max_new_tokens=1, top_k=3, temperature=2.0, num_samples=40)
    drawn = {int(s[0]) for s in out[0]}
    assert drawn <= allowed and len(drawn) >= 2


def test_slam_generate_end_to_end(tmp_path, capsys):
    import json

    import soundfile as sf

    from eval_helpers import mel_model_folder
    from slam.cli import main
    from slam.tokens import SlamInfo
    from slam.units.dataset import UnitsWriter

    folder, wavs = mel_model_folder(tmp_path / "m")
    out = tmp_path / "out" / "cont.wav"
    rc = main(["generate", str(folder), "--prompt", str(wavs[0]), "--out", str(out), "--max-new-tokens", "15",
               "--prompt-seconds", "1.0", "--seed", "3"])
    assert rc == 0
    wav, sr = sf.read(out)
    rec = json.loads(out.with_suffix(".units.jsonl").read_text())
    assert sr == 16000 and len(rec["units"]) == 15 and sum(rec["prompt_durations"]) == 25  # 1 s = 25 frames
    fill = max(1, round(sum(rec["prompt_durations"]) / len(rec["prompt_durations"])))
    assert len(wav) == (25 + 15 * fill) * 640
    summary = capsys.readouterr().out
    assert "Generated 1 continuation(s) of 1 prompt(s)" in summary and "units/s" in summary

    # several prompts and samples, one prompt from a units dataset row: one file each, seeded
    info = SlamInfo.load(folder)
    with UnitsWriter(tmp_path / "units", {"tokenizer_hash": info.tokenizer_hash, "n_units": 40}) as w:
        w.add("row1", [3, 4, 5, 6], [2, 1, 1, 3], 0.28, "x")
    rc = main(["generate", str(folder), "--prompt", str(wavs[1]), "--prompt-units", f"{tmp_path / 'units'}:row1",
               "--out", str(tmp_path / "many" / "g.wav"), "--max-new-tokens", "8", "--num-samples", "2"])
    assert rc == 0
    names = sorted(p.name for p in (tmp_path / "many").glob("*.wav"))
    assert names == ["g.row1.0.wav", "g.row1.1.wav", "g.utt1.0.wav", "g.utt1.1.wav"]
    recs = [json.loads(x) for x in (tmp_path / "many" / "g.units.jsonl").read_text().splitlines()]
    row1 = [r for r in recs if r["prompt"] == "row1"]
    assert row1[0]["prompt_units"] == [3, 4, 5, 6] and row1[0]["units"] != row1[1]["units"]

    # units from another tokenizer are refused
    with UnitsWriter(tmp_path / "other", {"tokenizer_hash": "f" * 64, "n_units": 40}) as w:
        w.add("r", [1], [1], 0.04, "x")
    rc = main(["generate", str(folder), "--prompt-units", str(tmp_path / "other"), "--out", str(tmp_path / "o.wav")])
    assert rc == 2 and "tokenizer" in capsys.readouterr().err
