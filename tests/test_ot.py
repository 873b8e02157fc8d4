"""The 2D-to-1D OT loss (Eq. 12-13) against POT's exact solver, and its gradients."""

import ot
import pytest
import torch

from benchmark.ot import ot_loss


def exact_cost(x: torch.Tensor, z: torch.Tensor) -> float:
    costs = []
    for xb, zb in zip(x.double(), z.double()):
        a = torch.full((xb.shape[0],), 1.0 / xb.shape[0], dtype=torch.float64)
        b = torch.full((zb.shape[0],), 1.0 / zb.shape[0], dtype=torch.float64)
        costs.append(float(ot.emd2(a, b, ot.dist(xb, zb, metric="sqeuclidean"))))
    return sum(costs) / len(costs)


@pytest.mark.parametrize("grad", ["envelope", "autodiff"])
def test_ot_loss_matches_exact_solver_and_reaches_z(grad):
    torch.manual_seed(0)
    x = torch.randn(3, 16, 4)
    z = torch.randn(3, 8, 4, requires_grad=True)
    loss = ot_loss(x, z, epsilon=0.002, max_iter=2000, grad=grad)
    assert loss.item() == pytest.approx(exact_cost(x, z.detach()), rel=0.01)
    loss.backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


def test_ot_loss_is_zero_when_tokens_sit_on_the_latents_and_falls_under_descent():
    torch.manual_seed(1)
    x = torch.randn(2, 8, 3)
    assert ot_loss(x, x.clone(), epsilon=0.001, max_iter=2000).item() == pytest.approx(0.0, abs=0.02)
    z = torch.randn(2, 4, 3, requires_grad=True)
    opt = torch.optim.SGD([z], lr=0.5)
    first = ot_loss(x, z).item()
    for _ in range(50):
        opt.zero_grad()
        ot_loss(x, z).backward()
        opt.step()
    assert ot_loss(x, z).item() < 0.5 * first
