"""Every shipped recipe loads and validates; bad recipes end in one line naming the field, exit code 2."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from slam.cli import main
from slam.config import describe
from slam.config import RECIPES
from slam.train.config import load
from slam.train.config import TrainConfig

# *-dpo.yaml recipes are read by `slam dpo` with their own schema (loaded in tests/test_dpo.py)
SHIPPED = sorted(p.stem for p in RECIPES.glob("*.yaml") if not p.stem.endswith("-dpo"))


def test_the_documented_training_recipes_are_shipped():
    assert SHIPPED == ["demo-speech", "demo-text", "slam", "slam-interleaved", "slam-scaled", "tiny-cpu",
                       "twist-original"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_recipe_loads_and_validates(name):
    cfg = load(str(RECIPES / f"{name}.yaml"), [])
    assert isinstance(cfg, TrainConfig)
    assert cfg.data.train, "every recipe names its training data"
    assert cfg.out.startswith("runs/"), "every recipe writes its own run folder under runs/"


def test_slam_recipe_is_the_papers_final_recipe():
    cfg = load("slam", [])
    assert cfg.model.base == "Qwen/Qwen2.5-0.5B" and cfg.model.rope_theta == 10000.0
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.grad_clip) == ("adamw", 1e-3, 0.5)
    assert (cfg.schedule.name, cfg.schedule.min_lr, cfg.schedule.warmup, cfg.schedule.warmup_min_steps) == \
        ("cosine", 5e-5, 0.01, 100)
    assert (cfg.batch.size, cfg.data.context) == (128, 1024)
    assert cfg.budget.seconds == 23.5 * 3600
    # the defaults of the schema are the same recipe: a recipe only restates them
    defaults = TrainConfig()
    assert (defaults.optim.lr, defaults.schedule.min_lr, defaults.batch.size) == (1e-3, 5e-5, 128)


def test_every_recipe_key_has_a_docstring():
    missing = [key for key, _, doc in describe(TrainConfig) if not doc]
    assert missing == []


@pytest.fixture(scope="module")
def units(tmp_path_factory):
    from slam.units.dataset import UnitsWriter

    out = tmp_path_factory.mktemp("units") / "ds"
    rng = np.random.default_rng(0)
    with UnitsWriter(out, {"n_units": 10, "tokenizer_hash": "t", "dedup": True}) as w:
        for i in range(40):
            u = rng.integers(0, 10, size=int(rng.integers(5, 40)))
            w.add(f"u{i:03d}", u, np.ones_like(u), len(u) / 25, "test")
    return out


def _run(capsys, *args):
    code = main(["train", *args])
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


@pytest.mark.parametrize("override, field", [
    ("optim.lrr=1", "optim.lrr"),                       # unknown key
    ("optim.lr=fast", "optim.lr"),                      # wrong type
    ("optim.lr=-1e-3", "optim.lr"),                     # impossible value
    ("schedule.warmup_min_steps=50", "schedule.warmup_min_steps"),  # warmup longer than budget.steps=20
    ("data.train=[{path: /nonexistent/units}]", "data.train[0].path"),  # missing path
    ("data.context=4096", "data.context"),              # longer than the model's 512 positions
    ("batch.micro=3", "batch.micro"),                   # does not divide batch.size
    ("budget.time=24h", "budget"),                      # two budgets at once
])
def test_config_errors_are_one_line_naming_the_field(capsys, tmp_path, units, override, field):
    base = ["tiny-cpu", f"data.train=[{{path: {units}}}]", f"out={tmp_path / 'run'}", "budget.time=null",
            "budget.steps=20"]
    code, err = _run(capsys, *base, override)
    assert code == 2
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert field in err[0], err


def test_an_existing_run_is_not_overwritten_without_resume(capsys, tmp_path, units):
    run = tmp_path / "run"
    (run / "checkpoints" / "step-2").mkdir(parents=True)
    code, err = _run(capsys, "tiny-cpu", f"data.train=[{{path: {units}}}]", f"out={run}")
    assert code == 2 and "resume=true" in err[0]


def test_check_prints_the_resolved_recipe(capsys):
    assert main(["train", "slam", "optim.lr=5e-4", "--check"]) == 0
    out = capsys.readouterr().out
    assert "lr: 0.0005" in out and "base: Qwen/Qwen2.5-0.5B" in out


def test_a_run_folder_resumes_with_its_own_config(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    (run / "config.yaml").write_text("out: elsewhere\nseed: 7\n")
    cfg = load(str(run), [])
    assert cfg.resume is True and Path(cfg.out) == run and cfg.seed == 7
