"""The inference precision helpers and the device-side evaluation against the CPU float64 reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity
from torch.utils.data import TensorDataset

from benchmark.checkpoints import build_tokenizer
from benchmark.config import EvalConfig
from benchmark.errors import ConfigError
from benchmark.precision import InferencePrecision, exact_float32
from benchmark.tokenizer_eval import reconstruction_metrics


def test_bf16_autocast_only_on_cuda_and_flags_restored() -> None:
    cuda = InferencePrecision(torch.device("cuda"))
    assert cuda.bf16 and "bf16 autocast" in cuda.describe() and "TF32" in cuda.describe()
    assert not InferencePrecision(torch.device("cuda"), "fp32").bf16
    cpu = InferencePrecision(torch.device("cpu"))
    assert not cpu.bf16 and cpu.describe() == "float32 on cpu (no autocast, no TF32)"
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("medium")
    try:
        with cpu():
            assert not torch.is_autocast_enabled("cpu")
            assert torch.get_float32_matmul_precision() == "highest"
        assert torch.get_float32_matmul_precision() == "medium"
    finally:
        torch.set_float32_matmul_precision(before)
    with pytest.raises(ConfigError, match="precision 'fp16'"):
        InferencePrecision(torch.device("cpu"), "fp16")


def test_exact_float32_inside_autocast() -> None:
    a, b = torch.randn(8, 8), torch.randn(8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert (a @ b).dtype == torch.bfloat16
        with exact_float32(torch.device("cpu")):
            product = a @ b
    assert product.dtype == torch.float32 and torch.equal(product, a @ b)


def test_streamed_evaluation_matches_the_cpu_float64_reference() -> None:
    """PSNR and SSIM of the device path (float32, running sums) against float64 PSNR and scikit-image's
    SSIM on the same reconstructions, to 1e-5; the preview (the first batch) comes back to the CPU."""
    torch.manual_seed(0)
    config = {"tokenizer": {"name": "titok", "size": "tiny", "patch_size": 8, "num_latent_tokens": 8}}
    model = build_tokenizer({**config, "data": {"resolution": 32}}).eval()
    images = torch.rand(6, 3, 32, 32)
    cfg = EvalConfig(batch_size=4, metrics=["psnr", "ssim"])
    metrics, preview = reconstruction_metrics(model, TensorDataset(images, torch.zeros(6)), cfg, torch.device("cpu"))
    recons = model.reconstruct(images).clamp(0, 1).double()
    mse = (images.double() - recons).square().mean(dim=(1, 2, 3))
    psnr = (10 * torch.log10(1 / mse)).mean().item()
    pairs = zip(images.permute(0, 2, 3, 1).double().numpy(), recons.permute(0, 2, 3, 1).numpy())
    ssim = np.mean(
        [
            structural_similarity(
                a, b, channel_axis=-1, data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
            )
            for a, b in pairs
        ]
    )
    assert metrics[0].compute()["psnr"] == pytest.approx(psnr, rel=1e-5)
    assert metrics[1].compute()["ssim"] == pytest.approx(ssim, abs=1e-5)
    assert preview.device.type == "cpu" and preview.shape == (8, 3, 32, 32)  # the first batch, over its recons
    assert torch.equal(preview[:4], images[:4]) and torch.allclose(preview[4:], recons[:4].float(), atol=1e-6)
