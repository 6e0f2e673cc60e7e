"""`slam demo --fast` end to end (every stage for real, tiny sizes, a few steps), its pinned numbers, report
artefacts, resume, refusal of mixed settings, a retrain with wall-clock budgets and two seeds, the
missing-espeak message, and the demo's text tokenizer and recipes."""

from __future__ import annotations

import argparse
import json
import shlex
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from slam.demo import plan as plan_module
from slam.demo import steps as demo
from slam.cli import COMMANDS, main
from slam.errors import MissingDependencyError, SlamError

pytestmark = pytest.mark.slow


def test_fast_demo_end_to_end(tmp_path, capsys):
    """One fast demo, then checks in order (one test, so that xdist never runs the demo twice): every step
    and command, the models and results, the report files, a rerun after an interruption, a refused mix of
    settings, and a retrain with another budget on the same data."""
    out = tmp_path / "out"
    t0 = time.perf_counter()
    assert main(["demo", "--out", str(out), "--fast"]) == 0
    fast_demo = (out, time.perf_counter() - t0)
    check_text_lm_beside_the_data_steps(capsys.readouterr().out, out)
    check_steps_and_commands(fast_demo)
    check_models_results_and_audio(fast_demo)
    check_pinned_numbers(fast_demo)
    check_report_artefacts(fast_demo)
    check_rerun_reuses_finished_steps(fast_demo, capsys)
    check_other_data_settings_are_refused(fast_demo, capsys)
    check_minutes_and_seeds_retrain_on_the_same_data(fast_demo, capsys)


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def check_text_lm_beside_the_data_steps(log: str, out: Path):
    """The text LM needs only the corpus: it starts right after it, before synthesis, and TWIST after it."""
    text, speech = log.index("slam train demo-text"), log.index("[2/9] speech")
    assert text < speech < log.index("slam train demo-speech")
    assert log.index("[5/9] pre-training") < log.index("model.base=")
    # the pre-trained models are evaluated beside DPO, in the background; the DPO model after it
    dpo = log.index("[6/9] DPO")
    assert dpo < log.index(f"slam eval {out}/runs/scratch/final") < log.index("[7/9]")
    assert log.index("[7/9]") < log.index(f"slam eval {out}/runs/twist-dpo/final")
    state = json.loads((out / "demo.json").read_text())
    # a background run's CPU time counts in its own step, whichever step it finished in
    assert state["steps"]["pretrain"]["cpu_seconds"] > state["steps"]["dpo"]["cpu_seconds"]
    assert state["steps"]["eval"]["cpu_seconds"] > 0


def check_steps_and_commands(fast_demo):
    out, _ = fast_demo
    state = json.loads((out / "demo.json").read_text())
    assert [k for k in demo.STEPS if state["steps"].get(k, {}).get("status") == "done"] == list(demo.STEPS)
    for name in demo.STEPS:
        assert state["steps"][name]["seconds"] > 0
    # every recorded command is a real `slam` command line whose arguments its own
    # subcommand parser accepts: a user can paste it
    n = 0
    for step in state["steps"].values():
        for c in step["commands"]:
            argv = shlex.split(c["command"])
            while "=" in argv[0] and not argv[0].startswith("slam"):  # OMP_NUM_THREADS=1 prefix
                argv = argv[1:]
            if argv[0] == "head":  # the spoken stories: the first N lines of the text LM's stories
                assert argv[1] == "-n" and argv[4] == ">"
                continue
            if argv[0] == "sort":  # the k-means fitting sample: the first N utterances of the manifest by id
                assert argv[2:5] == ["|", "head", "-n"] and argv[6] == ">"
                continue
            assert argv[0] == "slam" and argv[1] in COMMANDS
            module = __import__(COMMANDS[argv[1]][0], fromlist=["add_arguments"])
            parser = argparse.ArgumentParser(prog=f"slam {argv[1]}")
            module.add_arguments(parser)
            parser.parse_args(argv[2:])
            n += 1
    assert n >= 14  # corpus, 5 synth, fit-kmeans, tokenize, prefs, 3 train, dpo, 3 eval, 3 generate
    kinds = [shlex.split(c["command"])[1] for s in state["steps"].values() for c in s["commands"]
             if c["command"].startswith("slam ")]
    for sub in ("corpus", "synth", "fit-kmeans", "tokenize", "text-tokenizer", "dpo", "eval", "generate", "report"):
        assert sub in kinds
    assert sum(c["command"].startswith("OMP_NUM_THREADS") for c in state["steps"]["pretrain"]["commands"]) == 3


