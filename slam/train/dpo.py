"""Direct Preference Optimisation on spoken preference pairs: `dpo(cfg)` aligns a speech LM within a budget.

The paper's last step (30 minutes of DPO on SpokenSwag after 23.5 h of pre-training: sBLIMP +2.4, sSC +2.5,
tSC +4.0, GenPPL 88 -> 63). Recipe: slam/recipes/slam-dpo.yaml; CLI: `slam dpo RECIPE.yaml [key=value ...]`.

Loss (Rafailov et al. 2023, arXiv 2305.18290, eq. 7), per pair (x, y_w chosen, y_l rejected):

    L = -log sigmoid( beta * [ (log pi(y_w|x) - log ref(y_w|x)) - (log pi(y_l|x) - log ref(y_l|x)) ] )

log pi(y|x) is the SUM of the token log-probs of the completion (its units and the closing `<s>`) given
`<s> prompt` and the completion so far; ref is the frozen starting model. beta * (log pi - log ref) is a
completion's implicit reward; logged per step: loss, reward accuracy (share of pairs whose chosen reward is
higher), chosen/rejected rewards and their margin.

Batches: a micro-batch of B pairs is ONE packed row of 2B sequences (`<s> prompt chosen <s>` then
`<s> prompt rejected <s>` per pair) with positions restarting at every sequence: one policy forward per
micro-batch (what DDP expects), no padding, and per-sequence attention (slam.attention's "slam_varlen":
the FlashAttention-2 varlen kernel on GPU, one SDPA call per sequence on CPU).

Everything that is not DPO-specific comes from slam.train: the budget (progress p drives the LR, so the
inverse-sqrt decay ends with the budget), schedule, optimiser, checkpoints (resume continues bit for bit),
run folder, DDP/FSDP, and the loop itself (slam.train.engine.run_loop: accumulation, one all-reduce, clip,
non-finite guard, cadence of validation and checkpoints). This module adds the `Preference` stage.
train_step divides the gradients by the global count the loss returns, here the number of pairs, so a step's
gradient is the mean over its 64 pairs however they fall into micro-batches and ranks.

    from slam.train.dpo import dpo
    from slam.train.config import load_dpo
    final = dpo(load_dpo("slam-dpo", ["model=runs/slam/final"]))
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from slam.attention import ATTN_NAME, use_varlen_attention
from slam.errors import ConfigError, SlamError
from slam.model import count_parameters
from slam.model_folder import load_model, save_model
from slam.train import dist
from slam.train.budget import Budget
from slam.train.config import DPOConfig
from slam.train.engine import (Session, StepStats, accumulation, autocast, log_done, overhead_text, plain_model,
                               prepare_run_folder, run_folder_lock, resume_state, run_loop, seed_everything)
from slam.train.flops import attention_width, batch_flops
from slam.train.losses import DPOOutput, dpo_loss
from slam.train.optim import build_optimizer
from slam.train.pairs import EncodedPairs, PairLoader, collate, load_pairs, to_device
from slam.utils import format_duration


# --- forward ------------------------------------------------------------------------------------------------
def sequence_logps(model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen, rejected) summed completion log-probs [B] of a collated micro-batch, in one forward."""
    hf = dist.unwrap(model)
    kwargs: dict[str, Any] = {}
    if getattr(hf.config, "_attn_implementation", None) == ATTN_NAME:
        kwargs = {k: batch[k] for k in ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")}
    logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False,
                   **kwargs).logits[0]
    # Only the completion rows, in fp32: the prompt half of a [T, V] logits copy is never made (it matters
    # for interleaved models, whose V is the text vocabulary, ~152k for Qwen2.5).
    token_logp = -F.cross_entropy(logits[batch["target_pos"]].float(), batch["target_ids"], reduction="none")
    per_seq = torch.zeros(2 * len(batch["index"]), device=token_logp.device, dtype=torch.float32)
    per_seq.index_add_(0, batch["target_owner"], token_logp)
    return per_seq[0::2], per_seq[1::2]


