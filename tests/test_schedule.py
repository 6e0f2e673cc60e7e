"""LR schedules over budget progress, the budget clock, and the optimisers (AdEMAMix by hand, Muon split)."""

from __future__ import annotations

import math
import time

import pytest
import torch
from torch import nn

from slam.train.budget import Budget
from slam.train.config import BudgetConfig as BudgetCfg
from slam.train.config import Optim, Schedule
from slam.train.optim import AdEMAMix, Optimizers, build_optimizer, set_lr
from slam.train.schedule import decay_factor, lr_at

PEAK = 1e-3


def test_cosine_warms_up_then_ends_at_min_lr_exactly_at_budget_end():
    cfg = Schedule(name="cosine", warmup=0.01, warmup_min_steps=0, min_lr=5e-5)
    assert lr_at(cfg, PEAK, 0.0, 0) == 0.0
    assert lr_at(cfg, PEAK, 0.005, 50) == pytest.approx(PEAK / 2)
    assert lr_at(cfg, PEAK, 0.01, 100) == pytest.approx(PEAK)
    assert lr_at(cfg, PEAK, 1.0, 10_000) == pytest.approx(5e-5)
    mid = 0.01 + 0.99 / 2  # half-way through the decay: the cosine's midpoint
    assert lr_at(cfg, PEAK, mid, 5000) == pytest.approx((PEAK + 5e-5) / 2)
    lrs = [lr_at(cfg, PEAK, p / 100, p * 100) for p in range(1, 101)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:])), "decay must be monotone after warmup"


def test_min_warmup_steps_dominate_a_short_budget_and_join_the_curve():
    # 1% of a 1000-step budget is 10 steps, but at least 100 warmup steps are asked for (slamkit's rule).
    cfg = Schedule(name="cosine", warmup=0.01, warmup_min_steps=100, min_lr=5e-5)
    lrs = [lr_at(cfg, PEAK, s / 1000, s) for s in range(1000)]
    assert lrs[49] == pytest.approx(PEAK * 50 / 100)
    assert lrs[10] < PEAK / 5  # the 1%-of-budget warmup alone would already be at the peak here
    # after step 99 the ramp passes the decay curve: from then on the LR is the curve itself, no jump
    assert lrs[150] == pytest.approx(decay_factor(cfg, 0.15, PEAK))
    assert max(lrs) <= PEAK


def test_wsd_inverse_sqrt_and_constant_shapes():
    wsd = Schedule(name="wsd", warmup=0.01, warmup_min_steps=0, min_lr=1e-5, cooldown=0.2)
    assert lr_at(wsd, PEAK, 0.5, 500) == pytest.approx(PEAK)
    assert lr_at(wsd, PEAK, 0.8, 800) == pytest.approx(PEAK)
    assert lr_at(wsd, PEAK, 0.9, 900) == pytest.approx((PEAK + 1e-5) / 2)
    assert lr_at(wsd, PEAK, 1.0, 1000) == pytest.approx(1e-5)
    inv = Schedule(name="inverse_sqrt", warmup=0.04, warmup_min_steps=0, min_lr=0.0)
    assert lr_at(inv, PEAK, 0.04, 40) == pytest.approx(PEAK)
    assert lr_at(inv, PEAK, 0.16, 160) == pytest.approx(PEAK / 2)  # sqrt(0.04 / 0.16) = 1/2
    const = Schedule(name="constant", warmup=0.1, warmup_min_steps=0)
    assert lr_at(const, PEAK, 0.05, 5) == pytest.approx(PEAK / 2)
    assert lr_at(const, PEAK, 0.99, 99) == pytest.approx(PEAK)