def check_models_results_and_audio(fast_demo):
    out, _ = fast_demo
    plan = demo.make_plan(fast=True)
    for m in demo.MODELS:
        folder = out / "runs" / m / "final"
        assert (folder / "model.safetensors").exists() and (folder / "slam.json").exists()
        r = json.loads((out / "eval" / f"{m}.json").read_text())
        assert set(r["metrics"]) == set(demo.BENCHMARKS)
        for b, v in r["metrics"].items():
            assert v["n"] == plan.pairs
            assert 0 <= v["ci95"][0] <= v["value"] <= v["ci95"][1] <= 100
    # TWIST really started from the text LM: its transformer body differs from scratch's at step 0 and its
    # provenance names the text run as base
    twist = json.loads((out / "runs" / "twist" / "final" / "slam.json").read_text())
    assert str(out / "runs" / "text" / "final") in json.dumps(twist)
    # the DPO model starts from the TWIST model
    assert str(out / "runs" / "twist" / "final") in (out / "runs" / "twist-dpo" / "config.yaml").read_text()
    prompts = [json.loads(x) for x in (out / "speech" / "prompts" / "manifest.jsonl").read_text().splitlines()]
    assert len(prompts) == plan.prompts
    for m in demo.MODELS:
        recs = [json.loads(x) for x in (out / "generate" / f"{m}.units.jsonl").read_text().splitlines()]
        assert len(recs) == plan.prompts
        for rec, pr in zip(recs, prompts):
            wav, sr = sf.read(out / "generate" / rec["file"])
            assert sr == 16000 and np.isfinite(wav).all() and np.abs(wav).max() > 0
            assert len(wav) / sr > 0.5 * pr["seconds"]  # prompt resynthesised + continuation
            assert len(rec["units"]) > 0


# The fast demo's numbers (step budgets, fixed seeds, fp32, fixed threads; espeak-ng audio that depends only on
# text and voice), measured on a 2-core x86_64 CPU (AMD EPYC), torch 2.13 CPU. Any change to the data, the
# tokenizer, the model, the training loop, DPO or the scoring that moves one of them shows here: re-pin only
# for a change meant to move them, and say why in the commit. Accuracy (%) on 12 pairs per benchmark; losses:
# the validation loss each run reports at its end (nats per unit / per word; DPO: its held-out pairs).
PINNED_ACCURACY = {
    "scratch": {"grammar": 58.33, "story": 33.33, "topic": 33.33},
    "twist": {"grammar": 50.0, "story": 33.33, "topic": 66.67},
    "twist-dpo": {"grammar": 50.0, "story": 33.33, "topic": 58.33},
}
PINNED_FINAL_LOSS = {"text": 4.816837, "scratch": 2.532832, "twist": 2.611641, "twist-dpo": 0.695451}


def final_losses(out: Path) -> dict[str, float]:
    losses = {}
    for name in PINNED_FINAL_LOSS:
        rows = [json.loads(x) for x in (out / "runs" / name / "metrics.jsonl").read_text().splitlines() if x.strip()]
        done = next(r for r in rows if r.get("event") == "done")
        losses[name] = done["val"]["loss"] if "val" in done else done["val_loss"]
    return losses


def check_pinned_numbers(fast_demo):
    out, _ = fast_demo
    got = {m: {b: round(v["value"], 2) for b, v in json.loads((out / "eval" / f"{m}.json").read_text())
               ["metrics"].items()} for m in demo.MODELS}
    assert got == PINNED_ACCURACY
    assert final_losses(out) == pytest.approx(PINNED_FINAL_LOSS, abs=1e-4)


def check_report_artefacts(fast_demo):
    out, _ = fast_demo
    w, h = _png_size(out / "loss_curves.png")
    assert w > 600 and h > 200
    w, h = _png_size(out / "accuracy.png")
    assert w > 400 and h > 200
    md = (out / "report.md").read_text()
    for title in ("speech LM from scratch", "TWIST (text LM init)", "TWIST + DPO", "chance"):
        assert title in md
    assert "![loss curves](loss_curves.png)" in md and "![accuracy](accuracy.png)" in md
    # the accuracy in the table is the one in the eval results, with its CI
    r = json.loads((out / "eval" / "twist.json").read_text())["metrics"]["grammar"]
    assert f"{r['value']:.1f} [{r['ci95'][0]:.1f}, {r['ci95'][1]:.1f}]" in md
    # every linked file exists
    import re

    for link in re.findall(r"\]\(([^)]+)\)", md):
        assert (out / link).exists(), link
    # commands of every step, and their timings
    for step in demo.STEPS:
        assert f"### {step}: " in md
    assert "slam train demo-speech" in md and "slam eval" in md and "slam generate" in md
    page = (out / "report.html").read_text()
    assert page.startswith("<!doctype html>") and page.rstrip().endswith("</html>")
    assert page.count("<audio controls src='data:audio/wav;base64,") == demo.make_plan(fast=True).prompts * 4
    assert page.count("<img alt=") == 2 and "data:image/png;base64," in page
    # an embedded wav decodes to the file it came from
    import base64
    import io

    first = page.split("data:audio/wav;base64,", 1)[1].split("'", 1)[0]
    wav, sr = sf.read(io.BytesIO(base64.b64decode(first)))
    assert sr == 16000 and len(wav) > 0


