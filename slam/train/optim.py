"""Optimisers of the recipe: AdamW (the paper), AdEMAMix (its runner-up) and Muon (+ AdamW for the rest).

`build_optimizer(model, cfg)` returns one object with the torch.optim interface (`step`, `zero_grad`,
`param_groups`, `state_dict`, `load_state_dict`), and `set_lr(opt, lr, progress)` is the only thing the
loop calls per step: the schedule lives outside the optimiser, as a function of budget progress.

Parameter groups: weight decay applies to matrices (ndim >= 2) only, never to norms and biases.
Muon gets the hidden 2-D matrices of the transformer blocks; embeddings, the LM head, norms and biases stay
on AdamW (Muon's orthogonalised update is meant for hidden linear maps, Jordan et al. 2024).
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import torch
from torch import nn

from slam.train.config import Optim


class AdEMAMix(torch.optim.Optimizer):
    """AdEMAMix (Pagliardini et al. 2024, arXiv 2409.03137): Adam plus a slow EMA of the gradient.

    update = (m1_hat + alpha * m2) / (sqrt(nu_hat) + eps) + weight_decay * theta, with m2 an EMA of decay
    beta3 (0.9999) and no bias correction. alpha and beta3 ramp up over `warmup` of the budget progress
    (the paper's schedulers: linear for alpha, the half-life-linear one for beta3), which the loop feeds
    through `group["progress"]`.
    """

    def __init__(self, params: Iterable, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 beta3: float = 0.9999, alpha: float = 5.0, eps: float = 1e-8, weight_decay: float = 0.0,
                 warmup: float = 1.0) -> None:
        defaults = dict(lr=lr, betas=tuple(betas), beta3=beta3, alpha=alpha, eps=eps,
                        weight_decay=weight_decay, warmup=warmup, progress=0.0)
        super().__init__(params, defaults)

    @staticmethod
    def ramped(group: dict) -> tuple[float, float]:
        """(alpha, beta3) at the group's progress."""
        beta1 = group["betas"][0]
        t = min(1.0, group["progress"] / group["warmup"]) if group["warmup"] > 0 else 1.0
        alpha = group["alpha"] * t
        b3 = group["beta3"]
        if t >= 1.0 or b3 <= beta1:
            return alpha, b3
        # Interpolate linearly in the half-life 1/log(beta): beta3 goes from beta1 to its final value.
        log_b1, log_b3 = math.log(beta1), math.log(b3)
        beta3 = math.exp(log_b1 * log_b3 / ((1 - t) * log_b3 + t * log_b1))
        return alpha, min(beta3, b3)

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            alpha, beta3 = self.ramped(group)
            lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["m1"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["m2"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["nu"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                t = float(state["step"])
                m1, m2, nu = state["m1"], state["m2"], state["nu"]
                m1.lerp_(g, 1 - beta1)
                m2.lerp_(g, 1 - beta3)
                nu.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                denom = (nu / (1 - beta2 ** t)).sqrt_().add_(eps)
                update = (m1 / (1 - beta1 ** t)).add_(m2, alpha=alpha).div_(denom)
                if wd:
                    p.mul_(1 - lr * wd)
                p.add_(update, alpha=-lr)
        return loss


class Optimizers:
    """Several optimisers over disjoint parameters, driven as one (Muon + AdamW)."""

    def __init__(self, *optimizers: torch.optim.Optimizer) -> None:
        self.optimizers = [o for o in optimizers if o is not None]

    @property
    def param_groups(self) -> list[dict]:
        return [g for o in self.optimizers for g in o.param_groups]

    def step(self) -> None:
        for o in self.optimizers:
            o.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.optimizers:
            o.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {str(i): o.state_dict() for i, o in enumerate(self.optimizers)}

    def load_state_dict(self, state: dict) -> None:
        for i, o in enumerate(self.optimizers):
            o.load_state_dict(state[str(i)])


def _embedding_params(model: nn.Module) -> set[int]:
    ids = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None:
        ids.update(id(p) for p in head.parameters())
    return ids


def _fused_ok(params: list[nn.Parameter]) -> bool:
    devs = {p.device.type for p in params}
    return bool(params) and devs <= {"cuda", "cpu"} and all(p.dtype == torch.float32 for p in params)


def _adamw(params: list[nn.Parameter], cfg: Optim, lr: float) -> torch.optim.AdamW:
    decay = [p for p in params if p.ndim >= 2]
    rest = [p for p in params if p.ndim < 2]
    groups = [g for g in ({"params": decay, "weight_decay": cfg.weight_decay},
                          {"params": rest, "weight_decay": 0.0}) if g["params"]]
    kwargs: dict[str, Any] = dict(lr=lr, betas=tuple(cfg.betas), eps=cfg.eps)
    if cfg.fused and _fused_ok(params):
        kwargs["fused"] = True
    else:
        kwargs["foreach"] = True
    return torch.optim.AdamW(groups, **kwargs)


def build_optimizer(model: nn.Module, cfg: Optim) -> torch.optim.Optimizer | Optimizers:
    params = [p for p in dict.fromkeys(model.parameters()) if p.requires_grad]
    if cfg.name == "adamw":
        return _adamw(params, cfg, cfg.lr)
    if cfg.name == "ademamix":
        decay = [p for p in params if p.ndim >= 2]
        rest = [p for p in params if p.ndim < 2]
        groups = [g for g in ({"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": rest, "weight_decay": 0.0}) if g["params"]]
        return AdEMAMix(groups, lr=cfg.lr, betas=tuple(cfg.betas), beta3=cfg.beta3, alpha=cfg.alpha,
                        eps=cfg.eps, warmup=cfg.ademamix_warmup)
    if cfg.name == "muon":
        emb = _embedding_params(model)
        hidden = [p for p in params if p.ndim == 2 and id(p) not in emb]
        rest = [p for p in params if not (p.ndim == 2 and id(p) not in emb)]
        # "match_rms_adamw" scales Muon's orthogonal update to AdamW's RMS (0.2 * sqrt(max dim), Moonlight),
        # so one peak LR and one schedule serve both optimisers.
        muon = torch.optim.Muon(hidden, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                momentum=cfg.muon_momentum, adjust_lr_fn="match_rms_adamw") if hidden else None
        return Optimizers(muon, _adamw(rest, cfg, cfg.lr) if rest else None)
    raise ValueError(f"unknown optimiser {cfg.name!r}")


def set_lr(optimizer: torch.optim.Optimizer | Optimizers, lr: float, progress: float) -> None:
    """Apply the schedule's LR (and the budget progress, for AdEMAMix's ramps) to every group."""
    for group in optimizer.param_groups:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr
        if "progress" in group:
            group["progress"] = progress
