"""Budget-aware packed pre-training: `train(cfg)` turns units datasets (or text, or both interleaved) into a
language model within a budget.

Reads top to bottom: set up (process group, run folder, model, data, optimiser, budget), maybe resume, then
the shared loop of slam.train.engine (LR from budget progress -> accumulate micro-batches -> one all-reduce
-> clip -> step -> log / validate / checkpoint) until the budget is spent, then write `final/`. What is
pre-training's own is below: building the model (TWIST or random init), the packed loaders and the
token-weighted causal LM loss (slam.train.data), and a log line with tokens/s and MFU.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from slam.errors import ConfigError, SlamError
from slam.model import count_parameters, random_init, twist_init
from slam.model_folder import save_model
from slam.train import data as train_data
from slam.train import dist
from slam.train.budget import Budget
from slam.train.config import TrainConfig
from slam.train.engine import (Session, StepStats, accumulation, autocast, compile_blocks, evaluate, log_done,
                               overhead_text, plain_model, prepare_run_folder, resume_state, run_folder_lock,
                               run_loop, seed_everything)
from slam.train.flops import attention_width, batch_flops, peak_tflops
from slam.train.memory import plan_for_run
from slam.train.optim import build_optimizer
from slam.train.run import Run
from slam.utils import format_duration


# --- setup --------------------------------------------------------------------------------------------------
def build_model(cfg: TrainConfig, layout: Any) -> tuple[nn.Module, Any]:
    """TWIST init from `model.base`, or random init from `model.config`, with the data's token layout
    (a SlamInfo); fp32 master weights."""
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


# --- the run ------------------------------------------------------------------------------------------------
def train(cfg: TrainConfig, loss_fn: Callable | None = None) -> Path:
    """Run the recipe; returns the final model folder. `loss_fn(model, batch) -> (loss_sum, n_tokens)`
    defaults to slam.data.causal_lm_loss (tests pass a wrapper to inject faults)."""
    env = dist.init()
    try:
        with run_folder_lock(cfg, env, "train"):
            return _train(cfg, env, loss_fn)
    finally:
        dist.shutdown()


def _train(cfg: TrainConfig, env: dist.Env, loss_fn: Callable | None) -> Path:
    t_setup = time.perf_counter()
    if env.device.type == "cpu":
        # Denormal floats (underflow residue in the backward after a few updates) run ~100x slower on x86
        # CPUs: the bench model's steps went from ~1.5 s to ~10 s without this. Flushing them to zero is what
        # GPUs do in their fast paths anyway.
        torch.set_flush_denormal(True)
    seed_everything(cfg.seed)
    train_data.check_sources(cfg)
    run, resume_from = prepare_run_folder(cfg, env)
    run.write_config(cfg)
    run.write_provenance({"world_size": env.world, "resumed_from": str(resume_from) if resume_from else None})

    model, info = build_model(cfg, train_data.token_layout(cfg))
    plan = plan_for_run(cfg, model, env)  # ConfigError (exit 2) when batch.micro cannot fit the device
    if env.main:
        print(f"slam train: {plan}")
    model.to(env.device)
    train_data.prepare_model(model, env.device)
    if cfg.gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    n_params = count_parameters(model)
    layers, width = attention_width(model)
    if cfg.compile:
        compile_blocks(model)
    model = dist.wrap(model, cfg.dist.strategy, env)
    optimizer = build_optimizer(model, cfg.optim)
    budget = Budget.from_config(cfg.budget)
    accum = accumulation(cfg, env)
    data, val_data = train_data.loaders(cfg, info, env)
    s = Session(cfg, env, run, model, optimizer, budget, data, loss_fn or train_data.loss_fn(),
                autocast(cfg, env.device), accum, "slam train")
    if resume_from is not None:
        s.step, s.flops = resume_state(resume_from, model, optimizer, budget, data, run, env)
    elif cfg.resume and env.main:
        print(f"slam train: resume=true but {run.checkpoints} has no complete checkpoint; starting fresh")
    s.last_good = resume_from
    setup_s = time.perf_counter() - t_setup

    val_loss = run_loop(s, Pretraining(s, val_data, n_params, layers, width, peak_tflops(env.device, cfg.peak_tflops)))
    with budget.overhead_of("final"):
        final = _save_final(model, info, run, env, cfg, budget, s.step)
    log_done(run, s.step, budget, setup_s, s.flops, val_loss=val_loss)
    if env.main:
        print(f"slam train: {s.step} steps, {budget.tokens:,} tokens in {format_duration(budget.seconds)} of "
              f"training ({budget.kind} budget {100 * budget.progress():.0f}% spent; outside the budget: "
              f"setup {format_duration(setup_s)}, {overhead_text(budget)}); {s.flops:.3g} FLOPs on "
              f"{n_params:,} parameters; validation loss {val_loss:.4f}. Wrote {final} (model folder), "
              f"{run.folder}/metrics.jsonl, loss.png, TensorBoard events and checkpoints/{s.last_good.name}.")
    run.close()
    return final


class Pretraining:
    """Pre-training's side of the loop (slam.train.engine.Stage): packed token micro-batches, tokens/s and
    MFU in the log, the token-weighted validation loss."""

    def __init__(self, s: Session, val_data: train_data.ValData, n_params: int, layers: int, width: int,
                 peak: float | None) -> None:
        self.s, self.val_data, self.n_params, self.layers, self.width, self.peak = (s, val_data, n_params, layers,
                                                                                    width, peak)

    def batches(self) -> list[dict]:
        return [self.s.data.next() for _ in range(self.s.accum)]

    def finish(self, stats: StepStats) -> tuple[int, float, dict[str, float]]:
        flops = batch_flops(self.n_params, stats.tokens, stats.pairs, self.layers, self.width)
        return stats.tokens, flops, {"tokens": stats.tokens, "pairs": stats.pairs}

    def log(self, step: int, stats: StepStats, lr: float, window: dict[str, float], seconds: float
            ) -> tuple[dict[str, Any], str]:
        s = self.s
        tok_s = window["tokens"] / seconds if seconds > 0 else None
        flops_s = (batch_flops(self.n_params, window["tokens"], window["pairs"], self.layers, self.width) / seconds
                   if seconds > 0 else None)
        mfu = flops_s / s.env.world / (self.peak * 1e12) if self.peak and flops_s else None
        fields = dict(loss=stats.loss, lr=lr, grad_norm=stats.grad_norm, tokens=s.budget.tokens, tok_per_s=tok_s,
                      flops=s.flops, mfu=mfu, progress=s.budget.progress(), train_hours=s.budget.seconds / 3600)
        desc = (f"step {step} | loss {stats.loss:.3f} | lr {lr:.2e}"
                + (f" | {tok_s / 1e3:.1f}k tok/s" if tok_s is not None else "")
                + (f" | MFU {100 * mfu:.1f}%" if mfu is not None else ""))
        return fields, desc

    def validate(self, step: int) -> float:
        s = self.s
        with s.budget.overhead_of("eval"):
            loss, n = evaluate(s.model, self.val_data.batches(s.cfg.eval.batches), s.loss_fn, s.env, s.amp)
        s.run.log("val", step, loss=loss, tokens=n, flops=s.flops, progress=s.budget.progress(),
                  train_hours=s.budget.seconds / 3600)
        return loss


def _save_final(model: nn.Module, info: Any, run: Run, env: dist.Env, cfg: TrainConfig, budget: Budget,
                step: int) -> Path:
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


