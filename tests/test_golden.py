"""Golden numbers: the per-step losses of a tiny pre-training run, a tiny DPO run and a tiny interleaved run,
pinned. Each run goes through the CLI (fixed seed, fp32, CPU, one torch thread), so a change anywhere on
the path (data order, packing, loss, optimiser, schedule, initialisation) that moves a number is seen.

Two runs of these models on one CPU agree to the last digit; the tolerance (rtol 1e-5) only absorbs the
last-bit differences between CPU kinds (another SIMD width changes the order of float sums). If a change
moves these numbers on purpose, say why in its commit and re-pin them (print them with `-s`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from slam.cli import main
from tiny import (make_base_model, make_text_tokenizer, ramp_prefs, ramp_units, slam_model_folder,
                  train_overrides, worded_units, SENTENCES)

RTOL = 1e-5


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def rows(run: Path, kind: str, key: str = "loss") -> list[float]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r[key] for r in map(json.loads, lines) if r["kind"] == kind]


def check(name: str, got: list[float], want: list[float]) -> None:
    print(f"\n{name} = {got!r}")
    assert len(got) == len(want), (name, got)
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=0, err_msg=name)


PRETRAIN_TRAIN = [2.9533446265048666, 2.9000279450219524, 2.8401289142546107, 2.9137765853131405,
                  2.8104696983148245, 2.76894914611312]
PRETRAIN_VAL = [2.8022612264333677, 2.7475560716361054]


def test_pretrain_losses(tmp_path):
    units = ramp_units(tmp_path / "units")
    run = tmp_path / "run"
    assert main(["train", "tiny-cpu", *train_overrides(units, run, "seed=0", "precision=fp32")]) == 0
    check("PRETRAIN_TRAIN", rows(run, "train"), PRETRAIN_TRAIN)
    check("PRETRAIN_VAL", rows(run, "val"), PRETRAIN_VAL)


DPO_LOSS = [0.6931471824645996, 0.6931471824645996, 0.6458350419998169, 0.638270378112793, 0.6187013983726501,
            0.5893115997314453, 0.5714801549911499, 0.586222231388092]
DPO_MARGIN = [0.0, 0.0, 0.09705348312854767, 0.11313271895051003, 0.15517158806324005, 0.22003741562366486,
              0.26043811440467834, 0.22703361883759499]


def test_dpo_losses(tmp_path):
    start = slam_model_folder(tmp_path)
    prefs = ramp_prefs(tmp_path / "prefs", start)
    run = tmp_path / "dpo"
    assert main(["dpo", "slam-dpo", f"model={start}", f"data.train={prefs}", f"out={run}",
                 "data.val_fraction=0", "data.max_length=128", "batch.size=4", "batch.micro=2", "budget.time=null",
                 "budget.steps=8", "optim.lr=3e-3", "schedule.warmup=0.1", "log_every=1", "eval.every_steps=0",
                 "checkpoint.every_steps=0", "checkpoint.every_minutes=0", "precision=fp32", "seed=0"]) == 0
    check("DPO_LOSS", rows(run, "train"), DPO_LOSS)
    check("DPO_MARGIN", rows(run, "train", "reward_margin"), DPO_MARGIN)


INTERLEAVED_TRAIN = [5.665373883928571, 5.661929481907895, 5.590271492314533, 5.475226151315789,
                     5.411212704045986, 5.37709496378416]
INTERLEAVED_VAL = [5.476518762256452, 5.366300142728365]


def test_interleaved_losses(tmp_path):
    tok = make_text_tokenizer(tmp_path / "tok")
    make_base_model(tmp_path / "base", tok)
    units = worded_units(tmp_path / "units")
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "stories.txt").write_text("\n".join(SENTENCES * 4) + "\n")
    recipe = {
        "out": str(tmp_path / "run"), "seed": 0, "precision": "fp32",
        "model": {"base": str(tmp_path / "base"), "rope_theta": 10000.0},
        "data": {"kind": "interleaved", "context": 64, "val_fraction": 0.2,
                 "interleave": {"policy": "poisson", "speech_share": 0.3, "mean_words": 10},
                 "train": [{"path": str(units), "stream": "interleaved", "weight": 0.5},
                           {"path": str(units), "stream": "speech", "weight": 0.3},
                           {"path": str(tmp_path / "text"), "stream": "text", "weight": 0.2}]},
        "batch": {"size": 4, "micro": 2}, "optim": {"lr": 3e-3}, "schedule": {"warmup_min_steps": 2},
        "budget": {"time": None, "steps": 6}, "eval": {"every_steps": 3, "batches": 2},
        "checkpoint": {"every_steps": 0, "every_minutes": 0}, "log_every": 1,
    }
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["train", str(tmp_path / "recipe.yaml")]) == 0
    check("INTERLEAVED_TRAIN", rows(tmp_path / "run", "train"), INTERLEAVED_TRAIN)
    check("INTERLEAVED_VAL", rows(tmp_path / "run", "val"), INTERLEAVED_VAL)
