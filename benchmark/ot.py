"""2D-to-1D optimal-transport alignment (SelfBootTok Sec. 3.3, Eq. 12-13), solved with POT.

    C_ij = ||x_i - z_j||^2                                  (2D latents X (B, Nx, d), 1D tokens z (B, Nz, d))
    P*   = argmin_{P in Pi(a, b)} <P, C> + eps * H(P)        (Eq. 12; a, b uniform; batched log-Sinkhorn)
    L_OT = <P*, C>                                           (Eq. 13)

POT's batched solver runs the Sinkhorn iterations for the whole batch at once on the torch backend.
"""

from __future__ import annotations

from typing import Literal

import ot
from torch import Tensor

Grad = Literal["envelope", "autodiff"]


def ot_loss(
    x: Tensor, z: Tensor, epsilon: float = 0.05, max_iter: int = 100, tol: float = 1e-6, grad: Grad = "envelope"
) -> Tensor:
    """Mean over the batch of <P*, C> between 2D latents ``x`` and 1D tokens ``z`` (Eq. 13).

    ``grad`` selects how gradients reach ``z`` (and ``x``): ``envelope`` treats P* as a constant, so
    dL/dC = P* (the gradient of the entropic OT value by the envelope theorem, cheap and stable);
    ``autodiff`` differentiates through every Sinkhorn iteration (POT), at a memory cost.
    ``epsilon`` is relative to the mean cost, so one value works at any latent scale.
    """
    cost = ot.batch.dist_batch(x.float(), z.float(), metric="sqeuclidean")  # (B, Nx, Nz)
    reg = epsilon * cost.detach().mean().clamp_min(1e-12).item()
    if grad == "envelope":
        res = ot.solve_batch(cost.detach(), reg=reg, max_iter=max_iter, tol=tol, method="log_sinkhorn", grad="detach")
        return (res.plan * cost).sum((1, 2)).mean()
    res = ot.solve_batch(cost, reg=reg, max_iter=max_iter, tol=tol, method="log_sinkhorn", grad=grad)
    return res.value_linear.mean()
