"""`slam dpo` end to end on a tiny model, as a user calls it: preferences are learnt (margin and reward
accuracy rise to 1), the starting model stays untouched, a killed run resumed equals an uninterrupted one,
and the SpokenSwag-style builder (text -> auto-BLEU filter -> espeak -> units) feeds it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from slam.cli import main
from slam.utils import sha256_file
from tiny import ramp_prefs, slam_model_folder

N_UNITS = 16


@pytest.fixture(scope="module")
def start(tmp_path_factory):
    """A tiny random Qwen2 saved as a slam model folder, with a weight-free mel tokenizer in slam.json."""
    return slam_model_folder(tmp_path_factory.mktemp("start"), N_UNITS)


@pytest.fixture(scope="module")
def prefs(tmp_path_factory, start):
    """8 pairs in the units-dataset form: chosen continues the prompt's ramp, rejected is noise."""
    return ramp_prefs(tmp_path_factory.mktemp("prefs") / "units", start, n_units=N_UNITS)


def args(start, prefs, out, *extra):
    return ["dpo", "slam-dpo", f"model={start}", f"data.train={prefs}", f"out={out}", "data.val_fraction=0",
            "data.max_length=128", "batch.size=4", "batch.micro=2", "budget.time=null", "budget.steps=30",
            "optim.lr=3e-3",
            "schedule.warmup=0.1", "log_every=1", "eval.every_steps=0", "checkpoint.every_steps=0",
            "checkpoint.every_minutes=0", "precision=fp32", "seed=0", *extra]


def rows(run: Path, kind: str) -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == kind]


def test_dpo_learns_the_preferences_and_leaves_the_start_model_untouched(start, prefs, tmp_path, capsys):
    from safetensors.torch import load_file

    hashes = {p.name: sha256_file(p) for p in start.iterdir() if p.is_file()}
    run = tmp_path / "run"
    assert main(args(start, prefs, run, f"data.val={prefs}")) == 0
    assert "slam dpo: 30 steps" in capsys.readouterr().out
    train = rows(run, "train")
    assert [r["step"] for r in train] == list(range(1, 31))
    first, last = train[0], train[-1]
    # step 1: policy == reference, so every reward is exactly 0, the loss log 2 and no pair is "won" yet
    assert first["reward_margin"] == 0.0 and first["reward_accuracy"] == 0.0
    assert first["loss"] == pytest.approx(np.log(2), abs=1e-6)
    assert last["reward_accuracy"] == 1.0 and last["reward_margin"] > 0.5 and last["loss"] < 0.5
    assert np.mean([r["reward_margin"] for r in train[-5:]]) > np.mean([r["reward_margin"] for r in train[:5]])
    (val,) = rows(run, "val")
    assert val["reward_accuracy"] == 1.0 and val["reward_margin"] > 0.5 and val["pairs"] == 8
    for key in ("reward_chosen", "reward_rejected", "lr", "grad_norm", "pairs_per_s"):
        assert key in last
    # the starting folder (the reference) is byte-identical; the final model moved away from it
    assert {p.name: sha256_file(p) for p in start.iterdir() if p.is_file()} == hashes
    a, b = load_file(str(start / "model.safetensors")), load_file(str(run / "final" / "model.safetensors"))
    assert any(not np.allclose(a[k].numpy(), b[k].numpy()) for k in a)
    slam_json = json.loads((run / "final" / "slam.json").read_text())
    assert slam_json["tokenizer_hash"] and slam_json["extra"]["dpo"]["beta"] == 0.1
    assert (run / "config.yaml").is_file() and (run / "loss.png").is_file()


def test_killed_run_resumed_equals_the_uninterrupted_run(start, prefs, tmp_path, monkeypatch):
    import slam.train.engine as engine

    extra = ("budget.steps=6", "checkpoint.every_steps=3", "dpo.precompute_reference=true")
    ref = tmp_path / "ref"
    assert main(args(start, prefs, ref, *extra)) == 0
    want = {r["step"]: r for r in rows(ref, "train")}
    assert (ref / "reference-logps.safetensors").is_file()

    class Killed(BaseException):
        pass

    real, calls = engine.train_step, []

    def dies_at_step_5(*a, **k):
        calls.append(1)
        if len(calls) == 5:
            raise Killed
        return real(*a, **k)

    run = tmp_path / "run"
    monkeypatch.setattr(engine, "train_step", dies_at_step_5)
    with pytest.raises(Killed):
        main(args(start, prefs, run, *extra))
    monkeypatch.setattr(engine, "train_step", real)
    cache_mtime = (run / "reference-logps.safetensors").stat().st_mtime_ns
    assert main(["dpo", str(run)]) == 0  # a run folder: its config.yaml, resume=true
    assert (run / "reference-logps.safetensors").stat().st_mtime_ns == cache_mtime  # the cache was reused
    got = {r["step"]: r for r in rows(run, "train")}
    # the killed run's step-4 line was dropped on resume: one trajectory, each step once
    assert [r["step"] for r in rows(run, "train")] == sorted(want) == list(range(1, 7))
    for s in want:
        for key in ("loss", "reward_margin", "reward_accuracy", "lr"):
            assert got[s][key] == pytest.approx(want[s][key], rel=1e-6, abs=1e-9), (s, key)
    assert [e["checkpoint"] for e in rows(run, "event") if e.get("event") == "resumed"] == ["step-3"]


