"""Budget-aware packed pre-training: `train(cfg)` turns units datasets into a speech LM within a budget.

Reads top to bottom: set up (process group, run folder, model, data, optimiser, budget), maybe resume, then
loop { LR from budget progress -> accumulate micro-batches -> one all-reduce -> clip -> step -> log /
validate / checkpoint } until the budget is spent, then write `final/`. The pieces (Budget, lr_at,
build_optimizer, checkpoint.save/load, dist, Run) are small modules of their own so that the DPO stage and
interleaved training reuse them; `train_step` and `evaluate` below are reusable too, and so is the loop's
bookkeeping that slam/train/dpo.py repeats step for step (Cadence: is a validation / checkpoint due;
recover_non_finite; resume_state, save_checkpoint, log_done, the progress bar).

Loss normalisation: every micro-batch's backward runs on its summed token loss; after accumulation the
gradients are scaled by world / (tokens of the whole step on all ranks). That is the exact token-weighted
mean over the step however the tokens fall into micro-batches and ranks, so 2 processes x accumulation A
match 1 process x accumulation 2A (tested), and no micro-batch with few tokens is over-weighted.
"""

from __future__ import annotations

import math
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from slam.errors import ConfigError, SlamError
from slam.train import checkpoint, dist
from slam.train import data_io
from slam.train.budget import Budget
from slam.train.config import TrainConfig
from slam.train.flops import attention_width, batch_flops, doc_pairs, peak_tflops
from slam.train.optim import build_optimizer, set_lr
from slam.train.run import Run
from slam.train.schedule import lr_at
from slam.utils import format_duration


# --- setup pieces -------------------------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def autocast(cfg: TrainConfig, device: torch.device):
    """bf16 autocast on GPU (the paper), fp32 on CPU unless asked; weights and optimiser stay fp32."""
    use_bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")
    return (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if use_bf16 else nullcontext


def build_model(cfg: TrainConfig, layout: Any) -> tuple[nn.Module, Any]:
    """TWIST init from `model.base`, or random init from `model.config`, with the data's token layout
    (a SlamInfo); fp32 master weights."""
    from slam.model import random_init, twist_init

    m = cfg.model
    try:
        if m.base is not None:
            model, info = twist_init(m.base, layout.n_units, unit_init=m.unit_init, rope_theta=m.rope_theta,
                                     seed=cfg.seed, info=layout)
        else:
            model, info = random_init(dict(m.config), layout.n_units, rope_theta=m.rope_theta, seed=cfg.seed,
                                      info=layout)
    except SlamError as e:
        raise ConfigError(f"model.{'base' if m.base is not None else 'config'}: {e}") from None
    model.config.use_cache = False  # a cache in a packed forward lets documents see each other
    max_pos = getattr(model.config, "max_position_embeddings", None)
    if max_pos is not None and cfg.data.context > max_pos:
        raise ConfigError(f"data.context: {cfg.data.context} exceeds the model's {max_pos} positions")
    return model, info


def compile_blocks(model: nn.Module) -> int:
    """Regional compile: each transformer block on its own, static shapes ([micro, context] never changes),
    so there is one compile per block type instead of one whole-graph compile with graph breaks."""
    blocks = dist.transformer_blocks(model)
    for block in blocks:
        block.compile(dynamic=False)
    return len(blocks)


# --- one step -----------------------------------------------------------------------------------------------
@dataclass
class StepStats:
    loss: float
    """Token-weighted mean loss of the step over all ranks (nats/token)."""
    tokens: int
    """Supervised tokens of the step on all ranks."""
    pairs: int
    """Causal (query, key) pairs of the step on all ranks (the attention FLOPs term)."""
    grad_norm: float
    finite: bool


def train_step(model: nn.Module, optimizer: Any, micro_batches: list[dict], loss_fn: Callable,
               env: dist.Env, amp: Callable, grad_clip: float, budget: Budget) -> StepStats:
    """Forward/backward every micro-batch, agree on totals in one all-reduce, clip, step.

    A non-finite loss or gradient norm leaves the weights untouched (grads dropped, no step) and reports
    finite=False; the caller decides what to restore.
    """
    loss_sum = torch.zeros((), device=env.device, dtype=torch.float32)
    n_tok = torch.zeros((), device=env.device, dtype=torch.float32)
    pairs = 0
    params = [p for p in model.parameters() if p.requires_grad]
    for i, batch in enumerate(micro_batches):
        with dist.grad_sync(model, sync=i == len(micro_batches) - 1):
            with amp():
                s, n = loss_fn(model, batch)
            s.backward()
        loss_sum += s.detach().float()
        n_tok += n.detach().float() if torch.is_tensor(n) else float(n)
        pairs += batch["n_pairs"] if "n_pairs" in batch else doc_pairs(batch["position_ids"])
    # The step's one collective: loss, tokens, attention pairs, non-finite flag, and the clocks (mean).
    bad = (~torch.isfinite(loss_sum)).float()
    extra = torch.tensor([float(pairs), budget.partial()], device=env.device, dtype=torch.float64)
    packet = torch.cat([torch.stack([loss_sum, n_tok, bad]).double(), extra])
    packet = dist.all_reduce(packet).cpu().tolist()
    total_loss, total_tok, n_bad, total_pairs, clock = packet
    budget.agree(clock / env.world)
    if n_bad > 0 or total_tok <= 0:
        optimizer.zero_grad(set_to_none=True)
        return StepStats(float("nan"), int(total_tok), int(total_pairs), float("nan"), False)
    # DDP/FSDP averaged the gradients over ranks: x world / tokens turns them into the token-weighted mean.
    grads = [p.grad for p in params if p.grad is not None]
    torch._foreach_mul_(grads, env.world / total_tok)
    if grad_clip > 0:
        norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
    else:
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
    if not math.isfinite(norm):
        optimizer.zero_grad(set_to_none=True)
        return StepStats(total_loss / total_tok, int(total_tok), int(total_pairs), norm, False)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return StepStats(total_loss / total_tok, int(total_tok), int(total_pairs), norm, True)


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterator[dict], loss_fn: Callable, env: dist.Env,
             amp: Callable) -> tuple[float, int]:
    """Token-weighted validation loss over this rank's batches, summed over ranks: (loss, tokens)."""
    was_training = model.training
    model.eval()
    loss_sum, n_tok = 0.0, 0.0
    for batch in batches:
        with amp():
            s, n = loss_fn(model, batch)
        loss_sum += float(s)
        n_tok += float(n)
    model.train(was_training)
    t = dist.all_reduce(torch.tensor([loss_sum, n_tok], dtype=torch.float64, device=env.device))
    return (float(t[0] / t[1]) if t[1] > 0 else float("nan")), int(t[1])


