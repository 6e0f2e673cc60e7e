"""DPO pieces: the loss against a hand-worked example, packed log-probs against one forward per sequence,
a frozen reference under training steps, the auto-BLEU filter, the preference readers and the recipe."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from slam.attention import varlen_kwargs
from slam.prefs import PrefPair, filter_auto_bleu, load_prefs, prompt_chosen_auto_bleu, read_jsonl_prefs
from slam.config import RECIPES
from slam.train.config import DPOConfig
from slam.train.config import load_dpo as load
from slam.train.dpo import Metrics, make_loss_fn, sequence_logps
from slam.train.losses import dpo_loss
from slam.train.pairs import PairLoader, collate, encode_pairs


def tiny_model(seed: int = 0, n_units: int = 16, varlen: bool = True):
    from slam.attention import prepare_packed_attention, use_varlen_attention
    from slam.model import random_init

    model, info = random_init({"model_type": "qwen2", "hidden_size": 32, "intermediate_size": 64,
                               "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                               "max_position_embeddings": 128, "tie_word_embeddings": True}, n_units, seed=seed)
    use_varlen_attention(model) if varlen else prepare_packed_attention(model)
    return model, info


def random_pairs(n: int, seed: int = 0, n_units: int = 16) -> list[PrefPair]:
    rng = np.random.default_rng(seed)
    return [PrefPair(f"p{i:03d}", rng.integers(0, n_units, rng.integers(1, 9)),
                 rng.integers(0, n_units, rng.integers(1, 7)), rng.integers(0, n_units, rng.integers(1, 7)))
            for i in range(n)]


# --- the loss -------------------------------------------------------------------------------------------------
def test_loss_matches_the_hand_worked_example():
    # policy chosen -1, rejected -2; reference -1.5 both; beta 0.1:
    # rewards 0.1 * 0.5 = +0.05 and 0.1 * -0.5 = -0.05, margin 0.1, loss = -log sigmoid(0.1) = log(1 + e^-0.1)
    out = dpo_loss(torch.tensor([-1.0]), torch.tensor([-2.0]), torch.tensor([-1.5]), torch.tensor([-1.5]), beta=0.1)
    assert out.losses.item() == pytest.approx(0.6443966600735709, abs=1e-6)
    assert out.chosen_rewards.item() == pytest.approx(0.05, abs=1e-7)
    assert out.rejected_rewards.item() == pytest.approx(-0.05, abs=1e-7)
    # equal log-ratios: loss log 2; a reversed preference costs more than a right one
    even = dpo_loss(torch.tensor([-3.0]), torch.tensor([-3.0]), torch.tensor([-1.0]), torch.tensor([-1.0]))
    assert even.losses.item() == pytest.approx(math.log(2), abs=1e-7)
    wrong = dpo_loss(torch.tensor([-2.0]), torch.tensor([-1.0]), torch.tensor([-1.5]), torch.tensor([-1.5]))
    assert wrong.losses.item() == pytest.approx(math.log1p(math.exp(0.1)), abs=1e-6)
    # beta scales the margin: beta 1 -> log(1 + e^-1)
    assert dpo_loss(torch.tensor([-1.0]), torch.tensor([-2.0]), torch.tensor([-1.5]), torch.tensor([-1.5]),
                    beta=1.0).losses.item() == pytest.approx(math.log1p(math.exp(-1.0)), abs=1e-6)
    # finite for huge margins (logsigmoid, not log(sigmoid))
    big = dpo_loss(torch.tensor([0.0]), torch.tensor([-1e5]), torch.tensor([0.0]), torch.tensor([0.0]), beta=1.0)
    assert torch.isfinite(big.losses).all() and big.losses.item() < 1e-6


def test_loss_gradient_raises_chosen_and_lowers_rejected():
    pc, pr = torch.tensor([-1.0], requires_grad=True), torch.tensor([-2.0], requires_grad=True)
    dpo_loss(pc, pr, torch.tensor([-1.5]), torch.tensor([-1.5]), beta=0.1).losses.sum().backward()
    # d/d pc = -beta * sigmoid(-0.1) = -0.1 * 0.475021
    assert pc.grad.item() == pytest.approx(-0.1 * (1 / (1 + math.exp(0.1))), abs=1e-7)
    assert pr.grad.item() == pytest.approx(+0.1 * (1 / (1 + math.exp(0.1))), abs=1e-7)


# --- packed forward -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("varlen", [True, False], ids=["slam_varlen", "sdpa"])
def test_packed_log_probs_equal_one_forward_per_sequence(varlen):
    model, info = tiny_model(varlen=varlen)
    model.eval()
    pairs = encode_pairs(random_pairs(5), info)
    batch = collate(pairs, np.arange(5))
    # BOS on the prompt, EOS on the completions
    assert batch["input_ids"][0, 0] == info.bos_id and int(pairs.chosen[0][-1]) == info.eos_id
    with torch.no_grad():
        chosen, rejected = sequence_logps(model, batch)
        for i in range(5):
            for got, comp in ((chosen[i], pairs.chosen[i]), (rejected[i], pairs.rejected[i])):
                seq = torch.from_numpy(np.concatenate([pairs.prompt[i], comp]))[None]
                kw = varlen_kwargs(torch.arange(seq.shape[1])[None]) if varlen else {}
                logp = torch.log_softmax(model(input_ids=seq, use_cache=False, **kw).logits[0].float(), -1)
                p = len(pairs.prompt[i])
                want = sum(logp[t - 1, seq[0, t]].item() for t in range(p, seq.shape[1]))
                assert got.item() == pytest.approx(want, abs=1e-4)


def test_reference_stays_frozen_while_the_policy_trains():
    from slam.train import dist
    from slam.train.budget import Budget
    from slam.train.config import BudgetConfig
    from slam.train.config import Optim
    from slam.train.engine import train_step
    from slam.train.optim import build_optimizer
    from contextlib import nullcontext

    policy, info = tiny_model(seed=3)
    reference, _ = tiny_model(seed=3)
    reference.requires_grad_(False).eval()
    before = {k: v.clone() for k, v in reference.state_dict().items()}
    start = {k: v.clone() for k, v in policy.state_dict().items()}
    pairs = encode_pairs(random_pairs(8, seed=1), info)
    metrics = Metrics()
    loss_fn = make_loss_fn(reference, 0.1, metrics)
    opt = build_optimizer(policy, Optim(lr=1e-2))
    budget = Budget.from_config(BudgetConfig(time=None, steps=3))
    policy.train()
    for s in range(3):
        micro = [collate(pairs, np.arange(4 * (s % 2), 4 * (s % 2) + 4))]
        stats = train_step(policy, opt, micro, loss_fn, dist.Env(), nullcontext, 0.5, budget)
        assert stats.finite and stats.tokens == 4  # train_step normalises by pairs
        m = metrics.reduce(torch.device("cpu"))
        if s == 0:  # policy == reference before the first update: every reward is 0
            assert m["reward_chosen"] == 0.0 and m["reward_rejected"] == 0.0
    assert all(torch.equal(before[k], v) for k, v in reference.state_dict().items())
    assert all(p.grad is None for p in reference.parameters())
    assert any(not torch.equal(start[k], v) for k, v in policy.state_dict().items())
    assert m["reward_chosen"] != 0.0  # the reference did not move along with the policy


def test_pair_loader_covers_every_pair_once_per_epoch_and_resumes():
    idx = np.arange(10, 30)
    a = PairLoader(idx, micro=2, seed=5, rank=0, world=2, fingerprint="x")
    b = PairLoader(idx, micro=2, seed=5, rank=1, world=2, fingerprint="x")
    seen = np.concatenate([np.concatenate([a.next(), b.next()]) for _ in range(a.per_epoch)])
    assert sorted(seen.tolist()) == idx.tolist()
    state = a.state_dict()
    nxt = [a.next().tolist() for _ in range(3)]
    c = PairLoader(idx, micro=2, seed=5, rank=0, world=2, fingerprint="x")
    c.load_state_dict(state)
    assert [c.next().tolist() for _ in range(3)] == nxt
    with pytest.raises(Exception, match="changed"):
        PairLoader(idx, micro=2, seed=5, rank=0, world=2, fingerprint="y").load_state_dict(state)


# --- the auto-BLEU filter -------------------------------------------------------------------------------------
def test_auto_bleu_filter_drops_a_repetitive_pair_and_keeps_a_normal_one():
    normal = {"id": "a", "prompt": "Mia found a red kite in the park.", "chosen": "She flew it all afternoon.",
              "rejected": "The soup was cold."}
    loop = {"id": "b", "prompt": "Tom went to the shop and the shop and the shop.",
            "chosen": "And the shop and the shop.", "rejected": "He bought bread."}
    assert prompt_chosen_auto_bleu(normal) < 0.3 <= prompt_chosen_auto_bleu(loop)
    kept, dropped = filter_auto_bleu([normal, loop], 0.3)
    assert [r["id"] for r in kept] == ["a"] and [r["id"] for r in dropped] == ["b"]
    assert dropped[0]["auto_bleu"] >= 0.3
    # the threshold is configurable; None keeps all
    assert len(filter_auto_bleu([normal, loop], 0.99)[0]) == 2
    assert len(filter_auto_bleu([normal, loop], None)[0]) == 2


# --- readers --------------------------------------------------------------------------------------------------
def test_units_dataset_and_jsonl_forms_read_the_same_pairs(tmp_path):
    from slam.tokens import SlamInfo
    from slam.units.dataset import UnitsWriter

    info = SlamInfo(n_units=16, tokenizer_hash="h1")
    pairs = random_pairs(4, seed=2)
    with UnitsWriter(tmp_path / "units", {"n_units": 16, "tokenizer_hash": "h1", "dedup": True}) as w:
        for p in pairs:
            for f in ("prompt", "chosen", "rejected"):
                u = getattr(p, f)
                w.add(f"{p.id}-{f}", u, np.ones_like(u), len(u) / 25, "t")
        w.add("p999-prompt", [1, 2], [1, 1], 0.1, "t")  # a pair without completions is left out
    got, stats = load_prefs(tmp_path / "units", info)
    assert stats["incomplete"] == 1
    (tmp_path / "npy").mkdir()
    lines = []
    for p in pairs:  # inline lists, and .npy files relative to the jsonl
        np.save(tmp_path / "npy" / f"{p.id}.npy", p.rejected)
        lines.append(json.dumps({"id": p.id, "prompt": p.prompt.tolist(), "chosen": p.chosen.tolist(),
                                 "rejected": f"npy/{p.id}.npy"}))
    (tmp_path / "prefs.jsonl").write_text("\n".join(lines) + "\n")
    got2, _ = read_jsonl_prefs(tmp_path / "prefs.jsonl", info, progress=False)
    for a, b, c in zip(pairs, got, got2):
        assert a.id == b.id == c.id
        for f in ("prompt", "chosen", "rejected"):
            assert getattr(a, f).tolist() == getattr(b, f).tolist() == getattr(c, f).tolist()
    # units of another tokenizer, or beyond the model's vocabulary, are refused
    with pytest.raises(Exception, match="tokenizer"):
        load_prefs(tmp_path / "units", SlamInfo(n_units=16, tokenizer_hash="other"))
    with pytest.raises(Exception, match="n_units"):
        load_prefs(tmp_path / "units", SlamInfo(n_units=8))


# --- the recipe -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(p.stem for p in RECIPES.glob("*-dpo.yaml")))
def test_every_shipped_dpo_recipe_loads(name):
    cfg = load(name, [])
    assert isinstance(cfg, DPOConfig) and cfg.model and cfg.data.train
    assert cfg.batch.size % cfg.batch.micro == 0


def test_shipped_recipe_is_the_papers_dpo_recipe():
    from slam.config import describe

    cfg = load("slam-dpo", [])
    assert (cfg.dpo.beta, cfg.optim.lr, cfg.optim.grad_clip) == (0.1, 5e-5, 0.5)
    assert (cfg.batch.size, cfg.batch.micro) == (64, 4)
    assert cfg.schedule.name == "inverse_sqrt" and cfg.budget.seconds == 1800
    assert cfg.model and cfg.data.train
    assert [k for k, _, doc in describe(DPOConfig) if not doc] == []


def test_bad_recipe_keys_end_in_one_line(capsys):
    from slam.cli import main

    assert main(["dpo", "slam-dpo", "dpo.bta=0.2", "--check"]) == 2
    assert "dpo.bta" in capsys.readouterr().err
    assert main(["dpo", "slam-dpo", "dpo.beta=-1", "--check"]) == 2
    assert "dpo.beta" in capsys.readouterr().err
    assert main(["dpo", "slam-dpo", "batch.micro=5", "--check"]) == 2
