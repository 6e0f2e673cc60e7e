"""The options users of HF Trainer and TRL expect, and the recipe CLI fixes, each through `slam`: DPO loss
variants (IPO, hinge: hand-worked against their papers' formulas), gradient checkpointing (same losses),
min/max document length filters, top-p sampling, a val_fraction that rounds to nothing, a budget override of
another kind, --check anywhere on the line, the missing-recipe hint, and a DPO recipe longer than the
model's positions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from slam.cli import main
from slam.config import shipped_recipes
from slam.generate import next_unit_logits
from slam.train.losses import dpo_loss
from tiny import ramp_prefs, ramp_units, slam_model_folder, train_overrides

N_UNITS = 16


@pytest.fixture(scope="module")
def units(tmp_path_factory):
    return ramp_units(tmp_path_factory.mktemp("units") / "u", n_units=N_UNITS)


@pytest.fixture(scope="module")
def start(tmp_path_factory):
    return slam_model_folder(tmp_path_factory.mktemp("start"), N_UNITS)


def losses(run: Path, kind: str = "train") -> list[float]:
    return [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == kind]


# --- DPO loss variants -----------------------------------------------------------------------------------
def test_ipo_and_hinge_match_their_papers_by_hand():
    pc, pr, rc, rr = (torch.tensor([x]) for x in (-1.0, -2.0, -1.5, -1.5))
    # h = (-1 - -1.5) - (-2 - -1.5) = 0.5 + 0.5 = 1
    # IPO (Azar et al. 2023, eq. 17, tau = beta = 0.1): (h - 1/(2 tau))^2 = (1 - 5)^2 = 16
    assert dpo_loss(pc, pr, rc, rr, beta=0.1, loss="ipo").losses.item() == pytest.approx(16.0)
    # hinge (SLiC / RSO): max(0, 1 - beta h) = 1 - 0.1 = 0.9
    assert dpo_loss(pc, pr, rc, rr, beta=0.1, loss="hinge").losses.item() == pytest.approx(0.9)
    # beta 0.5, h = 3 (policy -1 / -4 against a reference -1 / -1): IPO (3 - 1)^2 = 4; hinge max(0, 1 - 1.5) = 0
    a, b, c = (torch.tensor([x]) for x in (-1.0, -4.0, -1.0))
    assert dpo_loss(a, b, c, c, beta=0.5, loss="ipo").losses.item() == pytest.approx(4.0)
    assert dpo_loss(a, b, c, c, beta=0.5, loss="hinge").losses.item() == 0.0
    # the rewards (what the metrics log) are the same for every variant: beta * log-ratio
    for kind in ("sigmoid", "ipo", "hinge"):
        out = dpo_loss(pc, pr, rc, rr, beta=0.1, loss=kind)
        assert out.chosen_rewards.item() == pytest.approx(0.05) and out.rejected_rewards.item() == pytest.approx(-0.05)
    # gradients: IPO pulls the margin to 5 (d/dh = 2 (h - 5) = -8), hinge pushes with -beta while active
    h = torch.tensor([1.0], requires_grad=True)
    dpo_loss(h, torch.zeros(1), torch.zeros(1), torch.zeros(1), beta=0.1, loss="ipo").losses.sum().backward()
    assert h.grad.item() == pytest.approx(-8.0)


def dpo_args(start, prefs, out, *extra):
    # no data.max_length: the recipe's 1024 exceeds the tiny model's 128 positions and must be clamped
    return ["dpo", "slam-dpo", f"model={start}", f"data.train={prefs}", f"out={out}", "data.val_fraction=0",
            "batch.size=4", "batch.micro=2", "budget.steps=4", "log_every=1", "eval.every_steps=0",
            "checkpoint.every_steps=0", "checkpoint.every_minutes=0", "precision=fp32", "seed=0", *extra]


def test_dpo_loss_key_and_model_positions(start, tmp_path, capsys):
    prefs = ramp_prefs(tmp_path / "prefs", start, n_units=N_UNITS)
    first = {}
    for kind in ("sigmoid", "ipo", "hinge"):
        run = tmp_path / kind
        assert main(dpo_args(start, prefs, run, f"dpo.loss={kind}")) == 0
        out = capsys.readouterr().out
        assert "data.max_length 1024 exceeds the model's 128 positions; using 128" in out
        first[kind] = losses(run)[0]
        assert json.loads((run / "final" / "slam.json").read_text())["extra"]["dpo"]["loss"] == kind
    # step 1: policy == reference, h = 0: sigmoid log 2, IPO (0 - 1/(2*0.1))^2 = 25, hinge max(0, 1 - 0) = 1
    assert first["sigmoid"] == pytest.approx(np.log(2), abs=1e-6)
    assert first["ipo"] == pytest.approx(25.0, abs=1e-4) and first["hinge"] == pytest.approx(1.0, abs=1e-6)
    assert main(dpo_args(start, prefs, tmp_path / "bad", "dpo.loss=kto")) == 2
    assert "dpo.loss" in capsys.readouterr().err


# --- training options -----------------------------------------------------------------------------------
def test_gradient_checkpointing_gives_the_same_losses(units, tmp_path, monkeypatch):
    from transformers import PreTrainedModel

    enabled = []
    real = PreTrainedModel.activation_checkpointing_enable

    def spy(self, *a, **k):
        real(self, *a, **k)
        enabled.append(self.is_activation_checkpointing)

    monkeypatch.setattr(PreTrainedModel, "activation_checkpointing_enable", spy)
    plain, ckpt = tmp_path / "plain", tmp_path / "ckpt"
    assert main(["train", "tiny-cpu", *train_overrides(units, plain, "checkpoint.every_steps=0")]) == 0
    assert main(["train", "tiny-cpu", *train_overrides(units, ckpt, "checkpoint.every_steps=0",
                                                       "gradient_checkpointing=true")]) == 0
    assert enabled == [True], "the recipe key switches checkpointing on (and only in the second run)"
    assert losses(ckpt) == pytest.approx(losses(plain), rel=1e-5)
    assert len(losses(plain)) == 6


def test_document_length_filters_and_val_fallback(units, tmp_path, capsys):
    from slam.units.dataset import load_table

    lens = np.array([len(u) + 2 for u in load_table(units, ["units"]).column("units").to_pylist()])
    run = tmp_path / "run"
    assert main(["train", "tiny-cpu", *train_overrides(units, run, "data.min_length=40", "data.max_length=80",
                                                       "budget.steps=2", "eval.every_steps=0",
                                                       "schedule.warmup_min_steps=1")]) == 0
    out = capsys.readouterr().out
    n_out = int(((lens < 40) | (lens > 80)).sum())
    assert 0 < n_out < len(lens)
    assert f"{n_out} of {len(lens)} documents outside data.min_length 40 .. data.max_length 80" in out
    # 0.001 of 120 documents holds out none by the hash: one document is held out, and the run says so
    run = tmp_path / "fallback"
    assert main(["train", "tiny-cpu", *train_overrides(units, run, "data.val_fraction=0.001", "budget.steps=2",
                                                       "schedule.warmup_min_steps=1")]) == 0
    assert "data.val_fraction 0.001 of" in capsys.readouterr().out
    assert losses(run, "val"), "validation ran on the held-out document"


def test_recipe_cli_fixes(units, tmp_path, capsys):
    base = [f"data.train=[{{path: {units}}}]", f"out={tmp_path / 'r'}"]
    # --check after the recipe, between overrides; budget.steps on the time-budgeted `slam` recipe replaces it
    assert main(["train", "slam", "--check", *base, "budget.steps=700"]) == 0
    printed = capsys.readouterr().out
    assert "steps: 700" in printed and "time: null" in printed
    assert main(["train", "tiny-cpu", *base, "--keys"]) == 0 and "budget.steps" in capsys.readouterr().out
    # a missing recipe lists every shipped recipe
    assert main(["train"]) == 2
    err = capsys.readouterr().err
    assert all(name in err for name in shipped_recipes()) and len(err.strip().splitlines()) == 1
    assert main(["train", "no-such-recipe", *base]) == 2
    assert "slam-interleaved" in capsys.readouterr().err


# --- top-p sampling -------------------------------------------------------------------------------------
def test_top_p_keeps_the_nucleus():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log()
    seen = torch.zeros_like(logits, dtype=torch.bool)
    keep = lambda p: torch.isfinite(next_unit_logits(logits, seen, 1.0, None, None, p))[0].tolist()  # noqa: E731
    assert keep(0.5) == [True, False, False, False]     # 0.5 reaches 0.5
    assert keep(0.6) == [True, True, False, False]      # 0.5 < 0.6 <= 0.8
    assert keep(0.85) == [True, True, True, False]      # 0.8 < 0.85 <= 0.95
    assert keep(1.0) == [True] * 4 and keep(None) == [True] * 4
    assert keep(0.01) == [True, False, False, False]    # the most likely unit is always kept
    out = next_unit_logits(logits, seen, 1.0, None, None, 0.6)
    assert torch.softmax(out, -1)[0, :2].tolist() == pytest.approx([0.5 / 0.8, 0.3 / 0.8])


def test_generate_top_p_through_the_cli(start, tmp_path, capsys):
    from conftest import synth_speechlike
    import soundfile as sf

    sf.write(tmp_path / "p.wav", synth_speechlike(1.0), 16000)
    outs = {}
    for name, extra in (("greedy", ["--temperature", "0"]), ("nucleus", ["--top-p", "0.0001"]),
                        ("wide", ["--top-p", "0.9"])):
        assert main(["generate", str(start), "--prompt", str(tmp_path / "p.wav"), "--out", str(tmp_path / f"{name}.wav"),
                     "--max-new-tokens", "12", "--vocoder", "melinv", *extra]) == 0
        outs[name] = json.loads((tmp_path / f"{name}.units.jsonl").read_text().splitlines()[0])["units"]
    assert "top-p 0.9" in capsys.readouterr().out
    assert outs["nucleus"] == outs["greedy"]  # a nucleus of one unit is greedy decoding
    assert main(["generate", str(start), "--prompt", str(tmp_path / "p.wav"), "--out", str(tmp_path / "x.wav"),
                 "--top-p", "1.5"]) == 2