# --- pieces shared with the DPO loop (slam/train/dpo.py) -----------------------------------------------------
def accumulation(cfg: Any, env: dist.Env, unit: str = "") -> int:
    """Micro-batches per process per optimiser step: batch.size / (batch.micro x processes), which must divide.
    `unit` names what batch.size counts in the error (" pairs" for DPO)."""
    accum = cfg.batch.size // (cfg.batch.micro * env.world)
    if accum * cfg.batch.micro * env.world != cfg.batch.size:
        raise ConfigError(f"batch.size: {cfg.batch.size}{unit} is not a multiple of batch.micro {cfg.batch.micro} x "
                          f"{env.world} processes")
    return accum


def progress_bar(budget: Budget, env: dist.Env) -> tqdm:
    """Percent of the budget spent, with a one-line description the loop fills in."""
    return tqdm(total=100.0, disable=not env.main, dynamic_ncols=True, initial=round(100 * budget.progress(), 2),
                bar_format="{percentage:5.1f}%|{bar:16}| {desc}")


def advance(bar: tqdm, budget: Budget) -> None:
    bar.update(round(100 * budget.progress(), 2) - bar.n)


def eta_text(budget: Budget) -> str:
    eta = budget.eta_seconds()
    return f" | ETA {format_duration(eta)}" if eta is not None else ""


def overhead_text(budget: Budget) -> str:
    return ", ".join(f"{k} {format_duration(v)}" for k, v in sorted(budget.overhead.items()))


def step_lr(cfg: Any, optimizer: Any, budget: Budget, step: int) -> float:
    """Set and return this step's LR: the schedule follows budget progress, so its decay ends with the budget."""
    p = budget.progress()
    lr = lr_at(cfg.schedule, cfg.optim.lr, p, step)
    set_lr(optimizer, lr, p)
    return lr


