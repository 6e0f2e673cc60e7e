"""The GPU path's pieces that a CPU can run: bench/gpu.py --dry end to end, regional torch.compile against
eager, and FSDP2 on 2 gloo processes against one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from slam.cli import main
from tiny import ramp_units, train_overrides

ROOT = Path(__file__).resolve().parent.parent

# Every row bench/gpu.py must print, dry or not (a row may say "not run: <why>", never vanish).
ROWS = ["varlen attention forward, bf16", "varlen attention backward", "cross-document leak",
        "kernel reached by the bf16-autocast training forward", "slam train, compile off", "memory, compile off",
        "slam train, compile on", "memory, compile on", "HF Trainer + DataCollatorWithFlattening",
        "compile vs eager, same run's losses", "slam train, largest micro that fits", "DPO step", "generation (",
        "FSDP2 (1 process, every block sharded)", "ddp vs fsdp"]


@pytest.fixture(scope="module")
def units(tmp_path_factory):
    return ramp_units(tmp_path_factory.mktemp("units") / "ds")


def rows_of(run: Path, kind: str = "train") -> dict[int, dict]:
    return {r["step"]: r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
            if r["kind"] == kind}


def done_event(run: Path) -> dict:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
            if r["kind"] == "event" and r.get("event") == "done"][0]


def test_gpu_check_dry_prints_and_writes_the_full_table(tmp_path):
    out = tmp_path / "gpu.md"
    env = {**os.environ, "OMP_NUM_THREADS": "2", "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "bench/gpu.py", "--dry", "--out", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    assert text in proc.stdout  # printed and written alike
    import torch

    assert f"torch: {torch.__version__}" in text and "GPU: none (--dry" in text and "driver: n/a" in text
    table = [l for l in text.splitlines() if l.startswith("| ") and not l.startswith("| check")]
    for name in ROWS:
        assert sum(name in l for l in table) == 1, name
    assert len(table) == len(ROWS) + 1  # + the markdown separator row
    for line in table[1:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert len(cells) == 4 and all(cells), line
        assert cells[3] in ("pass", "—"), line  # nothing fails on the CPU miniature
    # the rows that must have run, with their figures
    assert "| pass |" in next(l for l in table if "cross-document leak" in l)
    assert "tokens/s" in next(l for l in table if "compile on" in l and "slam train" in l)
    assert "pairs/s" in next(l for l in table if "DPO step" in l)
    assert "units/s" in next(l for l in table if "generation (" in l)
    trainer = next(l for l in table if "HF Trainer" in l)
    try:
        import accelerate  # noqa: F401
        assert "tokens/s" in trainer and "slam's best / HF" in trainer
    except ImportError:
        assert "not run: `accelerate` is not installed" in trainer


def test_regional_compile_gives_eager_losses_and_its_warmup_stays_outside_the_budget(units, tmp_path, monkeypatch):
    """`compile: true` through `slam train` (slam.train.engine.compile_blocks: each block compiled on its own).

    The backend is aot_eager, not inductor: dynamo's capture of the HF block with slam's kwargs, AOT autograd
    and the loop's warm-up accounting are what a GPU run shares with this one; inductor's CPU codegen (C++,
    one g++ call per kernel) is not the GPU's (Triton) and costs minutes cold: for this very run, 103 s of
    warm-up plus 23 s recompiling for validation's eval mode (67 s of CPU time, 2 busy cores), with losses
    equal to eager's and grad norms within 7e-8. bench/gpu.py runs inductor on a GPU."""
    import torch
    import torch._dynamo

    steps = ["budget.steps=4", "eval.every_steps=0", "checkpoint.every_steps=0"]
    assert main(["train", "tiny-cpu", *train_overrides(units, tmp_path / "eager", *steps)]) == 0
    real = torch.nn.Module.compile
    monkeypatch.setattr(torch.nn.Module, "compile",
                        lambda self, *a, **kw: real(self, *a, **{**kw, "backend": "aot_eager"}))
    torch._dynamo.reset()
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert main(["train", "tiny-cpu", *train_overrides(units, tmp_path / "compiled", *steps, "compile=true")]) == 0
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > graphs, "nothing was compiled"
    eager, compiled = rows_of(tmp_path / "eager"), rows_of(tmp_path / "compiled")
    assert sorted(eager) == sorted(compiled) == [1, 2, 3, 4]
    # fp32: AOT autograd's decompositions may reorder float sums (~1e-7 relative per op); 1e-5 over 4 steps of
    # Adam leaves room for that and none for a wrong graph (one step at lr 3e-3 moves the loss by ~1e-2).
    for s in eager:
        assert compiled[s]["loss"] == pytest.approx(eager[s]["loss"], rel=1e-5), s
        assert compiled[s]["grad_norm"] == pytest.approx(eager[s]["grad_norm"], rel=1e-4), s
    done_c, done_e = done_event(tmp_path / "compiled"), done_event(tmp_path / "eager")
    warmup = done_c["overhead"]["compile"]
    first_eager = eager[1]["train_hours"] * 3600
    assert warmup > 3 * first_eager  # tracing two blocks costs far more than this model's eager first step...
    assert compiled[1]["train_hours"] * 3600 < 0.1 * warmup  # ...and step 1's clock holds none of it...
    assert done_c["train_seconds"] < done_e["train_seconds"] + 0.25 * warmup  # ...nor does the budget


def test_fsdp_on_two_gloo_processes_equals_one_process_with_twice_the_accumulation(units, tmp_path):
    base = ["budget.steps=3", "batch.micro=1", "eval.every_steps=0", "checkpoint.every_steps=0"]
    one = tmp_path / "one"
    assert main(["train", "tiny-cpu", *train_overrides(units, one, *base)]) == 0  # 1 process x accumulation 4
    two = tmp_path / "two"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "slam.cli", "train", "tiny-cpu",
                           *train_overrides(units, two, *base, "dist.strategy=fsdp")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((two / "provenance.json").read_text())[0]["world_size"] == 2
    a, b = rows_of(one), rows_of(two)  # 2 processes x accumulation 2, parameters sharded
    assert sorted(a) == sorted(b) == [1, 2, 3]
    for s in a:
        assert b[s]["loss"] == pytest.approx(a[s]["loss"], rel=1e-5), s
        assert b[s]["grad_norm"] == pytest.approx(a[s]["grad_norm"], rel=1e-4), s
    assert (two / "final" / "model.safetensors").exists()  # gathered from the shards on rank 0
