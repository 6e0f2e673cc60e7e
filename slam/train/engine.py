"""The training engine every stage shares: one optimiser step, validation, the loop around them, and its
bookkeeping (budget-driven LR, cadence of validation and checkpoints, non-finite recovery, resume, progress).

A stage (slam.train.pretrain, slam.train.dpo) sets up its model, data and loss, then hands `run_loop` a
`Session` (what every loop needs) and a `Stage` (what differs: where micro-batches come from, what a step
counts, what its log line says, how it validates). The loop reads top to bottom:

    while budget left: LR from budget progress -> accumulate micro-batches -> one all-reduce -> clip -> step
                       -> log / validate / checkpoint when due
    then: validate, checkpoint

Loss normalisation: every micro-batch's backward runs on its summed loss (token NLLs, or DPO pair losses);
after accumulation the gradients are scaled by world / (count of the whole step on all ranks). That is the
exact mean over the step however the items fall into micro-batches and ranks, so 2 processes x accumulation
A match 1 process x accumulation 2A (tested), and no micro-batch with few tokens is over-weighted.
"""

from __future__ import annotations

import math
import random
import shutil
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from slam.errors import ConfigError, SlamError
from slam.lock import lock_output
from slam.train import checkpoint, dist
from slam.train.budget import Budget
from slam.train.config import RunConfig
from slam.train.flops import doc_pairs
from slam.train.optim import set_lr
from slam.train.run import Run
from slam.train.schedule import lr_at
from slam.utils import format_duration


