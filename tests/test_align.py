"""REPA-style alignment: teacher resampling and the patch-wise similarity loss."""

import pytest
import torch

from benchmark.align import Projector, patchwise_similarity_loss, resample_tokens


def test_alignment_loss_resamples_teacher_grids_and_is_minus_one_when_aligned():
    feats = torch.arange(16.0).view(1, 16, 1).expand(2, 16, 3)  # a 4x4 grid of patch values
    pooled = resample_tokens(feats, 4)
    assert pooled[0, :, 0].tolist() == [2.5, 4.5, 10.5, 12.5]  # 2x2 regions of the grid
    assert resample_tokens(feats, 16) is feats and resample_tokens(feats, 3).shape == (2, 3, 3)
    tokens = pooled.clone().requires_grad_(True)
    assert patchwise_similarity_loss(tokens, feats).item() == pytest.approx(-1.0, abs=1e-6)
    proj = Projector(5, 3)
    loss = patchwise_similarity_loss(proj(torch.randn(2, 4, 5)), feats)
    loss.backward()
    assert all(p.grad is not None for p in proj.parameters())
