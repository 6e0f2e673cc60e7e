"""Issue 15 item 7: checkpoints are fsynced before the rename; a truncated or corrupt newest checkpoint
(model, optimizer, rng or state) is named and skipped, and `slam train resume=true` continues from the
newest good one to exactly the uninterrupted run's losses and weights."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from slam.cli import main
from slam.train import checkpoint
from tiny import ramp_units, train_overrides


class Killed(BaseException):
    pass


def _losses(run: Path) -> dict[int, float]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if r["kind"] == "train"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An uninterrupted 6-step run, and the same run killed right after its step-4 checkpoint (so
    checkpoints/ holds step-2 and step-4, the newest)."""
    root = tmp_path_factory.mktemp("ckpt")
    units = ramp_units(root / "units")
    assert main(["train", "tiny-cpu", *train_overrides(units, root / "ref")]) == 0
    real = checkpoint.save

    def killed_after_step_4(folder, step, *a, **k):
        path = real(folder, step, *a, **k)
        if step == 4:
            raise Killed
        return path

    mp = pytest.MonkeyPatch()
    mp.setattr(checkpoint, "save", killed_after_step_4)
    try:
        with pytest.raises(Killed):
            main(["train", "tiny-cpu", *train_overrides(units, root / "killed")])
    finally:
        mp.undo()
    assert [p.name for _, p in checkpoint.step_dirs(root / "killed" / "checkpoints")] == ["step-2", "step-4"]
    return units, root


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _corrupt(path: Path) -> None:
    if path.name == "state.json":  # still valid JSON, one number changed: only a checksum can tell
        state = json.loads(path.read_text())
        state["flops"] = state["flops"] * 2
        path.write_text(json.dumps(state, indent=2, sort_keys=True))
        return
    data = bytearray(path.read_bytes())
    for i in range(len(data) - 200, len(data) - 100):  # inside the tensor data, near the end
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [_truncate, _corrupt], ids=["truncated", "corrupt"])
@pytest.mark.parametrize("name", ["model.safetensors", "optimizer.pt", "rng.pt", "state.json"])
def test_damaged_newest_checkpoint_is_named_and_skipped(runs, tmp_path, capsys, name, damage):
    units, root = runs
    run = tmp_path / "run"
    shutil.copytree(root / "killed", run)
    damage(run / "checkpoints" / "step-4" / name)
    capsys.readouterr()
    assert main(["train", "tiny-cpu", *train_overrides(units, run, "resume=true")]) == 0
    err = capsys.readouterr().err
    assert f"step-4/{name}" in err and "resuming from step-2" in err and "Traceback" not in err
    want, got = _losses(root / "ref"), _losses(run)
    assert sorted(got) == sorted(want) == [1, 2, 3, 4, 5, 6]
    assert all(got[s] == want[s] for s in want), (got, want)  # steps 3-6 recomputed from step-2, bit for bit
    a, b = load_file(str(root / "ref" / "final" / "model.safetensors")), load_file(str(run / "final" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the damaged step-4 was replaced by the resumed run's own step-4 / removed by pruning
    assert all(checkpoint.verify(p) is None for _, p in checkpoint.step_dirs(run / "checkpoints"))


def test_no_whole_checkpoint_is_one_line_exit_2(runs, tmp_path, capsys):
    units, root = runs
    run = tmp_path / "run"
    shutil.copytree(root / "killed", run)
    _truncate(run / "checkpoints" / "step-4" / "optimizer.pt")
    _corrupt(run / "checkpoints" / "step-2" / "model.safetensors")
    capsys.readouterr()
    assert main(["train", "tiny-cpu", *train_overrides(units, run, "resume=true")]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "no whole checkpoint" in last and "step-4/optimizer.pt" in last and "step-2/model.safetensors" in last


def test_checkpoints_written_before_checksums_still_resume(runs, tmp_path):
    units, root = runs
    run = tmp_path / "run"
    shutil.copytree(root / "killed", run)
    for step in (2, 4):  # as an older slam wrote them: no "files", no "state_sha256"
        p = run / "checkpoints" / f"step-{step}" / "state.json"
        p.write_text(json.dumps(checkpoint.read_state(p.parent)))
    _truncate(run / "checkpoints" / "step-4" / "rng.pt")  # found by reading it
    assert checkpoint.resume_point(run / "checkpoints")[0].name == "step-2"
    assert main(["train", "tiny-cpu", *train_overrides(units, run, "resume=true")]) == 0
    assert _losses(run) == _losses(root / "ref")


def test_every_file_and_both_folders_are_fsynced_before_and_after_the_rename(runs, tmp_path, monkeypatch):
    units, _ = runs
    synced: list[tuple[str, bool]] = []  # (name, the step-N folder exists yet)
    real = checkpoint._fsync

    def spy(path):
        synced.append((Path(path).name, (tmp_path / "run" / "checkpoints" / "step-2").exists()))
        real(path)

    monkeypatch.setattr(checkpoint, "_fsync", spy)
    assert main(["train", "tiny-cpu", *train_overrides(units, tmp_path / "run", "budget.steps=2",
                                                       "eval.every_steps=0")]) == 0
    first = synced[:5]
    assert [n for n, _ in first[:3]] == list(checkpoint.FILES) and first[3][0].startswith(".step-2.")
    assert not any(renamed for _, renamed in first[:4])  # files and temp folder before the rename
    assert first[4] == ("checkpoints", True)  # the folder holding the new name, after it


def test_dpo_resumes_past_a_corrupt_newest_checkpoint(tmp_path, monkeypatch, capsys):
    import slam.train.engine as engine
    from tiny import ramp_prefs, slam_model_folder

    start = slam_model_folder(tmp_path / "start", 16)
    prefs = ramp_prefs(tmp_path / "prefs", start, n_units=16)

    def dpo(out):
        return ["dpo", "slam-dpo", f"model={start}", f"data.train={prefs}", f"out={out}", "data.val_fraction=0",
                "data.max_length=128", "batch.size=4", "batch.micro=2", "budget.time=null", "budget.steps=8",
                "optim.lr=3e-3", "schedule.warmup=0.1", "log_every=1", "eval.every_steps=0",
                "checkpoint.every_steps=3", "checkpoint.every_minutes=0", "checkpoint.keep_last=2",
                "precision=fp32", "seed=0"]

    assert main(dpo(tmp_path / "ref")) == 0
    real, calls = engine.train_step, []

    def dies_at_step_8(*a, **k):
        calls.append(1)
        if len(calls) == 8:
            raise Killed
        return real(*a, **k)

    monkeypatch.setattr(engine, "train_step", dies_at_step_8)
    with pytest.raises(Killed):
        main(dpo(tmp_path / "run"))
    monkeypatch.setattr(engine, "train_step", real)
    ckpts = tmp_path / "run" / "checkpoints"
    assert [p.name for _, p in checkpoint.step_dirs(ckpts)] == ["step-3", "step-6"]
    _corrupt(ckpts / "step-6" / "optimizer.pt")
    capsys.readouterr()
    assert main(["dpo", str(tmp_path / "run")]) == 0
    err = capsys.readouterr().err
    assert "step-6/optimizer.pt" in err and "resuming from step-3" in err
    assert _losses(tmp_path / "run") == _losses(tmp_path / "ref")
