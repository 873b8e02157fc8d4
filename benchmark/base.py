"""The interfaces every tokenizer and generator implements.

Images cross these interfaces as float tensors in [0, 1], shape (B, 3, H, W); each model maps them
to whatever range it trains in.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class TokenSpec:
    """What a generator must model for a tokenizer.

    ``kind`` is ``discrete`` (integer ids below ``vocab_size``) or ``continuous`` (vectors of ``dim``).
    ``shape`` is ``(K,)`` for a 1D sequence or ``(h, w)`` for a 2D grid. ``generated`` is how many
    leading tokens a generator models (SelfBootTok: only the global ones; the rest are predicted
    from them on decode); ``None`` means all.
    """

    kind: Literal["discrete", "continuous"]
    shape: tuple[int, ...]
    vocab_size: int | None = None
    dim: int | None = None
    generated: int | None = None

    def __post_init__(self) -> None:
        if self.kind == "discrete" and not self.vocab_size:
            raise ValueError("a discrete TokenSpec needs vocab_size")
        if self.kind == "continuous" and not self.dim:
            raise ValueError("a continuous TokenSpec needs dim")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TokenSpec:
        """The spec that ``dataclasses.asdict`` wrote (a JSON list back to the ``shape`` tuple)."""
        return cls(**{**d, "shape": tuple(d["shape"])})

    @property
    def num_tokens(self) -> int:
        return math.prod(self.shape)

    @property
    def num_generated(self) -> int:
        return self.num_tokens if self.generated is None else self.generated


@dataclass
class TokenizerOutput:
    """A training forward pass: reconstruction, weighted loss terms (summed by the trainer) and the
    tokens (code ids for discrete tokenizers, latents for continuous ones) for usage statistics."""

    recon: Tensor
    losses: dict[str, Tensor]
    tokens: Tensor


class Tokenizer(nn.Module, ABC):
    """An image tokenizer: ``encode`` images to tokens, ``decode`` tokens to images.

    Optional parts the harness uses when present:

    - ``adversary`` (benchmark.gan.Adversary) and ``last_layer()``: the trainer adds the adaptively
      weighted adversarial term to ``forward``'s losses (balanced against ``recon`` + ``perceptual``)
      and alternates a discriminator step;
    - ``encoder`` / ``encoder_init``: a pretrained initialisation copied in before training;
    - ``encode_with_codes(images)`` and ``codebook_sizes()``: the tokens and, from the same pass, the
      hard code ids per codebook, for usage metrics (default: ``encode`` and no codebooks);
    - ``load_stage1(state)``: how a ``finetune_tokenizer`` stage starts from the stage-1 weights.
    """

    token_spec: TokenSpec
    # Keyword arguments (``image_size`` included) of a tiny instance with every loss switched on and no
    # downloaded weights: the contract tests (tests/test_tokenizer_contract.py) build each registered
    # tokenizer with it, so a new plugin gets those tests by setting it.
    tiny: ClassVar[dict[str, Any]] = {}

    @abstractmethod
    def encode(self, images: Tensor) -> Tensor:
        """Images (B, 3, H, W) in [0, 1] -> tokens: ids (B, *shape) or vectors (B, *shape, dim)."""

    @abstractmethod
    def decode(self, tokens: Tensor) -> Tensor:
        """Tokens as returned by ``encode`` -> images (B, 3, H, W) in [0, 1]."""

    @abstractmethod
    def forward(self, images: Tensor) -> TokenizerOutput:
        """One training pass: reconstruction and the named, already weighted, loss terms."""

    def encode_with_codes(self, images: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """``encode(images)`` and the hard code id of each token per codebook, from one encoder pass
        ({name: ids}; empty for a tokenizer without codebooks)."""
        return self.encode(images), {}

    @torch.no_grad()
    def code_ids(self, images: Tensor) -> dict[str, Tensor]:
        """The hard code ids per codebook (:meth:`encode_with_codes` without the tokens)."""
        return self.encode_with_codes(images)[1]

    def codebook_sizes(self) -> dict[str, int]:
        """The size of the codebook behind each key of :meth:`encode_with_codes`' codes."""
        return {}

    @torch.no_grad()
    def reconstruct(self, images: Tensor) -> Tensor:
        return self.decode(self.encode(images))


class Generator(nn.Module, ABC):
    """A class-conditional generator over a tokenizer's tokens (``TokenSpec.num_generated`` of them)."""

    # A tiny instance for the contract tests (tests/test_generator_contract.py): its keyword arguments
    # (besides token_spec and num_classes) and the token spec it is built for.
    tiny: ClassVar[dict[str, Any]] = {}
    tiny_token_spec: ClassVar[TokenSpec | None] = None
    # The precision its sampler needs whatever ``sample.precision`` says (None: any), and why.
    sample_precision: str | None = None
    sample_precision_why: str = ""

    @abstractmethod
    def loss(self, tokens: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """Named loss terms for one batch of tokens and their class labels."""

    @abstractmethod
    def sample(
        self, labels: Tensor, cfg_scale: float = 1.0, steps: int | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """Tokens for ``labels`` in the layout ``encode`` returns."""