class Metrics:
    """Sums of the step's DPO statistics on this rank; `reduce` agrees on them over ranks (one all-reduce)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._sums: list[torch.Tensor] = []  # per micro-batch: loss, chosen, rejected rewards, wins (device)
        self.pairs = 0
        self.tokens = 0

    def add(self, out: DPOOutput, batch: dict[str, Any]) -> None:
        # kept on the device and summed once per step: no host sync per micro-batch
        self._sums.append(torch.stack([out.losses.detach().sum(), out.chosen_rewards.sum(),
                                       out.rejected_rewards.sum(),
                                       (out.chosen_rewards > out.rejected_rewards).float().sum()]).double())
        self.pairs += len(out.losses)
        self.tokens += int(batch["n_tokens"])

    def reduce(self, device: torch.device) -> dict[str, float]:
        sums = torch.stack(self._sums).sum(0) if self._sums else torch.zeros(4, dtype=torch.float64, device=device)
        counts = torch.tensor([self.pairs, self.tokens], dtype=torch.float64, device=device)
        packet = torch.cat([sums.to(device), counts])
        loss, chosen, rejected, correct, pairs, tokens = dist.all_reduce(packet).cpu().tolist()
        self.reset()
        n = max(pairs, 1.0)
        return {"loss": loss / n, "reward_accuracy": correct / n, "reward_chosen": chosen / n,
                "reward_rejected": rejected / n, "reward_margin": (chosen - rejected) / n, "pairs": int(pairs),
                "tokens": int(tokens)}


def make_loss_fn(reference: nn.Module | None, beta: float, metrics: Metrics, loss: str = "sigmoid") -> Callable:
    """`loss_fn(model, batch) -> (sum of pair losses, number of pairs)`, the interface of train_step.
    The reference log-probs come from the batch (precomputed) or from the frozen reference model."""

    def loss_fn(model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, int]:
        pol_c, pol_r = sequence_logps(model, batch)
        if "ref_chosen" in batch:
            ref_c, ref_r = batch["ref_chosen"], batch["ref_rejected"]
        else:
            with torch.no_grad():
                ref_c, ref_r = sequence_logps(reference, batch)
        out = dpo_loss(pol_c, pol_r, ref_c, ref_r, beta, loss)
        metrics.add(out, batch)
        return out.losses.sum(), len(out.losses)

    return loss_fn


def _rank_share(index: np.ndarray, env: dist.Env, pad: bool) -> tuple[np.ndarray, int]:
    """This rank's pairs of `index`, the same count on every rank (collectives inside sharded forwards
    must line up): padded by repeating (results then discarded) or cut to the common count."""
    share = index[env.rank::env.world]
    count = -(-len(index) // env.world) if pad else len(index) // env.world
    if len(share) < count:
        share = np.concatenate([share, np.repeat(index[-1:], count - len(share))])
    return share[:count], min(len(share), count)


@torch.no_grad()
def reference_table(reference: nn.Module, pairs: EncodedPairs, micro: int, env: dist.Env, amp: Callable,
                    progress: bool = True) -> torch.Tensor:
    """[N, 2] reference (chosen, rejected) log-probs of every pair, each rank computing a share."""
    table = torch.zeros(len(pairs), 2, dtype=torch.float64, device=env.device)
    share, real = _rank_share(np.arange(len(pairs)), env, pad=True)
    bar = tqdm(total=len(share), desc="reference log-probs", unit="pair", disable=not progress, dynamic_ncols=True)
    for a in range(0, len(share), micro):
        idx = share[a:a + micro]
        batch = to_device(collate(pairs, idx), env.device)
        with amp():
            c, r = sequence_logps(reference, batch)
        keep = torch.from_numpy(np.arange(a, a + len(idx)) < real).to(env.device)
        rows = batch["index"][keep]
        table[rows, 0] = c[keep].double()
        table[rows, 1] = r[keep].double()
        bar.update(len(idx))
    bar.close()
    return dist.all_reduce(table).float()


def _reference_cache(run_folder: Path, model: str, pairs: EncodedPairs, precision: str) -> tuple[Path, dict]:
    """Where the precomputed table lives and what it was computed from: a resumed run reuses it only when
    the model, the pairs and the precision/device are the same."""
    return run_folder / "reference-logps.safetensors", {
        "model": str(Path(model).resolve()), "pairs": pairs.fingerprint(), "precision": precision}


def _load_cached_table(path: Path, meta: dict) -> torch.Tensor | None:
    from safetensors import safe_open

    if not path.exists():
        return None
    with safe_open(str(path), "pt") as f:
        if (f.metadata() or {}) != meta:
            return None
        return f.get_tensor("logps")


@torch.no_grad()
def evaluate_pairs(model: nn.Module, loss_fn: Callable, metrics: Metrics, pairs: EncodedPairs, val_idx: np.ndarray,
                   micro: int, env: dist.Env, amp: Callable, ref_table: torch.Tensor | None,
                   max_batches: int = 0) -> dict[str, float]:
    """DPO loss and reward statistics over the validation pairs (every rank the same number of batches;
    `max_batches` micro-batches per rank at most, 0 = all)."""
    was_training = model.training
    model.eval()
    metrics.reset()
    share, _ = _rank_share(val_idx, env, pad=False)
    if max_batches:
        share = share[:max_batches * micro]
    for a in range(0, len(share), micro):
        batch = with_reference(to_device(collate(pairs, share[a:a + micro]), env.device), ref_table)
        with amp():
            loss_fn(model, batch)
    model.train(was_training)
    return metrics.reduce(env.device)


def with_reference(batch: dict[str, Any], ref_table: torch.Tensor | None) -> dict[str, Any]:
    if ref_table is not None:
        rows = ref_table[batch["index"]]
        batch["ref_chosen"], batch["ref_rejected"] = rows[:, 0], rows[:, 1]
    return batch


# --- the run ------------------------------------------------------------------------------------------------
def load_start_model(cfg: DPOConfig, device: torch.device, trainable: bool) -> tuple[nn.Module, Any]:
    """The starting checkpoint in fp32 on the device, with per-document ("slam_varlen") attention: the
    FlashAttention-2 varlen kernel on GPU, a per-sequence SDPA loop on CPU. transformers' own SDPA path would
    build a dense [T, T] mask over the whole row, ~2B times the attention work for 2B sequences
    (bench/dpo.py: measured slower than the per-sequence loop on CPU)."""
    try:
        model, info = load_model(cfg.model, dtype=torch.float32)
    except SlamError as e:
        raise ConfigError(f"model: {e}") from None
    model.config.use_cache = False
    model.to(device)
    use_varlen_attention(model)
    if trainable:
        model.train()
    else:
        model.eval()
        model.requires_grad_(False)
    return model, info


def dpo(cfg: DPOConfig) -> Path:
    """Run the recipe; returns the final model folder."""
    env = dist.init()
    try:
        with ExitStack() as held:  # the run folder's lock, taken once the starting model has loaded
            return _dpo(cfg, env, held)
    finally:
        dist.shutdown()


def _dpo(cfg: DPOConfig, env: dist.Env, held: ExitStack) -> Path:
    t_setup = time.perf_counter()
    seed_everything(cfg.seed)
    policy, info = load_start_model(cfg, env.device, trainable=True)  # a bad model= fails before any write
    held.enter_context(run_folder_lock(cfg, env, "dpo"))
    run, resume_from = prepare_run_folder(cfg, env)
    run.write_config(cfg)
    run.write_provenance({"stage": "dpo", "world_size": env.world,
                          "resumed_from": str(resume_from) if resume_from else None})
    max_pos = getattr(policy.config, "max_position_embeddings", None)
    if max_pos is not None and cfg.data.max_length > max_pos:
        # the recipe's 1024 is the paper model's context; a smaller model keeps pairs that fit its own
        if env.main:
            print(f"slam dpo: data.max_length {cfg.data.max_length} exceeds the model's {max_pos} positions; "
                  f"using {max_pos} (longer pairs are left out and counted)")
        cfg.data.max_length = max_pos
    pairs, train_idx, val_idx, counts = load_pairs(cfg, info, main=env.main)
    n_params = count_parameters(policy)
    layers, width = attention_width(policy)
    amp = autocast(cfg, env.device)

    # The reference: a second copy of the starting checkpoint, frozen (never wrapped for training, no grads).
    ref_table = None
    reference = None
    if cfg.dpo.precompute_reference:
        cache, meta = _reference_cache(run.folder, cfg.model, pairs, f"{cfg.precision}/{env.device.type}")
        ref_table = _load_cached_table(cache, meta) if resume_from is not None else None
        if ref_table is None:
            reference, _ = load_start_model(cfg, env.device, trainable=False)
            if cfg.dist.strategy == "fsdp":
                reference = dist.wrap(reference, "fsdp", env)
            t0 = time.perf_counter()
            ref_table = reference_table(reference, pairs, cfg.batch.micro, env, amp, progress=env.main)
            if env.main:
                from safetensors.torch import save_file

                save_file({"logps": ref_table.cpu().contiguous()}, str(cache), metadata=meta)
                print(f"slam dpo: reference log-probs of {len(pairs)} pairs in "
                      f"{format_duration(time.perf_counter() - t0)}; the reference model is freed")
            del reference
            reference = None
            if env.device.type == "cuda":
                torch.cuda.empty_cache()
        ref_table = ref_table.to(env.device)
    else:
        reference, _ = load_start_model(cfg, env.device, trainable=False)
        if cfg.dist.strategy == "fsdp":
            reference = dist.wrap(reference, "fsdp", env)

    if cfg.gradient_checkpointing:
        policy.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    if cfg.compile:  # packed rows vary in length: dynamic shapes, or one recompile per length
        for block in dist.transformer_blocks(policy):
            block.compile(dynamic=True)
    model = dist.wrap(policy, cfg.dist.strategy, env)
    optimizer = build_optimizer(model, cfg.optim)
    budget = Budget.from_config(cfg.budget)
    accum = accumulation(cfg, env, " pairs")
    loader = PairLoader(train_idx, cfg.batch.micro, cfg.seed, env.rank, env.world, fingerprint=pairs.fingerprint())
    metrics = Metrics()
    loss_fn = make_loss_fn(reference, cfg.dpo.beta, metrics, cfg.dpo.loss)
    s = Session(cfg, env, run, model, optimizer, budget, loader, loss_fn, amp, accum, "slam dpo")
    if resume_from is not None:
        s.step, s.flops = resume_state(resume_from, model, optimizer, budget, loader, run, env)
    elif cfg.resume and env.main:
        print(f"slam dpo: resume=true but {run.checkpoints} has no complete checkpoint; starting fresh")
    s.last_good = resume_from
    if env.main and s.step == 0:
        run.log("event", 0, event="data", **counts)
    setup_s = time.perf_counter() - t_setup

    ref_flops = 0.0 if ref_table is not None else 2.0 * n_params  # the reference's forward, per token
    stage = Preference(s, pairs, val_idx, ref_table, metrics, n_params, layers, width, ref_flops)
    val = run_loop(s, stage)
    step, last = s.step, stage.last
    start_extra = dict(info.extra)
    info.extra = {**{k: v for k, v in start_extra.items() if k != "train"}, "pretrain": start_extra.get("train"),
                  "dpo": {"start_model": str(cfg.model), "beta": cfg.dpo.beta, "loss": cfg.dpo.loss,
                          "pairs": counts["train_pairs"], "steps": step}}
    info.extra["train"] = {"run": str(run.folder), "steps": step, "tokens": budget.tokens,
                           "train_seconds": round(budget.seconds, 1)}
    with budget.overhead_of("final"):
        final = save_final(model, info, run.final, env, tokenizer_root=cfg.model)
    log_done(run, step, budget, setup_s, s.flops, val=val)
    if env.main:
        over = overhead_text(budget)
        val_txt = "no validation pairs"
        if val:
            val_txt = (f"validation on {val['pairs']} pairs: loss {val['loss']:.4f}, reward accuracy "
                       f"{val['reward_accuracy']:.3f}, margin {val['reward_margin']:+.4f}")
        last_txt = (f"last step: loss {last['loss']:.4f}, reward accuracy {last['reward_accuracy']:.3f}, margin "
                    f"{last['reward_margin']:+.4f}" if last else "no finite step")
        print(f"slam dpo: {step} steps x {cfg.batch.size} pairs ({counts['train_pairs']} training pairs, "
              f"{counts['too_long']} longer than {cfg.data.max_length} tokens left out) in "
              f"{format_duration(budget.seconds)} of training ({budget.kind} budget {100 * budget.progress():.0f}% "
              f"spent; outside it: setup {format_duration(setup_s)}{', ' + over if over else ''}); beta "
              f"{cfg.dpo.beta}, reference {'precomputed' if ref_table is not None else 'run every step'}; "
              f"{last_txt}; {val_txt}. Wrote {final} (model folder), {run.folder}/metrics.jsonl, loss.png, "
              f"TensorBoard events and checkpoints/{s.last_good.name}.")
    run.close()
    return final


class Preference:
    """DPO's side of the loop (slam.train.engine.Stage): micro-batches of packed pairs with their reference
    log-probs, pairs/s and reward statistics in the log, validation on held-out pairs."""

    def __init__(self, s: Session, pairs: EncodedPairs, val_idx: np.ndarray, ref_table: torch.Tensor | None,
                 metrics: Metrics, n_params: int, layers: int, width: int, ref_flops: float) -> None:
        self.s, self.pairs, self.val_idx, self.ref_table, self.metrics = s, pairs, val_idx, ref_table, metrics
        self.n_params, self.layers, self.width, self.ref_flops = n_params, layers, width, ref_flops
        self.m: dict[str, float] = {}
        self.last: dict[str, float] = {}

    def batches(self) -> list[dict]:
        s = self.s
        self.metrics.reset()
        return [with_reference(to_device(collate(self.pairs, s.data.next()), s.env.device), self.ref_table)
                for _ in range(s.accum)]

    def finish(self, stats: StepStats) -> tuple[int, float, dict[str, float]]:
        m = self.m = self.metrics.reduce(self.s.env.device)  # a collective: every rank, finite or not
        if stats.finite:
            self.last = m
        flops = batch_flops(self.n_params, m["tokens"], stats.pairs, self.layers, self.width) + self.ref_flops * m["tokens"]
        return m["tokens"], flops, {"pairs": m["pairs"], "tokens": m["tokens"]}

    def log(self, step: int, stats: StepStats, lr: float, window: dict[str, float], seconds: float
            ) -> tuple[dict[str, Any], str]:
        s, m = self.s, self.m
        sec = max(seconds, 1e-9)
        fields = dict(loss=stats.loss, reward_accuracy=m["reward_accuracy"], reward_chosen=m["reward_chosen"],
                      reward_rejected=m["reward_rejected"], reward_margin=m["reward_margin"], lr=lr,
                      grad_norm=stats.grad_norm, pairs=m["pairs"], tokens=s.budget.tokens,
                      pairs_per_s=window.get("pairs", 0) / sec, tok_per_s=window.get("tokens", 0) / sec,
                      flops=s.flops, progress=s.budget.progress(), train_hours=s.budget.seconds / 3600)
        desc = (f"step {step} | loss {stats.loss:.4f} | acc {m['reward_accuracy']:.2f} | margin "
                f"{m['reward_margin']:+.3f} | lr {lr:.2e} | {window.get('pairs', 0) / sec:.1f} pairs/s")
        return fields, desc

    def validate(self, step: int) -> dict[str, float] | None:
        s = self.s
        if len(self.val_idx) < s.env.world:
            return None
        with s.budget.overhead_of("eval"):
            v = evaluate_pairs(s.model, s.loss_fn, self.metrics, self.pairs, self.val_idx, s.cfg.batch.micro, s.env,
                               s.amp, self.ref_table, s.cfg.eval.batches)
        s.run.log("val", step, flops=s.flops, progress=s.budget.progress(), **v)
        return v


def save_final(model: nn.Module, info: Any, folder: Path, env: dist.Env, tokenizer_root: str) -> Path:
    """`final/`, a model folder; the speech tokenizer files are copied from the starting model's folder."""
    bare = plain_model(model, env)
    if bare is not None:
        save_model(bare, info, folder, tokenizer_root=tokenizer_root)
    dist.barrier()
    return folder
