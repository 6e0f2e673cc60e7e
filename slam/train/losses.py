"""Preference losses on summed completion log-probs, each a small pure function with its paper and a
hand-worked test (tests/test_dpo.py).

DPO (Rafailov et al. 2023, arXiv 2305.18290, eq. 7), per pair (x, y_w chosen, y_l rejected):

    L = -log sigmoid( beta * [ (log pi(y_w|x) - log ref(y_w|x)) - (log pi(y_l|x) - log ref(y_l|x)) ] )
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


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float = 0.1) -> DPOOutput:
    """The DPO loss of the module docstring on summed completion log-probs ([B] each).

    Worked example (tests/test_dpo.py): policy -1 / -2, reference -1.5 / -1.5, beta 0.1 -> rewards +0.05 /
    -0.05, margin 0.1, loss = log(1 + e^-0.1) = 0.644397. logsigmoid keeps it finite for any margin.
    """
    logits = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    losses = -F.logsigmoid(beta * logits)
    return DPOOutput(losses, (beta * (policy_chosen - ref_chosen)).detach(),
                     (beta * (policy_rejected - ref_rejected)).detach())


