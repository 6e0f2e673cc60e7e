"""Weights & Biases logging (the optional extra slam[wandb]) in offline mode, through the CLI: `slam train`
and `slam dpo` with `wandb.project=...` log every metrics line (loss, lr, tokens/s, MFU, reward accuracy) and
the recipe; `slam eval --wandb` logs the metrics; a resumed run continues the same W&B run; without the key
nothing W&B is touched. Skipped, saying so, only where the extra is not installed."""

from __future__ import annotations

import json

import pytest
import soundfile as sf

wandb = pytest.importorskip("wandb", reason="the optional extra slam[wandb] is not installed "
                                            "(pip install 'slam[wandb]'); W&B logging is untested here")

from conftest import synth_speechlike  # noqa: E402
from slam.cli import main  # noqa: E402
from tiny import ramp_prefs, ramp_units, slam_model_folder, train_overrides  # noqa: E402


@pytest.fixture(autouse=True)
def logged(monkeypatch, tmp_path):
    """Offline W&B, and every `run.log` call slam makes recorded (then passed on to W&B unchanged)."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    from wandb.sdk.wandb_run import Run

    calls = []
    real = Run.log

    def spy(self, data, step=None, *a, **k):
        calls.append((step, dict(data)))
        return real(self, data, step, *a, **k)

    monkeypatch.setattr(Run, "log", spy)
    return calls


def last(calls, key):
    return [(step, d[key]) for step, d in calls if key in d][-1]


def offline_file(folder, run_id=None, wait_for: bytes = b"") -> bytes:
    """The offline run's record file (what `wandb sync` uploads). W&B's writer process may still be flushing
    it when `finish()` returns on a busy machine: wait up to 30 s for `wait_for` to appear."""
    import time

    deadline = time.time() + 30
    while True:
        runs = sorted((folder / "wandb").glob(f"offline-run-*{('-' + run_id) if run_id else ''}"))
        data = b"".join(f.read_bytes() for r in runs for f in r.glob("run-*.wandb"))
        if wait_for in data or time.time() > deadline:
            return data
        time.sleep(0.2)


def test_train_and_dpo_log_to_wandb_offline(tmp_path, logged):
    units = ramp_units(tmp_path / "units")
    run = tmp_path / "run"
    assert main(["train", "tiny-cpu", *train_overrides(units, run, "wandb.project=slam-test",
                                                       "wandb.tags=[ci]")]) == 0
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    final = [r for r in rows if r["kind"] == "train"][-1]
    assert last(logged, "train/loss") == (6, pytest.approx(final["loss"]))
    assert last(logged, "train/lr") == (6, pytest.approx(final["lr"]))
    assert last(logged, "val/loss")[1] == pytest.approx([r for r in rows if r["kind"] == "val"][-1]["loss"])
    assert all(("train/tok_per_s" in d) for step, d in logged if "train/loss" in d and step > 1)
    run_id = (run / "wandb-run-id").read_text().strip()
    record = offline_file(run, run_id, b"train/loss")
    assert b"train/loss" in record and b"slam-test" in record and b"budget" in record  # values + the recipe
    # a resumed run continues the same W&B run id
    assert main(["train", str(run), "budget.steps=8"]) == 0
    assert (run / "wandb-run-id").read_text().strip() == run_id
    assert len(list((run / "wandb").glob(f"offline-run-*-{run_id}"))) == 2
    assert last(logged, "train/loss")[0] == 8
    # DPO: reward accuracy and margins
    start = slam_model_folder(tmp_path / "start", 16)
    prefs = ramp_prefs(tmp_path / "prefs", start)
    dpo = tmp_path / "dpo"
    logged.clear()
    assert main(["dpo", "slam-dpo", f"model={start}", f"data.train={prefs}", f"out={dpo}", "data.val_fraction=0",
                 "batch.size=4", "batch.micro=2", "budget.steps=3", "log_every=1", "eval.every_steps=0",
                 "checkpoint.every_steps=0", "checkpoint.every_minutes=0", "precision=fp32",
                 "wandb.project=slam-test"]) == 0
    assert [step for step, d in logged if "train/reward_accuracy" in d] == [1, 2, 3]
    assert any("train/reward_margin" in d for _, d in logged)
    assert b"train/reward_accuracy" in offline_file(dpo, wait_for=b"train/reward_accuracy")


def test_eval_logs_metrics_and_default_stays_tensorboard(tmp_path, monkeypatch, logged):
    start = slam_model_folder(tmp_path / "m", 16)
    (tmp_path / "a").mkdir()
    pairs = []
    for i in range(3):
        for kind in ("pos", "neg"):
            sf.write(tmp_path / "a" / f"{i}{kind}.wav", synth_speechlike(0.5, seed=7 * i + len(kind)), 16000)
        pairs.append({"id": str(i), "positive": f"a/{i}pos.wav", "negative": f"a/{i}neg.wav"})
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    out = tmp_path / "res" / "r.json"
    assert main(["eval", str(start), "--bench", f"toy={tmp_path / 'pairs.jsonl'}", "--out", str(out), "--no-cache",
                 "--wandb", "slam-test"]) == 0
    assert last(logged, "eval/toy")[1] == pytest.approx(json.loads(out.read_text())["metrics"]["toy"]["value"])
    assert last(logged, "eval/toy_n")[1] == 3 and b"eval/toy" in offline_file(out.parent, wait_for=b"eval/toy")
    # without --wandb / wandb.project: nothing goes to W&B; eval writes into ./eval-results/, not the model folder
    logged.clear()
    monkeypatch.chdir(tmp_path)
    assert main(["eval", str(start), "--bench", f"toy={tmp_path / 'pairs.jsonl'}", "--no-cache"]) == 0
    assert (tmp_path / "eval-results" / f"{start.parent.name}-model.json").is_file()
    assert not list(start.glob("*results*"))
    units = ramp_units(tmp_path / "units")
    assert main(["train", "tiny-cpu", *train_overrides(units, tmp_path / "plain", "budget.steps=2",
                                                       "schedule.warmup_min_steps=1")]) == 0
    assert not (tmp_path / "plain" / "wandb").exists() and list((tmp_path / "plain").glob("events.out.tfevents.*"))
    assert logged == []
