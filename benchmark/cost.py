"""Compute accounting: parameters per component and GFLOPs per image, counted by
``torch.utils.flop_counter`` on the real modules (matmuls / convs / SDPA, forward and backward)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

Shape = tuple[int, ...]


def _cpu_attention(query_shape: Shape, key_shape: Shape, value_shape: Shape, *args: Any, **kwargs: Any) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_attention_backward(
    grad_out_shape: Shape, query_shape: Shape, key_shape: Shape, value_shape: Shape, *args: Any, **kwargs: Any
) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


# PyTorch's counter has formulas for the CUDA attention kernels (flash, memory-efficient, cuDNN) but not
# for the CPU's, whose SDPA it counts as 0 FLOPs: the CPU kernel computes the same attention, counted
# with PyTorch's own formulas (Q K^T and P V forward; their gradients backward).
CPU_ATTENTION = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_attention_backward,
}


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Total and trainable parameters, and the total of each top-level child module."""
    out = {
        "total": sum(p.numel() for p in model.parameters()),
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }
    for name, child in model.named_children():
        n = sum(p.numel() for p in child.parameters())
        if n:
            out[name] = n
    return out


def counted(fn: Callable[[], Any]) -> tuple[float, Any]:
    """GFLOPs of one call of ``fn`` (a multiply-add counts as two FLOPs) and what it returned."""
    with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION) as counter:
        out = fn()
    return counter.get_total_flops() / 1e9, out


def gflops(fn: Callable[[], Any]) -> float:
    """GFLOPs of one call of ``fn``."""
    return counted(fn)[0]


def tokenizer_cost(tokenizer: nn.Module, image_size: int, device: torch.device) -> dict[str, Any]:
    """Parameters and GFLOPs per image of ``encode``, ``decode`` and one training step (forward and
    backward of the tokenizer's own losses; the discriminator's step is not counted)."""
    images = torch.rand(1, 3, image_size, image_size, device=device)
    was_training = tokenizer.training
    tokenizer.train()
    train = gflops(lambda: sum(tokenizer(images).losses.values()).backward())
    tokenizer.zero_grad(set_to_none=True)
    tokenizer.train(was_training)
    with torch.no_grad():
        encode, tokens = counted(lambda: tokenizer.encode(images))
        return {
            "params": parameter_counts(tokenizer),
            "train_step_gflops": train,
            "encode_gflops": encode,
            "decode_gflops": gflops(lambda: tokenizer.decode(tokens)),
        }


def training_pflops(cost: dict[str, Any], steps: int, batch_size: int) -> float:
    """Total training compute of a stage: GFLOPs per training image x images seen, in PFLOPs."""
    return cost["train_step_gflops"] * steps * batch_size / 1e6


def generator_cost(generator: nn.Module, tokens: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
    """Parameters and GFLOPs per image of one training step (loss forward + backward) on ``tokens``
    (a batch of one); the REPA / REG teacher's own forward is not counted."""

    extra = {}
    if getattr(generator, "reg", False):  # REG's class token: any value of the right shape counts the same FLOPs
        extra["class_token"] = torch.zeros(tokens.shape[0], generator.repa_dim, device=tokens.device)

    def train_step() -> None:
        sum(generator.loss(tokens, labels, **extra).values()).backward()

    out: dict[str, Any] = {
        "params": parameter_counts(generator),
        "train_step_gflops": gflops(train_step),
        "tokens": int(tokens.shape[1]),
    }
    generator.zero_grad(set_to_none=True)
    return out