# --- setup pieces -------------------------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def autocast(cfg: RunConfig, device: torch.device):
    """bf16 autocast on GPU (the paper), fp32 on CPU unless asked; weights and optimiser stay fp32."""
    use_bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")
    return (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if use_bf16 else nullcontext


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


# --- bookkeeping around the steps ---------------------------------------------------------------------------
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
    dropped = run.rewind(step, redo_val=budget.done())  # resumed at the end: the tail validates again
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



def refuse_finished_run(cfg: RunConfig) -> None:
    """Refuse to overwrite a run by accident, before anything is written into its folder."""
    out = Path(cfg.out)
    if not cfg.resume and (checkpoint.latest(out / "checkpoints") is not None or (out / "final").exists()):
        raise ConfigError(f"out: {cfg.out} already holds a run; pass resume=true to continue it or choose "
                          f"another out=")


@contextmanager
def run_folder_lock(cfg: RunConfig, env: dist.Env, who: str) -> Iterator[None]:
    """Hold the run folder for the whole run: refuse a folder that already holds a run, then take its lock
    (one writer at a time: a second `slam train` into the same folder is refused with the holder's pid; the
    kernel releases the lock when the process ends in any way). Only the main process locks: the other ranks
    of a torchrun job write into the same folder under its lock."""
    refuse_finished_run(cfg)
    if not env.main:
        yield
        return
    with lock_output(cfg.out, who):
        yield


def prepare_run_folder(cfg: RunConfig, env: dist.Env) -> tuple[Run, Path | None]:
    """The run folder (metrics, TensorBoard) and the checkpoint to resume from, if any."""
    # checked again under the lock: a run that finished between run_folder_lock's first check and taking the
    # lock would otherwise be overwritten
    refuse_finished_run(cfg)
    run = Run(cfg.out, main=env.main)
    ckpts = run.checkpoints
    resume_from = None
    if cfg.resume:
        if env.main:
            for stale in checkpoint.cleanup(ckpts):
                print(f"slam: removed {stale.name} (a checkpoint write that was interrupted)")
            # final/ is written to a temp sibling and renamed (slam.utils.atomic_dir): a kill in the middle
            # leaves slam's own `.final.*.tmp` (or `.final.old` from a replace), never anything else
            for stale in [*run.folder.glob(f".{run.final.name}.*.tmp"), run.folder / f".{run.final.name}.old"]:
                if stale.is_dir():
                    shutil.rmtree(stale, ignore_errors=True)
                    print(f"slam: removed {stale.name} (a final/ write that was interrupted)")
        dist.barrier()
        # the newest checkpoint that verifies (sizes and sha256 of its files): a damaged newest one, e.g. a
        # disk that filled during its write, is skipped with its reason and the run resumes from the one before
        resume_from, skipped = checkpoint.resume_point(ckpts)
        if env.main:
            for reason in skipped:
                print(f"slam: skipping a damaged checkpoint: {reason}", file=sys.stderr)
        if resume_from is None and skipped:
            raise SlamError(f"{ckpts}: no whole checkpoint to resume from ({'; '.join(skipped)})")
        if skipped and env.main:
            print(f"slam: resuming from {resume_from.name}", file=sys.stderr)
    return run, resume_from


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


# --- the loop -----------------------------------------------------------------------------------------------
@dataclass
class Session:
    """What every training loop works on, set up by the stage."""

    cfg: RunConfig
    env: dist.Env
    run: Run
    model: nn.Module
    optimizer: Any
    budget: Budget
    data: Any
    """The training data position (state_dict / load_state_dict), saved in every checkpoint."""
    loss_fn: Callable
    """loss_fn(model, batch) -> (summed loss, count): see train_step."""
    amp: Callable
    accum: int
    """Micro-batches per process per optimiser step."""
    who: str
    """The command, for messages ("slam train")."""
    step: int = 0
    flops: float = 0.0
    last_good: Path | None = None
    """Newest complete checkpoint: what a non-finite step restores."""


class Stage(Protocol):
    """What differs between stages: the loop calls these, in this order, every step."""

    def batches(self) -> list[dict]:
        """This process's micro-batches for one optimiser step, on the device."""

    def finish(self, stats: StepStats) -> tuple[int, float, dict[str, float]]:
        """After the step (every rank, finite or not): (tokens to count against the budget, FLOPs of the step,
        counters to add to the log window)."""

    def log(self, step: int, stats: StepStats, lr: float, window: dict[str, float], seconds: float
            ) -> tuple[dict[str, Any], str]:
        """The train metrics line (fields) and the progress bar's description."""

    def validate(self, step: int) -> Any:
        """Validate now (logs its own line); the result is returned by run_loop after the last step."""


def run_loop(s: Session, stage: Stage) -> Any:
    """Train until the budget is spent; then validate and checkpoint once more. Returns the last validation."""
    cadence = Cadence(s.cfg, s.budget)
    bad_in_row = 0
    window: dict[str, float] = {}
    seconds = 0.0
    first = True
    bar = progress_bar(s.budget, s.env)
    s.model.train()
    while not s.budget.done():
        lr = step_lr(s.cfg, s.optimizer, s.budget, s.step)
        t0 = time.perf_counter()
        with s.budget.step():  # data loading is part of a training step's time
            micro = stage.batches()
            stats = train_step(s.model, s.optimizer, micro, s.loss_fn, s.env, s.amp, s.cfg.optim.grad_clip,
                               s.budget)
        dt = time.perf_counter() - t0
        compiled_now = s.cfg.compile and first  # every process compiles on its first step, resumed or not
        first = False
        if compiled_now:  # compile warm-up is not training time
            discount_compile(s.budget, dt)
        tokens, flops, counts = stage.finish(stats)
        s.budget.add(steps=1, tokens=tokens)
        s.step += 1
        if not stats.finite:
            bad_in_row = recover_non_finite(stats, s.step, bad_in_row, s.last_good, s.model, s.optimizer, s.budget,
                                            s.run, s.env, s.cfg.max_bad_steps, s.who, skipped_batches=s.accum)
            continue
        bad_in_row = 0
        s.flops += flops
        if not compiled_now:
            for k, v in counts.items():
                window[k] = window.get(k, 0) + v
            seconds += dt
        if s.step % s.cfg.log_every == 0 or s.budget.done() or s.step == 1:
            fields, desc = stage.log(s.step, stats, lr, window, seconds)
            s.run.log("train", s.step, **fields)
            bar.set_description_str(desc + eta_text(s.budget), refresh=False)
            window, seconds = {}, 0.0
        advance(bar, s.budget)
        if cadence.eval_due(s.step):
            stage.validate(s.step)
        if cadence.checkpoint_due(s.step):
            s.last_good = save_checkpoint(s.run, s.step, s.model, s.optimizer, s.budget, s.data, s.flops, s.cfg,
                                          s.env)
            cadence.checkpointed()
    bar.close()
    val = stage.validate(s.step)
    s.last_good = save_checkpoint(s.run, s.step, s.model, s.optimizer, s.budget, s.data, s.flops, s.cfg, s.env)
    return val
