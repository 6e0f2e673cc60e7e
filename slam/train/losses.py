"""Preference losses on summed completion log-probs, each a small pure function with its paper and a
hand-worked test (tests/test_dpo.py).

With h = (log pi(y_w|x) - log ref(y_w|x)) - (log pi(y_l|x) - log ref(y_l|x)), the margin of log-ratios of
a pair (x, y_w chosen, y_l rejected), summed over the completion tokens, and beta the recipe's dpo.beta:

    sigmoid  DPO (Rafailov et al. 2023, arXiv 2305.18290, eq. 7):          L = -log sigmoid(beta * h)
    ipo      IPO (Azar et al. 2023, arXiv 2310.12036, eq. 17, tau = beta):  L = (h - 1 / (2 * beta))^2
    hinge    SLiC / RSO hinge (Zhao et al. 2023, arXiv 2305.10425; Liu et al. 2023, arXiv 2309.06657,
             eq. 9, gamma = 1 / beta):                                      L = max(0, 1 - beta * h)

IPO regresses the margin to a fixed target 1 / (2 beta) instead of pushing it without bound, so it does not
overfit a preference the data states with certainty; hinge stops pushing once beta * h >= 1. The log-probs
are summed as in the papers (TRL's `ipo` averages them over tokens instead; the formula is the same).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class DPOOutput:
    losses: torch.Tensor
    """[B] per-pair loss -log sigmoid(beta * margin of log-ratios)."""
    chosen_rewards: torch.Tensor
    """[B] beta * (log pi(chosen) - log ref(chosen)), detached."""
    rejected_rewards: torch.Tensor
    """[B] beta * (log pi(rejected) - log ref(rejected)), detached."""


LOSSES = ("sigmoid", "ipo", "hinge")


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float = 0.1, loss: str = "sigmoid") -> DPOOutput:
    """The preference loss `loss` of the module docstring on summed completion log-probs ([B] each).

    Worked example (tests/test_dpo.py, tests/test_interop_options.py): policy -1 / -2, reference -1.5 /
    -1.5, beta 0.1 -> h = 0.5 - (-0.5) = 1, rewards +0.05 / -0.05; sigmoid: log(1 + e^-0.1) = 0.644397
    (logsigmoid keeps it finite for any margin); ipo: (1 - 5)^2 = 16; hinge: max(0, 1 - 0.1) = 0.9.
    """
    logits = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    if loss == "sigmoid":
        losses = -F.logsigmoid(beta * logits)
    elif loss == "ipo":
        losses = (logits - 1 / (2 * beta)) ** 2
    elif loss == "hinge":
        losses = torch.relu(1 - beta * logits)
    else:
        raise ValueError(f"loss {loss!r}: expected one of {', '.join(LOSSES)}")
    return DPOOutput(losses, (beta * (policy_chosen - ref_chosen)).detach(),
                     (beta * (policy_rejected - ref_rejected)).detach())