def discount_compile(budget: Budget, dt: float) -> None:
    """A step that compiled: its warm-up is not training time but overhead."""
    budget.local_seconds -= dt
    budget.seconds = max(0.0, budget.seconds - dt)
    budget.overhead["compile"] = budget.overhead.get("compile", 0.0) + dt


def resume_state(resume_from: Path, model: nn.Module, optimizer: Any, budget: Budget, data: Any, run: Run,
                 env: dist.Env) -> tuple[int, float]:
    """Load a checkpoint into model, optimiser, budget and data position; drop the metrics written after it
    (they are recomputed: one trajectory in the file). Returns (step, FLOPs so far)."""
    state = checkpoint.load(resume_from, model, optimizer, env)
    step = state["step"]
    budget.load_state_dict(state["budget"])
    data.load_state_dict(state["data"])
    dropped = run.rewind(step)
    run.log("event", step, event="resumed", checkpoint=resume_from.name, dropped_metric_lines=dropped)
    return step, state.get("flops", 0.0)


def save_checkpoint(run: Run, step: int, model: nn.Module, optimizer: Any, budget: Budget, data: Any,
                    flops: float, cfg: Any, env: dist.Env) -> Path:
    with budget.overhead_of("checkpoint"):
        return checkpoint.save(run.checkpoints, step, model, optimizer,
                               {"budget": budget.state_dict(), "data": data.state_dict(), "flops": flops,
                                "lr_peak": cfg.optim.lr}, env, keep_last=cfg.checkpoint.keep_last)


class Cadence:
    """Whether a validation or a checkpoint is due after a step (`eval.every_steps`, `checkpoint.every_steps`
    / `every_minutes` of training time). Neither is due once the budget is spent: the loop's tail does both."""

    def __init__(self, cfg: Any, budget: Budget) -> None:
        self.eval, self.checkpoint, self.budget = cfg.eval, cfg.checkpoint, budget
        self.last_checkpoint_seconds = budget.seconds

    def eval_due(self, step: int) -> bool:
        return bool(self.eval.every_steps and step % self.eval.every_steps == 0 and not self.budget.done())

    def checkpoint_due(self, step: int) -> bool:
        c = self.checkpoint
        due_steps = c.every_steps and step % c.every_steps == 0
        due_time = c.every_minutes and self.budget.seconds - self.last_checkpoint_seconds >= 60 * c.every_minutes
        return bool((due_steps or due_time) and not self.budget.done())

    def checkpointed(self) -> None:
        self.last_checkpoint_seconds = self.budget.seconds


def recover_non_finite(stats: StepStats, step: int, bad_in_row: int, last_good: Path | None, model: nn.Module,
                       optimizer: Any, budget: Budget, run: Run, env: dist.Env, max_bad_steps: int, who: str,
                       **log: Any) -> int:
    """After a non-finite step (train_step already dropped its gradients): restore the last good checkpoint
    if there is one, log it, and raise once more than `max_bad_steps` came in a row. Returns the new count of
    non-finite steps in a row. `log` adds fields to the event line."""
    bad_in_row += 1
    restored = None
    with budget.overhead_of("restore"):
        if last_good is not None:
            checkpoint.load(last_good, model, optimizer, env, restore_rng=False)
            restored = last_good.name
    run.log("event", step, event="non_finite", loss=stats.loss, grad_norm=stats.grad_norm, restored=restored, **log)
    if env.main:
        tqdm.write(f"{who}: step {step}: non-finite loss/grad ({stats.loss}, {stats.grad_norm}); skipped the "
                   f"batch{', restored ' + restored if restored else ''}")
    if bad_in_row > max_bad_steps:
        raise SlamError(f"{bad_in_row} non-finite steps in a row at step {step}; lower optim.lr or check the data "
                        f"(max_bad_steps={max_bad_steps})")
    return bad_in_row


def log_done(run: Run, step: int, budget: Budget, setup_s: float, flops: float, **val: Any) -> None:
    """The run's last metrics line (`val` names the validation result), then the loss plot."""
    run.log("event", step, event="done", train_seconds=budget.seconds, overhead=budget.overhead,
            setup_seconds=setup_s, flops=flops, tokens=budget.tokens, **val)
    run.plot()


