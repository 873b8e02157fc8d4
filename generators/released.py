"""An official generator release, loaded into tok1d's own implementation and used as it was published.

    generator: {name: released, release: titok-l32-generator}                  # from the caches (fetch_weights)
    generator: {name: released, release: titok-l32-generator, source: /data/g}  # a local copy of it
    generator: {name: released, checkpoint: runs/generator_titok_l32}          # a folder benchmark.convert wrote
    generator: {name: released, release: titok-l32-generator, stand_in: true}  # smoke scale: random weights

benchmark/convert.py reads the release (TiTok's MaskGIT generators: generators/titok_maskgit.py, with exact
parity) and this class wraps the converted generator. In a study the train_generator stage installs it
instead of training (benchmark/release_install.py): no latent cache of the training set is made, the
generator is used in the token space of the cell's tokenizer (which must give the token count and codebook
the release models, e.g. the ``released`` tokenizer of the matching release), and every later stage loads
the plain tok1d generator it converted to. The release's own sampling settings are in the stage's result
(``release_sample``) and in its generator's docstring; a study sets them as its ``sample`` section.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import Tensor

from benchmark.base import Generator, TokenSpec
from benchmark.convert import build_model
from benchmark.errors import ConfigError
from benchmark.registry import register_generator
from benchmark.release_install import open_release


def _describe(spec: TokenSpec) -> str:
    space = f"{spec.vocab_size} codes" if spec.kind == "discrete" else f"{spec.dim}-d vectors"
    return f"{spec.num_generated} {spec.kind} tokens over {space}"


@register_generator("released")
class ReleasedGenerator(Generator):
    """An official generator release (or a converted generator folder), used as published: not trained."""

    tiny = {"release": "titok-l32-generator", "stand_in": True}
    tiny_token_spec = TokenSpec("discrete", (32,), vocab_size=64)  # the stand-in's: K = 32 over 64 codes

    def __init__(
        self,
        *,
        token_spec: TokenSpec,
        num_classes: int,
        release: str | None = None,
        format: str | None = None,
        source: str | None = None,
        config: str | None = None,
        checkpoint: str | None = None,
        stand_in: bool = False,
        seed: int = 0,
    ) -> None:
        """Name exactly one of ``checkpoint`` (a generator folder written by ``python -m benchmark.convert``),
        ``release`` (a generator of ``python -m benchmark.convert --list``; its files from the caches or
        ``source``) or ``format`` with ``source``. ``config``: the release's config when ``source`` is a bare
        weights file. ``stand_in``: a random-weight generator of the release's architecture (drawn with
        ``seed``) instead of its weights, for smoke runs. The cell's tokens (``token_spec``) must be the ones
        the release models, and its ``num_classes`` labels among the release's classes."""
        super().__init__()
        meta = torch.empty(0).is_meta
        self.folder_config, state, self.provenance = open_release(
            kind="generator",
            release=release,
            format=format,
            source=source,
            config=config,
            checkpoint=checkpoint,
            stand_in=stand_in,
            seed=seed,
            weights=not meta,
        )
        modelled = TokenSpec.from_dict(self.folder_config["token_spec"])
        if (modelled.kind, modelled.num_generated, modelled.vocab_size, modelled.dim) != (
            token_spec.kind,
            token_spec.num_generated,
            token_spec.vocab_size,
            token_spec.dim,
        ):
            raise ConfigError(
                f"generator: the release models {_describe(modelled)}; the cell's tokenizer gives "
                f"{_describe(token_spec)} (use the tokenizer release it was trained on)"
            )
        trained_on = self.folder_config["num_classes"]
        if num_classes > trained_on or (num_classes != trained_on and not stand_in):
            # a release's label k is its data set's class k: fewer classes would name other classes
            raise ConfigError(
                f"generator: the release is conditioned on {trained_on} classes; the data has {num_classes} "
                "(use the data set it was trained on, or generator.stand_in: true for a pipeline check)"
            )
        self.token_spec = token_spec
        self.num_classes = num_classes
        self.model = build_model(self.folder_config)
        if state is not None:
            self.model.load_state_dict(state)

    def check_sampler_options(self, options: dict[str, Any]) -> None:
        """``sample.options`` must be keyword options of the released generator's own sampler."""
        params = inspect.signature(self.model.sample).parameters.values()
        known = [p.name for p in params if p.kind == p.KEYWORD_ONLY]
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ConfigError(
                f"sample.options: {', '.join(unknown)}: not an option of the released "
                f"{self.folder_config['generator']['name']} sampler ({', '.join(known)})"
            )

    def compile(self, *args: Any, **kwargs: Any) -> None:
        """Compile the released network, which its sampler and loss call (this wrapper itself is never called)."""
        self.model.compile(*args, **kwargs)

    def loss(self, tokens: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """The released generator's training loss (fine-tuning a release)."""
        return self.model.loss(tokens, labels)

    def sample(
        self,
        labels: Tensor,
        cfg_scale: float = 1.0,
        steps: int | None = None,
        generator: torch.Generator | None = None,
        **options: Any,
    ) -> Tensor:
        """The released generator's own sampler; ``options`` are its keyword options."""
        self.check_sampler_options(options)
        return self.model.sample(labels, cfg_scale, steps, generator, **options)