def test_builder_speaks_filters_and_tokenises_with_the_models_tokenizer(start, tmp_path, capsys):
    from slam.prefs import load_prefs
    from slam.tokens import SlamInfo
    from slam.units.dataset import read_meta

    text = tmp_path / "prefs.jsonl"
    rows_ = [{"id": "pref-0", "prompt": "Mia found a red kite.", "chosen": "She flew it.", "rejected": "Soup."},
             {"id": "pref-1", "prompt": "the dog the dog the dog", "chosen": "the dog the dog", "rejected": "A cat."},
             {"id": "pref-2", "prompt": "Tom baked bread.", "chosen": "It smelled good.", "rejected": "Rain fell."}]
    text.write_text("".join(json.dumps(r) + "\n" for r in rows_))
    out = tmp_path / "built"
    assert main(["dpo", "--build-prefs", str(text), "--model", str(start), "--out", str(out), "--workers", "1",
                 "--voices", "en-us"]) == 0
    assert "1 dropped by the auto-BLEU filter" in capsys.readouterr().out
    build = json.loads((out / "build.json").read_text())
    assert build["pairs"] == 2 and build["dropped_auto_bleu"] == 1
    info = SlamInfo.load(start)
    assert read_meta(out / "units")["tokenizer_hash"] == info.tokenizer_hash
    units, _ = load_prefs(out / "units", info)
    assert [p.id for p in units] == ["pref-0", "pref-2"]
    assert all(len(p.prompt) > 3 and len(p.chosen) > 3 for p in units)
    # the audio twin (audio paths relative to it) reads to the very same units with the model's tokenizer
    audio, _ = load_prefs(out / "audio" / "prefs.jsonl", info, model_dir=start, progress=False)
    assert [(p.prompt.tolist(), p.chosen.tolist(), p.rejected.tolist()) for p in audio] == \
        [(p.prompt.tolist(), p.chosen.tolist(), p.rejected.tolist()) for p in units]
    # a negative threshold keeps every pair (the rerun resumes: only the new pair is spoken and tokenised)
    assert main(["dpo", "--build-prefs", str(text), "--model", str(start), "--out", str(out), "--workers", "1",
                 "--voices", "en-us", "--max-auto-bleu", "-1"]) == 0
    assert json.loads((out / "build.json").read_text())["pairs"] == 3


def test_two_gloo_processes_equal_one_process_with_twice_the_accumulation(start, prefs, tmp_path):
    import os
    import subprocess
    import sys

    extra = ("budget.steps=3", "dpo.precompute_reference=true", f"data.val={prefs}")
    one = tmp_path / "one"
    assert main(args(start, prefs, one, *extra)) == 0  # 1 process x accumulation 2
    two = tmp_path / "two"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "slam.cli", *args(start, prefs, two, *extra)], cwd=Path(__file__).parent.parent,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((two / "provenance.json").read_text())[0]["world_size"] == 2
    a, b = rows(one, "train"), rows(two, "train")
    assert [r["step"] for r in b] == [1, 2, 3]
    for ra, rb in zip(a, b):  # the same 4 pairs per step, split over ranks instead of micro-batches
        for key in ("loss", "reward_margin", "grad_norm", "tokens"):
            assert rb[key] == pytest.approx(ra[key], rel=1e-5, abs=1e-6), (ra["step"], key)
    assert a[-1]["reward_margin"] > 1e-3  # the last step compares weights that were really updated
    (va,), (vb,) = rows(one, "val"), rows(two, "val")
    assert vb["pairs"] == va["pairs"] == 8 and vb["loss"] == pytest.approx(va["loss"], rel=1e-5)


def test_user_errors_are_one_line_and_write_nothing(start, prefs, tmp_path, capsys):
    assert main(args(tmp_path / "no-model", prefs, tmp_path / "a")) == 2
    assert "model:" in capsys.readouterr().err and not (tmp_path / "a").exists()
    assert main(args(start, tmp_path / "no-prefs", tmp_path / "b")) == 2
    assert "data:" in capsys.readouterr().err and not list((tmp_path / "b").glob("checkpoints/*"))
    assert main(args(start, prefs, tmp_path / "c", "batch.micro=16", "batch.size=16")) == 2  # 8 pairs < 16
    assert "batch.micro: 8 training pairs are fewer than one micro-batch" in capsys.readouterr().err