# --- the run ------------------------------------------------------------------------------------------------
def prepare_run_folder(cfg: TrainConfig, env: dist.Env) -> tuple[Run, Path | None]:
    """Refuse to overwrite a run by accident; find the checkpoint to resume from."""
    run = Run(cfg.out, main=env.main)
    ckpts = run.checkpoints
    resume_from = None
    if cfg.resume:
        if env.main:
            for stale in checkpoint.cleanup(ckpts):
                print(f"slam train: removed {stale.name} (a checkpoint write that was interrupted)")
        dist.barrier()
        resume_from = checkpoint.latest(ckpts)
    elif checkpoint.latest(ckpts) is not None or run.final.exists():
        raise ConfigError(f"out: {cfg.out} already holds a run; pass resume=true to continue it or choose "
                          f"another out=")
    return run, resume_from


def train(cfg: TrainConfig, loss_fn: Callable | None = None) -> Path:
    """Run the recipe; returns the final model folder. `loss_fn(model, batch) -> (loss_sum, n_tokens)`
    defaults to slam.data.causal_lm_loss (tests pass a wrapper to inject faults)."""
    env = dist.init()
    try:
        return _train(cfg, env, loss_fn)
    finally:
        dist.shutdown()


def _train(cfg: TrainConfig, env: dist.Env, loss_fn: Callable | None) -> Path:
    from slam.model import count_parameters

    t_setup = time.perf_counter()
    if env.device.type == "cpu":
        # Denormal floats (underflow residue in the backward after a few updates) run ~100x slower on x86
        # CPUs: the bench model's steps went from ~1.5 s to ~10 s without this. Flushing them to zero is what
        # GPUs do in their fast paths anyway.
        torch.set_flush_denormal(True)
    seed_everything(cfg.seed)
    data_io.check_sources(cfg)
    run, resume_from = prepare_run_folder(cfg, env)
    run.write_config(cfg)
    run.write_provenance({"world_size": env.world, "resumed_from": str(resume_from) if resume_from else None})

    model, info = build_model(cfg, data_io.token_layout(cfg))
    model.to(env.device)
    data_io.prepare_model(model, env.device)
    n_params = count_parameters(model)
    layers, width = attention_width(model)
    if cfg.compile:
        compile_blocks(model)
    model = dist.wrap(model, cfg.dist.strategy, env)
    optimizer = build_optimizer(model, cfg.optim)
    budget = Budget.from_config(cfg.budget)
    accum = accumulation(cfg, env)
    train_data, val_data = data_io.loaders(cfg, info, env)
    loss_fn = loss_fn or data_io.loss_fn()
    amp = autocast(cfg, env.device)

    step = 0
    flops_total = 0.0
    if resume_from is not None:
        step, flops_total = resume_state(resume_from, model, optimizer, budget, train_data, run, env)
    elif cfg.resume and env.main:
        print(f"slam train: resume=true but {run.checkpoints} has no complete checkpoint; starting fresh")
    setup_s = time.perf_counter() - t_setup

    peak = peak_tflops(env.device, cfg.peak_tflops)
    last_good = checkpoint.latest(run.checkpoints)
    cadence = Cadence(cfg, budget)
    bad_in_row = 0
    tokens_window, pairs_window, seconds_window = 0, 0, 0.0
    bar = progress_bar(budget, env)
    model.train()

    def validate() -> float:
        with budget.overhead_of("eval"):
            loss, n = evaluate(model, val_data.batches(cfg.eval.batches), loss_fn, env, amp)
        run.log("val", step, loss=loss, tokens=n, flops=flops_total, progress=budget.progress(),
                train_hours=budget.seconds / 3600)
        return loss

    val_loss = float("nan")
    while not budget.done():
        lr = step_lr(cfg, optimizer, budget, step)
        first_compiled = cfg.compile and step == 0 and resume_from is None
        t0 = time.perf_counter()
        with budget.step():  # data loading is part of a training step's time
            micro = [train_data.next() for _ in range(accum)]
            stats = train_step(model, optimizer, micro, loss_fn, env, amp, cfg.optim.grad_clip, budget)
        dt = time.perf_counter() - t0
        if first_compiled:  # compile warm-up is not training time
            discount_compile(budget, dt)
        budget.add(steps=1, tokens=stats.tokens)
        step += 1
        if not stats.finite:
            bad_in_row = recover_non_finite(stats, step, bad_in_row, last_good, model, optimizer, budget, run, env,
                                            cfg.max_bad_steps, "slam train", skipped_batches=accum)
            continue
        bad_in_row = 0
        flops_total += batch_flops(n_params, stats.tokens, stats.pairs, layers, width)
        if not first_compiled:
            tokens_window += stats.tokens
            pairs_window += stats.pairs
            seconds_window += dt
        if step % cfg.log_every == 0 or budget.done() or step == 1:
            tok_s = tokens_window / seconds_window if seconds_window > 0 else None
            flops_s = (batch_flops(n_params, tokens_window, pairs_window, layers, width) / seconds_window
                       if seconds_window > 0 else None)
            mfu = flops_s / env.world / (peak * 1e12) if peak and flops_s else None
            run.log("train", step, loss=stats.loss, lr=lr, grad_norm=stats.grad_norm, tokens=budget.tokens,
                    tok_per_s=tok_s, flops=flops_total, mfu=mfu, progress=budget.progress(),
                    train_hours=budget.seconds / 3600)
            bar.set_description_str(
                f"step {step} | loss {stats.loss:.3f} | lr {lr:.2e}"
                + (f" | {tok_s / 1e3:.1f}k tok/s" if tok_s is not None else "")
                + (f" | MFU {100 * mfu:.1f}%" if mfu is not None else "")
                + eta_text(budget), refresh=False)
            tokens_window, pairs_window, seconds_window = 0, 0, 0.0
        advance(bar, budget)
        if cadence.eval_due(step):
            val_loss = validate()
        if cadence.checkpoint_due(step):
            last_good = save_checkpoint(run, step, model, optimizer, budget, train_data, flops_total, cfg, env)
            cadence.checkpointed()
    bar.close()

    val_loss = validate()
    last_good = save_checkpoint(run, step, model, optimizer, budget, train_data, flops_total, cfg, env)
    with budget.overhead_of("final"):
        final = _save_final(model, info, run, env, cfg, budget, step)
    log_done(run, step, budget, setup_s, flops_total, val_loss=val_loss)
    if env.main:
        print(f"slam train: {step} steps, {budget.tokens:,} tokens in {format_duration(budget.seconds)} of "
              f"training ({budget.kind} budget {100 * budget.progress():.0f}% spent; outside the budget: "
              f"setup {format_duration(setup_s)}, {overhead_text(budget)}); {flops_total:.3g} FLOPs on "
              f"{n_params:,} parameters; validation loss {val_loss:.4f}. Wrote {final} (model folder), "
              f"{run.folder}/metrics.jsonl, loss.png, TensorBoard events and checkpoints/{last_good.name}.")
    run.close()
    return final