def test_budget_clock_counts_steps_only_and_progress_drives_the_stop():
    b = Budget.from_config(BudgetCfg(time="0.2s"))
    with b.step():
        time.sleep(0.06)
    with b.overhead_of("eval"):
        time.sleep(0.1)  # evaluation is not training time
    b.agree(b.partial())
    assert 0.06 <= b.seconds < 0.1
    assert b.overhead["eval"] >= 0.1
    assert not b.done() and 0.3 < b.progress() < 0.5
    with b.step():
        time.sleep(0.15)
    b.agree(b.partial())
    assert b.done() and b.progress() == 1.0
    s = Budget.from_config(BudgetCfg(time=None, steps=10))
    s.add(steps=4, tokens=100)
    assert s.progress() == pytest.approx(0.4) and s.eta_seconds() is None  # no clock yet
    restored = Budget.from_config(BudgetCfg(time=None, steps=20))
    restored.load_state_dict(s.state_dict())
    assert restored.steps == 4 and restored.progress() == pytest.approx(0.2)  # limit from the new recipe


def test_ademamix_first_step_by_hand_and_ramps():
    p = nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = AdEMAMix([p], lr=0.1, betas=(0.9, 0.999), beta3=0.9999, alpha=5.0, eps=0.0, warmup=0.5)
    set_lr(opt, 0.1, progress=1.0)  # ramps done: alpha 5, beta3 0.9999
    p.grad = torch.tensor([0.5, 0.25])
    opt.step()
    # m1_hat = g, nu_hat = g^2, m2 = (1 - beta3) g: update = (g + 5e-4 g) / |g| = sign(g) * 1.0005
    assert torch.allclose(p.detach(), torch.tensor([1.0 - 0.1 * 1.0005, -2.0 - 0.1 * 1.0005]), atol=1e-7)
    group = dict(opt.param_groups[0])
    group["progress"] = 0.0
    assert AdEMAMix.ramped(group) == (0.0, pytest.approx(0.9))  # starts as plain Adam with beta3 = beta1
    group["progress"] = 0.25  # half-way through the ramp: alpha half, beta3 between beta1 and its target
    alpha, beta3 = AdEMAMix.ramped(group)
    assert alpha == pytest.approx(2.5) and 0.9 < beta3 < 0.9999


def _tiny_lm() -> nn.Module:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    return Qwen2ForCausalLM(Qwen2Config(vocab_size=30, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                        num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True))


def test_muon_takes_hidden_matrices_and_adamw_the_rest():
    model = _tiny_lm()
    opt = build_optimizer(model, Optim(name="muon", weight_decay=0.1))
    assert isinstance(opt, Optimizers)
    muon, adamw = opt.optimizers
    assert isinstance(muon, torch.optim.Muon) and isinstance(adamw, torch.optim.AdamW)
    muon_ids = {id(p) for g in muon.param_groups for p in g["params"]}
    emb = model.get_input_embeddings().weight
    assert id(emb) not in muon_ids  # embeddings (tied head) stay on AdamW
    assert id(model.model.layers[0].self_attn.q_proj.weight) in muon_ids
    assert all(p.ndim == 2 for g in muon.param_groups for p in g["params"])
    n_all = len({id(p) for p in model.parameters()})
    assert len(muon_ids) + sum(len(g["params"]) for g in adamw.param_groups) == n_all
    before = model.model.layers[0].mlp.up_proj.weight.detach().clone()
    ids = torch.randint(0, 30, (2, 8))
    model(input_ids=ids, labels=ids).loss.backward()
    set_lr(opt, 1e-2, 0.5)
    opt.step()
    assert not torch.equal(before, model.model.layers[0].mlp.up_proj.weight)
    state = opt.state_dict()
    opt.load_state_dict(state)


def test_adamw_is_fused_where_available_and_decays_matrices_only():
    opt = build_optimizer(_tiny_lm(), Optim(name="adamw", weight_decay=0.1, fused=True))
    assert opt.defaults.get("fused") is True
    decays = {g["weight_decay"]: [p.ndim for p in g["params"]] for g in opt.param_groups}
    assert all(n >= 2 for n in decays[0.1]) and all(n < 2 for n in decays[0.0])
    assert math.isclose(opt.param_groups[0]["lr"], 1e-3)
