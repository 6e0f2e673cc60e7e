"""A tiny interleaved model, end to end as a user runs it: built-in corpus -> espeak-ng speech with word times
-> mel units with a `words` column -> `slam train` (data.kind=interleaved: interleaved + speech + text
streams, TWIST init from a tiny local 'text LM') -> `slam eval` (speech-only, masked) and the cross-modal
story cloze (`slam eval --cross-modal`) -> `slam generate --prompt-text`."""

from __future__ import annotations

import json

import numpy as np
import yaml

from slam.cli import main
from tiny import make_base_model, make_text_tokenizer


def build_and_train(root):
    assert main(["corpus", "--out", str(root / "corpus"), "--stories", "40", "--pairs", "4", "--prefs", "1"]) == 0
    stories = (root / "corpus" / "stories.txt").read_text().splitlines()
    (root / "speak.txt").write_text("\n".join(stories[:12]) + "\n")
    (root / "text").mkdir()
    (root / "text" / "stories.txt").write_text("\n".join(stories[12:]) + "\n")
    assert main(["synth", str(root / "speak.txt"), "--out", str(root / "speech"), "--workers", "2"]) == 0
    manifest = root / "speech" / "manifest.jsonl"
    assert main(["fit-kmeans", str(manifest), "--tokenizer", "mel", "--units", "16", "--out",
                 str(root / "km.npz")]) == 0
    assert main(["tokenize", str(manifest), "--tokenizer", f"mel:{root / 'km.npz'}", "--out",
                 str(root / "units"), "--workers", "1"]) == 0
    tok = make_text_tokenizer(root / "tok", stories, vocab_size=300)
    make_base_model(root / "base", tok)
    recipe = {
        "out": str(root / "run"), "seed": 0, "precision": "fp32",
        "model": {"base": str(root / "base"), "rope_theta": 10000.0},
        "data": {"kind": "interleaved", "context": 128, "val_fraction": 0.2,
                 "interleave": {"policy": "poisson", "speech_share": 0.3, "mean_words": 10},
                 "train": [{"path": str(root / "units"), "stream": "interleaved", "weight": 0.5},
                           {"path": str(root / "units"), "stream": "speech", "weight": 0.3},
                           {"path": str(root / "text"), "stream": "text", "weight": 0.2}]},
        "batch": {"size": 4, "micro": 2},
        "optim": {"lr": 3e-3}, "schedule": {"warmup_min_steps": 2, "min_lr": 1e-4},
        "budget": {"time": None, "steps": 12},
        "eval": {"every_steps": 0, "batches": 2}, "checkpoint": {"every_steps": 0, "every_minutes": 0},
        "log_every": 1,
    }
    (root / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["train", str(root / "recipe.yaml")]) == 0
    return root


def test_interleaved_end_to_end(tmp_path):
    """One test on purpose: under pytest-xdist a shared fixture would be rebuilt on every worker (~25 s)."""
    run = build_and_train(tmp_path)
    check_model_folder(run)
    check_eval(run)
    check_scores_only_the_ending(run)
    check_generate_from_text(run)


def check_model_folder(run):
    from slam.text import model_text_tokenizer
    from slam.model_folder import load_model

    final = run / "run" / "final"
    model, info = load_model(final)
    assert info.speech_token_id is not None and info.unit_offset == model.config.vocab_size - 16 - 3
    assert info.n_units == 16 and info.text_tokenizer == "text_tokenizer"
    tok = model_text_tokenizer(info, final)
    from transformers import AutoTokenizer

    assert tok("Ben met Zoe")["input_ids"] == AutoTokenizer.from_pretrained(str(run / "tok"))("Ben met Zoe")["input_ids"]
    assert tok.decode(tok("Ben met Zoe at the park.")["input_ids"]) == "Ben met Zoe at the park."
    rows = [json.loads(line) for line in (run / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if r["kind"] == "train"]
    assert len(losses) == 12 and all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < losses[0] - 0.3  # it learns
    assert any(r["kind"] == "val" and np.isfinite(r["loss"]) for r in rows)


def check_eval(run):
    from slam.synth.tts import synthesize_pairs

    story = run / "corpus" / "bench" / "story" / "pairs.jsonl"
    audio_pairs, _ = synthesize_pairs(story, run / "bench-audio", workers=2, progress=False)
    # the same pairs with positive and negative swapped: every outcome flips (a tie stays 0.5), so the two
    # accuracies sum to exactly 100 whatever the model; a score that ignored the ending would break it
    swapped = run / "swapped.jsonl"
    rows = [json.loads(line) for line in story.read_text().splitlines()]
    swapped.write_text("".join(json.dumps({**r, "positive": r["negative"], "negative": r["positive"]}) + "\n"
                               for r in rows))
    out = run / "results.json"
    assert main(["eval", str(run / "run" / "final"), "--bench", f"sSC={audio_pairs}", "--cross-modal",
                 f"story={story}", "--cross-modal", f"swap={swapped}", "--no-cache", "--out", str(out)]) == 0
    metrics = json.loads(out.read_text())["metrics"]
    assert set(metrics) == {"sSC", "story-t2s", "story-s2t", "swap-t2s", "swap-s2t"}
    for name, r in metrics.items():
        assert r["n"] == 4 and (r["value"] / 12.5).is_integer(), (name, r)  # 4 pairs, ties 0.5: k/8 of 100
    for d in ("t2s", "s2t"):
        assert metrics[f"story-{d}"]["value"] + metrics[f"swap-{d}"]["value"] == 100.0


def check_scores_only_the_ending(run):
    """The cloze numbers come from the endings: an ending that the model finds likelier scores lower."""
    from slam.eval.pairs import score_sequences
    from slam.text import model_text_tokenizer
    from slam.tokens import speech_targets, text_targets
    from slam.model_folder import load_model

    final = run / "run" / "final"
    model, info = load_model(final)
    tok = model_text_tokenizer(info, final)
    head = np.r_[info.bos_id, info.speech_token_id, np.arange(5) + info.unit_offset, info.text_token_id]
    ending = np.asarray(tok(" Ben was very proud.")["input_ids"])
    a = score_sequences(model, [np.r_[head, ending, info.eos_id]], allowed_ids=text_targets(info),
                        score_from=[len(head)])[0]
    # another prompt, same ending: the score changes (it is conditioned), but stays finite
    head2 = np.r_[info.bos_id, info.speech_token_id, np.arange(5, 15) + info.unit_offset, info.text_token_id]
    b = score_sequences(model, [np.r_[head2, ending, info.eos_id]], allowed_ids=text_targets(info),
                        score_from=[len(head2)])[0]
    assert np.isfinite(a) and np.isfinite(b) and a != b
    # a unit in a text position is impossible under the text-only mask
    bad = score_sequences(model, [np.r_[head, info.unit_offset, info.eos_id]], allowed_ids=text_targets(info),
                          score_from=[len(head)])[0]
    assert bad == np.inf
    assert len(speech_targets(info)) == info.n_units + 1


def check_generate_from_text(run):
    out = run / "gen" / "t.wav"
    assert main(["generate", str(run / "run" / "final"), "--prompt-text", "Ben met Zoe at the park.",
                 "--max-new-tokens", "20", "--out", str(out)]) == 0
    rec = [json.loads(line) for line in out.with_suffix(".units.jsonl").read_text().splitlines()]
    assert len(rec) == 1 and len(rec[0]["units"]) == 20 and all(0 <= u < 16 for u in rec[0]["units"])
    assert rec[0]["prompt_text"] == "Ben met Zoe at the park." and out.stat().st_size > 1000