def _save_final(model: nn.Module, info: Any, run: Run, env: dist.Env, cfg: TrainConfig, budget: Budget,
                step: int) -> Path:
    from slam.model import save_model

    bare = plain_model(model, env)
    if bare is not None:
        info.extra.update({"train": {"run": str(run.folder), "steps": step, "tokens": budget.tokens,
                                     "train_seconds": round(budget.seconds, 1)}})
        if cfg.data.kind == "text":  # a text LM folder is complete with its tokenizer (a TWIST base later)
            info.text_tokenizer = "."
        save_model(bare, info, run.final)
        if cfg.data.kind == "text":
            from transformers import AutoTokenizer

            AutoTokenizer.from_pretrained(cfg.data.text_tokenizer).save_pretrained(run.final)
    dist.barrier()
    return run.final


def plain_model(model: nn.Module, env: dist.Env) -> nn.Module | None:
    """The model to write `final/` from, on the main process (None elsewhere): the unwrapped module, or under
    FSDP a plain CPU copy rebuilt from the full state. Every rank must call it (gathering is a collective)."""
    full = dist.model_state(model)  # collective under FSDP
    if not env.main:
        return None
    bare = dist.unwrap(model)
    if dist.is_fsdp(model):  # sharded parameters: rebuild a plain CPU copy to write
        from transformers import AutoModelForCausalLM

        bare = AutoModelForCausalLM.from_config(bare.config)
        bare.load_state_dict(full)
    return bare
