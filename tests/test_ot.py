"""The 2D-to-1D OT loss (Eq. 12-13) against POT (its batched log-Sinkhorn and its exact solver), its
gradients, and a step without host syncs."""

import ot
import pytest
import torch

from benchmark.ot import ot_loss, sinkhorn_plan


def exact_cost(x: torch.Tensor, z: torch.Tensor) -> float:
    costs = []
    for xb, zb in zip(x.double(), z.double()):
        a = torch.full((xb.shape[0],), 1.0 / xb.shape[0], dtype=torch.float64)
        b = torch.full((zb.shape[0],), 1.0 / zb.shape[0], dtype=torch.float64)
        costs.append(float(ot.emd2(a, b, ot.dist(xb, zb, metric="sqeuclidean"))))
    return sum(costs) / len(costs)


@pytest.mark.parametrize("iters", [1, 7, 40])
def test_sinkhorn_plan_is_pots_log_sinkhorn(iters):
    torch.manual_seed(0)
    x, z = torch.randn(3, 20, 5, dtype=torch.float64), torch.randn(3, 6, 5, dtype=torch.float64)
    cost = ot.batch.dist_batch(x, z, metric="sqeuclidean")
    reg = 0.05 * cost.mean().item()
    # tol=0: POT never stops early, so both run exactly ``iters`` iterations
    pot = ot.solve_batch(cost, reg=reg, max_iter=iters, tol=0.0, method="log_sinkhorn", grad="detach")
    ours = sinkhorn_plan(cost, torch.tensor(reg, dtype=torch.float64), iters)
    torch.testing.assert_close(ours, pot.plan, rtol=1e-10, atol=1e-14)


def test_default_iterations_reach_pots_converged_plan():
    torch.manual_seed(2)
    x = torch.randn(4, 256, 32)  # a 16 x 16 latent grid against 64 tokens, as SelfBootTok's OT term
    z = x[:, ::4] + 0.1 * torch.randn(4, 64, 32)
    cost = ot.batch.dist_batch(x, z, metric="sqeuclidean")
    pot = ot.solve_batch(cost, reg=0.05 * cost.mean().item(), max_iter=1000, tol=1e-7, method="log_sinkhorn")
    value = float((pot.plan * cost).sum((1, 2)).mean())
    assert ot_loss(x, z).item() == pytest.approx(value, rel=1e-5)


@pytest.mark.parametrize("grad", ["envelope", "autodiff"])
def test_ot_loss_matches_exact_solver_and_reaches_z(grad):
    torch.manual_seed(0)
    x = torch.randn(3, 16, 4)
    z = torch.randn(3, 8, 4, requires_grad=True)
    loss = ot_loss(x, z, epsilon=0.002, iters=2000, grad=grad)
    assert loss.item() == pytest.approx(exact_cost(x, z.detach()), rel=0.01)
    loss.backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


def test_ot_loss_is_zero_when_tokens_sit_on_the_latents_and_falls_under_descent():
    torch.manual_seed(1)
    x = torch.randn(2, 8, 3)
    assert ot_loss(x, x.clone(), epsilon=0.001, iters=2000).item() == pytest.approx(0.0, abs=0.02)
    z = torch.randn(2, 4, 3, requires_grad=True)
    opt = torch.optim.SGD([z], lr=0.5)
    first = ot_loss(x, z).item()
    for _ in range(50):
        opt.zero_grad()
        ot_loss(x, z).backward()
        opt.step()
    assert ot_loss(x, z).item() < 0.5 * first


def test_ot_loss_reads_no_value_back_to_the_host():
    """One graph for the whole loss: a ``.item()`` or a data-dependent branch would break it."""
    torch.manual_seed(3)
    x, z = torch.randn(2, 8, 3), torch.randn(2, 4, 3)
    traced = torch.compile(ot_loss, backend="eager", fullgraph=True)
    assert traced(x, z, iters=5).item() == pytest.approx(ot_loss(x, z, iters=5).item(), rel=1e-6)


def test_ot_loss_costs_stay_float32_under_autocast():
    torch.manual_seed(4)
    x, z = torch.randn(2, 16, 8), torch.randn(2, 4, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = ot_loss(x, z)
    assert mixed.dtype == torch.float32 and mixed.item() == pytest.approx(ot_loss(x, z).item(), rel=1e-6)
