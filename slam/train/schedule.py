"""Learning-rate schedules as functions of budget progress p in [0, 1].

The budget (time, tokens or steps) decides p, and the LR is read off p, so the warmup and the anneal end
exactly when the budget does whatever the machine's speed: a 24 h run on a slow GPU still reaches min_lr
at hour 24 instead of being cut off half-way down a cosine sized for a guessed number of steps.

Warmup is linear in p up to `warmup` (1%), and also linear in steps up to `warmup_min_steps` (100): the LR
is the minimum of that ramp and the decay curve, so a short budget still warms up over 100 steps (as
slamkit's max(100 steps, 1%)) and then joins the decay curve where it meets it, without a jump.

    lr = lr_at(cfg.schedule, peak=1e-3, p=0.5, step=8000)
"""

from __future__ import annotations

import math

from slam.train.config import Schedule


def decay_factor(cfg: Schedule, p: float, peak: float) -> float:
    """The post-warmup curve at progress p (value = an LR), before the warmup ramp is applied."""
    p = min(max(p, 0.0), 1.0)
    w = cfg.warmup
    if cfg.name == "constant":
        return peak
    if cfg.name == "cosine":
        q = 0.0 if p <= w else (p - w) / (1 - w)
        return cfg.min_lr + (peak - cfg.min_lr) * 0.5 * (1 + math.cos(math.pi * q))
    if cfg.name == "wsd":
        start = 1 - cfg.cooldown
        if p <= start:
            return peak
        # Linear cooldown to min_lr over the last `cooldown` share (Hagele et al. 2024 find linear ~ 1-sqrt).
        return peak + (cfg.min_lr - peak) * (p - start) / cfg.cooldown
    if cfg.name == "inverse_sqrt":
        # TWIST / fairseq: lr = peak * sqrt(warmup / t) after warmup; here t is budget progress.
        if p <= max(w, 1e-12):
            return peak
        return max(cfg.min_lr, peak * math.sqrt(max(w, 1e-12) / p))
    raise ValueError(f"unknown schedule {cfg.name!r}")


def lr_at(cfg: Schedule, peak: float, p: float, step: int) -> float:
    """LR for the optimiser step numbered `step` (0-based) taken at budget progress p."""
    ramp = math.inf
    if cfg.warmup > 0:
        ramp = min(ramp, peak * p / cfg.warmup)
    if cfg.warmup_min_steps > 0:
        ramp = min(ramp, peak * (step + 1) / cfg.warmup_min_steps)
    return min(ramp, decay_factor(cfg, p, peak))
