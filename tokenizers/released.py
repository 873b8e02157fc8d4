"""An official tokenizer release, loaded into tok1d's own implementation and used as it was published.

    tokenizer: {name: released, release: titok-l32}                   # from the caches (fetch_weights)
    tokenizer: {name: released, release: titok-l32, source: /data/titok_l32}   # a local copy of it
    tokenizer: {name: released, format: taming, source: logs/my_vqgan}          # any release of a format
    tokenizer: {name: released, checkpoint: runs/titok_l32}           # a folder benchmark.convert wrote
    tokenizer: {name: released, release: titok-l32, stand_in: true}   # smoke scale: random weights, offline
    tokenizer: {name: released, release: titok-bl64-vae, options: {sample_posterior: true}}

benchmark/convert.py reads the release (format, key map, strict load; exact parity with the official code),
benchmark/release_install.py opens it for a study, and this class wraps the converted model: encode / decode / the training forward are the wrapped
tokenizer's. In a study the train_tokenizer stage installs the converted folder instead of training
(benchmark/tokenizer_stages.py), so every later stage loads the plain tok1d tokenizer (titok, softvq,
vqgan, maskgit_vqgan) it converted to. ``stand_in`` builds the release's architecture shrunk to the
study's resolution (its stand-in config in benchmark.convert.RELEASES), with seeded random weights, writes
it in the release's own file layout and converts that: the whole path without any download.
"""

from __future__ import annotations

import torch
from torch import Tensor

from benchmark.base import Tokenizer, TokenizerOutput
from benchmark.checkpoints import build_tokenizer
from benchmark.errors import ConfigError
from benchmark.options import check_options
from benchmark.registry import TOKENIZERS, register_tokenizer
from benchmark.release_install import open_release


@register_tokenizer("released")
class Released(Tokenizer):
    """An official release (or a converted folder), used as published: converted, not trained."""

    tiny = {"image_size": 32, "release": "maskgit-vqgan-f16", "stand_in": True}

    def __init__(
        self,
        *,
        image_size: int = 256,
        release: str | None = None,
        format: str | None = None,
        source: str | None = None,
        config: str | None = None,
        checkpoint: str | None = None,
        stand_in: bool = False,
        seed: int = 0,
        options: dict | None = None,
    ) -> None:
        """Name exactly one of ``checkpoint`` (a tokenizer folder written by ``python -m benchmark.convert``),
        ``release`` (a name of ``python -m benchmark.convert --list``; its files come from the caches that
        ``python -m benchmark.fetch_weights --release NAME`` fills, or from ``source``) or ``format`` (a
        format of benchmark.convert) with ``source`` (a release folder or file, or a hub id). ``config``:
        the release's config when ``source`` is a bare weights file. ``stand_in``: instead of the
        release's weights, a random-weight checkpoint of its architecture at the data resolution (drawn
        with ``seed``), for smoke runs. ``options``: options of the converted tokenizer that change how it
        is used, not its weights (``{sample_posterior: true}``: a TiTok VAE's tokens drawn from the
        posterior, as its official rFID evaluation reconstructs). Built on the meta device (a dry run's
        cost estimate), only the release's config is read."""
        super().__init__()
        meta = torch.empty(0).is_meta
        self.folder_config, state, self.provenance = open_release(
            image_size=image_size,
            release=release,
            format=format,
            source=source,
            config=config,
            checkpoint=checkpoint,
            stand_in=stand_in,
            seed=seed,
            weights=not meta,
        )
        if options:
            inner = self.folder_config["tokenizer"]
            check_options(
                options, TOKENIZERS.params(inner["name"]), "tokenizer.options", f"the {inner['name']} tokenizer"
            )
            self.folder_config = {**self.folder_config, "tokenizer": {**inner, **options}}
        self.model = build_tokenizer(self.folder_config)
        if state is not None:
            try:
                self.model.load_state_dict(state)
            except RuntimeError:
                raise ConfigError(f"tokenizer.options {options}: they change the released model's tensors") from None
        self.token_spec = self.model.token_spec

    def encode(self, images: Tensor) -> Tensor:
        return self.model.encode(images)

    def decode(self, tokens: Tensor) -> Tensor:
        return self.model.decode(tokens)

    def encode_with_codes(self, images: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        return self.model.encode_with_codes(images)

    def codebook_sizes(self) -> dict[str, int]:
        return self.model.codebook_sizes()

    def forward(self, images: Tensor) -> TokenizerOutput:
        """The wrapped tokenizer's training pass (fine-tuning a release)."""
        return self.model(images)
