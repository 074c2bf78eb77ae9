"""dpo_loss against hand-computed values of the DPO, cDPO, IPO and hinge formulas; sequence_logps."""
import math

import pytest
import torch

from tasks.dpo_loss import dpo_loss, sequence_logps

# pi_c, pi_r, ref_c, ref_r: logits = (pi_c - pi_r) - (ref_c - ref_r) = 2 - 0.5 = 1.5; beta * logits = 0.75
LOGPS = [torch.tensor([v]) for v in (-1.0, -3.0, -2.0, -2.5)]
BETA = 0.5


def _softplus(x):
    return math.log1p(math.exp(x))


@pytest.mark.parametrize("loss_type,smoothing,expected", [
    ("sigmoid", 0.0, _softplus(-0.75)),  # -log sigmoid(beta * logits) (DPO, eq. 7)
    ("sigmoid", 0.1, 0.9 * _softplus(-0.75) + 0.1 * _softplus(0.75)),  # cDPO
    ("ipo", 0.0, (1.5 - 1 / (2 * BETA)) ** 2),  # IPO, eq. 17: (logits - 1/(2 beta))^2 = 0.25
    ("hinge", 0.0, max(0.0, 1 - 0.75)),  # relu(1 - beta * logits)
])
def test_values(loss_type, smoothing, expected):
    losses, chosen, rejected = dpo_loss(*LOGPS, beta=BETA, loss_type=loss_type, label_smoothing=smoothing)
    assert losses.shape == (1,) and math.isclose(losses.item(), expected, rel_tol=1e-6)
    assert math.isclose(chosen.item(), BETA * (-1.0 + 2.0)) and math.isclose(rejected.item(), BETA * (-3.0 + 2.5))


def test_gradient_direction_rewards_detached_and_stability():
    pc = torch.tensor([-1.0, -50.0], requires_grad=True)
    pr = torch.tensor([-3.0, 4000.0], requires_grad=True)
    ref = torch.zeros(2)
    losses, chosen, rejected = dpo_loss(pc, pr, ref, ref, beta=0.1)
    assert torch.isfinite(losses).all() and math.isclose(losses[1].item(), 0.1 * 4050, rel_tol=1e-5)
    losses.sum().backward()
    assert (pc.grad < 0).all() and (pr.grad > 0).all()  # raising the chosen / lowering the rejected lowers the loss
    assert not chosen.requires_grad and not rejected.requires_grad
    with pytest.raises(ValueError, match="loss_type"):
        dpo_loss(*LOGPS, loss_type="kto")
    with pytest.raises(ValueError, match="label_smoothing"):
        dpo_loss(*LOGPS, loss_type="ipo", label_smoothing=0.1)


def test_sequence_logps_is_a_masked_sum():
    logits = torch.randn(2, 4, 6, generator=torch.Generator().manual_seed(0))
    targets = torch.tensor([[1, -100, 3, -100], [0, 5, 2, -100]])
    logp = torch.log_softmax(logits, dim=-1)
    expect = torch.tensor([logp[0, 0, 1] + logp[0, 2, 3], logp[1, 0, 0] + logp[1, 1, 5] + logp[1, 2, 2]])
    token_losses = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, ignore_index=-100,
                                                     reduction="none")
    assert torch.allclose(sequence_logps(token_losses, targets), expect)
    assert torch.allclose(sequence_logps(token_losses, targets, average=True), expect / torch.tensor([2.0, 3.0]))