def check_rerun_reuses_finished_steps(fast_demo, capsys):
    out, first_seconds = fast_demo
    evals = {m: (out / "eval" / f"{m}.json").stat().st_mtime_ns for m in demo.MODELS}
    final = (out / "runs" / "scratch" / "final" / "model.safetensors").stat().st_mtime_ns
    # pretend the run was killed during evaluation of the TWIST+DPO model
    state = json.loads((out / "demo.json").read_text())
    for step in ("eval", "generate", "report"):
        state["steps"][step]["status"] = "interrupted"
    (out / "demo.json").write_text(json.dumps(state))
    (out / "eval" / "twist-dpo.json").unlink()
    capsys.readouterr()
    t0 = time.perf_counter()
    assert main(["demo", "--out", str(out), "--fast"]) == 0
    took = time.perf_counter() - t0
    log = capsys.readouterr().out
    state = json.loads((out / "demo.json").read_text())
    for step in ("corpus", "speech", "units", "prefs", "pretrain", "dpo"):
        assert state["steps"][step]["reused"] is True, step
        assert "reused" in log
    assert not state["steps"]["eval"]["reused"]
    assert (out / "eval" / "twist-dpo.json").exists()
    assert (out / "eval" / "scratch.json").stat().st_mtime_ns == evals["scratch"]  # not evaluated twice
    assert (out / "runs" / "scratch" / "final" / "model.safetensors").stat().st_mtime_ns == final
    assert "$ slam train" not in log and "$ slam synth" not in log
    assert took < first_seconds


def check_other_data_settings_are_refused(fast_demo, capsys):
    out, _ = fast_demo
    capsys.readouterr()
    assert main(["demo", "--out", str(out), "--fast", "--seed", "1"]) == 2
    err = capsys.readouterr().err
    assert "other data settings" in err and "--fresh" in err and "seed" in err


def check_minutes_and_seeds_retrain_on_the_same_data(fast_demo, capsys):
    """`--minutes` (wall-clock budgets, here seconds under --fast) and `--seeds 2` retrain on the same data:
    every run of both seeds gets a time budget, the second seed its own folders, and the report the table
    over seeds."""
    out, _ = fast_demo
    units = (out / "units" / "train" / "meta.json").stat().st_mtime_ns
    old_model = (out / "runs" / "twist" / "final" / "model.safetensors").read_bytes()
    capsys.readouterr()
    assert main(["demo", "--out", str(out), "--fast", "--minutes", "8", "--seeds", "2"]) == 0
    log = capsys.readouterr().out
    state = json.loads((out / "demo.json").read_text())
    assert state["plan"]["seeds"] == 2 and state["plan"]["minutes"] == pytest.approx(8 / 60)
    for step in ("corpus", "speech", "units", "prefs"):
        assert state["steps"][step]["reused"] is True
    for step in ("pretrain", "dpo", "eval", "generate", "report"):
        assert state["steps"][step]["status"] == "done" and not state["steps"][step].get("reused")
    assert (out / "units" / "train" / "meta.json").stat().st_mtime_ns == units
    import yaml

    for run, want in (("twist", "8s"), ("text", "2s"), ("seed1/scratch", "8s")):
        budget = yaml.safe_load((out / "runs" / run / "config.yaml").read_text())["budget"]
        assert budget["time"] == want and budget["steps"] is None, run
    assert (out / "runs" / "twist" / "final" / "model.safetensors").read_bytes() != old_model
    assert "$ slam synth" not in log and "reusing its data, training again" in log
    # the closing line gives the first seed's CIs, named as such, then the spread over both seeds
    assert "Accuracy % [95% CI] (seed 0)" in log and "Mean ± sd over 2 seeds (0, 1): speech LM from scratch" in log
    for m in demo.MODELS:
        assert (out / "eval" / "seed1" / f"{m}.json").exists()
    md = (out / "report.md").read_text()
    assert "mean ± sd over 2 seeds" in md and "wall clock, --minutes" in md
    assert "The paper's findings in miniature" in md and "held-out preference pairs" in md


