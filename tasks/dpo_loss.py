"""The DPO loss (a pure function, TRL's signature) and the per-row log-probs it is fed with.

With the policy and reference log-probs of the chosen (c) and rejected (r) responses, summed over their
tokens, and ``logits = (pi_c - pi_r) - (ref_c - ref_r)``:
- ``sigmoid`` (DPO, Rafailov et al. 2023, eq. 7; with ``label_smoothing`` = eps it is cDPO, which assumes the
  labels are flipped with probability eps):
  ``-(1 - eps) * log sigmoid(beta * logits) - eps * log sigmoid(-beta * logits)``
- ``ipo`` (Azar et al. 2023, eq. 17): ``(logits - 1 / (2 * beta)) ** 2``; the paper (and TRL) feed it
  log-probs averaged over each response's tokens, not summed: pass ``average=True`` to ``sequence_logps``.
- ``hinge`` (SLiC, Zhao et al. 2023): ``relu(1 - beta * logits)``.
Rewards are the implicit ones, ``beta * (pi - ref)`` per side, detached (they are metrics, not losses).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

LOSS_TYPES = ("sigmoid", "ipo", "hinge")


def dpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
             ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor, beta: float = 0.1,
             loss_type: str = "sigmoid", label_smoothing: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(losses, chosen_rewards, rejected_rewards), each (B,), from (B,) log-probs; see the module docstring."""
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"--loss_type={loss_type!r} is not one of {', '.join(LOSS_TYPES)}")
    if beta <= 0:
        raise ValueError(f"--beta must be > 0, got {beta}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"--label_smoothing must be in [0, 0.5) (cDPO's flip probability), got {label_smoothing}")
    if label_smoothing and loss_type != "sigmoid":
        raise ValueError(f"--label_smoothing applies to loss_type=sigmoid (cDPO), not {loss_type!r}")
    logits = (policy_chosen_logps - policy_rejected_logps) - (ref_chosen_logps - ref_rejected_logps)
    if loss_type == "sigmoid":
        # logsigmoid, not log(sigmoid(.)): stays finite for large |beta * logits|
        losses = (-(1 - label_smoothing) * F.logsigmoid(beta * logits)
                  - label_smoothing * F.logsigmoid(-beta * logits))
    elif loss_type == "ipo":
        losses = (logits - 1 / (2 * beta)) ** 2
    else:
        losses = torch.relu(1 - beta * logits)
    chosen_rewards = beta * (policy_chosen_logps - ref_chosen_logps).detach()
    rejected_rewards = beta * (policy_rejected_logps - ref_rejected_logps).detach()
    return losses, chosen_rewards, rejected_rewards


def sequence_logps(token_losses: torch.Tensor, targets: torch.Tensor, average: bool = False) -> torch.Tensor:
    """(N,) sum (or mean) over each row of log p(targets[t]), where targets != -100.

    token_losses (N, T): the per-position cross-entropy -log p(targets[t]) that the model returns with
    loss_reduction="none" (fp32, 0 where ignored), so no (N, T, V) logits are ever kept; targets (N, T) aligned
    as in dataset.sft's batches (a DPOBatch's rows: the chosen sides, then the rejected ones).
    """
    mask = targets != -100
    total = -(token_losses.float() * mask).sum(-1)
    return total / mask.sum(-1).clamp(min=1) if average else total
