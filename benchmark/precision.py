"""Numeric precision of the inference passes (sampling, latent caching, evaluation) and of the metrics.

``bf16`` (the default): bf16 autocast on CUDA, with TF32 for the matmuls and convolutions that stay
float32 (as the official SiT sampler enables); on other devices (CPU, MPS) plain float32. ``fp32``:
float32 everywhere, no TF32. Metrics and FID features always compute under :func:`exact_float32`.
Each stage records :meth:`InferencePrecision.describe` in its protocol.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass

import torch

from benchmark.errors import ConfigError

PRECISIONS = ("bf16", "fp32")


@contextmanager
def _tf32(matmul: str, cudnn: bool, deterministic: bool = False) -> Iterator[None]:
    """float32 matmul precision (``highest``: IEEE float32, ``high``: TF32) and cuDNN's TF32 / determinism
    for the block, restored after it."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(matmul)
    try:
        with torch.backends.cudnn.flags(
            enabled=torch.backends.cudnn.enabled,
            benchmark=torch.backends.cudnn.benchmark and not deterministic,
            deterministic=deterministic or torch.backends.cudnn.deterministic,
            allow_tf32=cudnn,
        ):
            yield
    finally:
        torch.set_float32_matmul_precision(previous)


def no_autocast(device: torch.device) -> AbstractContextManager:
    """Autocast off for ``device`` (a no-op where it has none, e.g. the meta device of cost estimates)."""
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device.type, enabled=False)
    return nullcontext()


@contextmanager
def exact_float32(device: torch.device) -> Iterator[None]:
    """No autocast, no TF32 in matmuls or convolutions, deterministic cuDNN: float32 means float32 (the
    reference precision of PSNR, SSIM and the FID features)."""
    with no_autocast(device), _tf32("highest", cudnn=False, deterministic=True):
        yield


@dataclass(frozen=True)
class InferencePrecision:
    """How encode / decode / sample run on ``device``: call it for the context, ``describe()`` for the record."""

    device: torch.device
    precision: str = "bf16"

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision '{self.precision}' is not one of {', '.join(PRECISIONS)}")

    @property
    def bf16(self) -> bool:
        """Whether bf16 autocast is on (bf16 asked for, on CUDA)."""
        return self.precision == "bf16" and self.device.type == "cuda"

    @contextmanager
    def __call__(self) -> Iterator[None]:
        with (
            torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.bf16),
            _tf32("high" if self.bf16 else "highest", cudnn=self.bf16),
        ):
            yield

    def describe(self) -> str:
        if self.bf16:
            return "bf16 autocast (CUDA), TF32 for float32 matmuls and convolutions"
        return f"float32 on {self.device.type} (no autocast, no TF32)"