def test_fresh_refuses_a_folder_the_demo_did_not_make(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(SlamError, match="not deleting"):
        demo.Demo(tmp_path, demo.make_plan(fast=True), 1, main).load_state(fresh=True)
    assert (tmp_path / "precious.txt").exists()


def test_missing_espeak_names_the_install_command(monkeypatch, tmp_path, capsys):
    import slam.synth.tts as tts

    def missing(spec="espeak"):
        raise MissingDependencyError("espeak-ng (libespeak-ng) is not installed (libespeak-ng.so.1: cannot open)")

    monkeypatch.setattr(tts, "load_backend", missing)
    assert main(["demo", "--out", str(tmp_path / "d"), "--fast"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "apt-get install -y espeak-ng" in err[0]
    assert not (tmp_path / "d").exists()  # nothing started


def test_text_tokenizer_is_word_level_with_the_speech_special_ids(tmp_path):
    from transformers import AutoTokenizer

    from slam.demo.textlm import train_tokenizer

    text = tmp_path / "stories.txt"
    text.write_text("Tom went to the barn. He fed the goat.\nAnna saw two owls near the forest.\n")
    s = train_tokenizer([text], tmp_path / "tok")
    tok = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 1) and s["vocab_size"] == len(tok)
    ids = tok("Anna fed the owls.", add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens(ids) == ["anna", "fed", "the", "owls", "."]
    assert tok.unk_token_id not in ids
    assert tok("Anna fed a zebra.", add_special_tokens=False)["input_ids"][-2] == tok.unk_token_id
    assert len(tok) == 3 + len({"tom", "went", "to", "the", "barn", ".", "he", "fed", "goat", "anna", "saw", "two",
                                "owls", "near", "forest"})


def test_demo_recipes_load_and_share_one_model_shape():
    from slam.train.config import load

    speech, text = load("demo-speech", []), load("demo-text", [])
    assert speech.model.base is None and speech.data.kind == "units"
    assert text.data.kind == "text" and text.model.base is None
    # TWIST: the speech LM takes the text LM's body, so the shapes must be the same
    assert speech.model.config == text.model.config
    from slam.train.config import load_dpo

    cfg = load_dpo("demo-dpo", [])
    assert cfg.dpo.beta == 0.1 and cfg.schedule.name == "inverse_sqrt"


def test_plan_budgets_are_steps_unless_minutes(tmp_path):
    p = demo.make_plan()
    assert (p.speech_steps, p.text_steps, p.dpo_steps, p.minutes) == (2200, 600, 150, None)
    assert p.text_stories == 8 * p.stories  # the text LM reads 8x the stories the speech LMs hear
    d = demo.Demo(tmp_path, p, 1, main)
    assert "budget.steps=2200" in d.train_argv("scratch", 0) and "budget.time=null" in d.train_argv("twist", 0)
    assert "budget.steps=600" in d.train_argv("text", 0)
    d = demo.Demo(tmp_path, demo.make_plan(minutes=12, seeds=3), 1, main)
    assert "budget.time=720s" in d.train_argv("scratch", 2) and "budget.time=180s" in d.train_argv("text", 2)
    assert "seed=2" in d.train_argv("scratch", 2) and d.run_dir("scratch", 2) == tmp_path / "runs" / "seed2" / "scratch"
    assert d.plan.training_seeds() == [0, 1, 2] and d.run_dir("scratch", 0) == tmp_path / "runs" / "scratch"
    with pytest.raises(SlamError, match="positive"):
        demo.run_demo("unused", main, minutes=0)
    with pytest.raises(SlamError, match="seeds"):
        demo.run_demo("unused", main, seeds=0)


@pytest.mark.parametrize("native", [True, False])
def test_precision_follows_the_cpu(monkeypatch, tmp_path, native):
    # bf16 autocast only where the CPU has native bf16 dot products; every training run and DPO gets it
    monkeypatch.setattr(plan_module, "cpu_bf16", lambda: native)
    plan = demo.make_plan()
    want = "precision=bf16" if native else "precision=fp32"
    assert plan.precision == want.split("=")[1] and plan.topics == 4
    d = demo.Demo(tmp_path, plan, 1, main)
    for name in ("text", "twist", "scratch"):
        assert want in d.train_argv(name, 0)
    assert demo.make_plan(fast=True).precision == "fp32"  # the pinned fast numbers hold on any x86_64 CPU kind


def test_cpu_bf16_reads_the_flags(monkeypatch):
    real = Path.read_text
    for flags, want in (("fpu avx2 avx512f avx512_bf16", True), ("fpu avx2 amx_bf16", True),
                        ("fpu avx2 avx512f", False)):
        monkeypatch.setattr(Path, "read_text", lambda self, *a, f=flags, **k:
                            f"processor: 0\nflags\t\t: {f}\n" if str(self) == "/proc/cpuinfo" else real(self, *a, **k))
        assert plan_module.cpu_bf16() is want
