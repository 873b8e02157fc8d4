"""The registry, plugin discovery by path, and the layout's hard constraint (no tokenizers package)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from benchmark.errors import ConfigError
from benchmark.registry import TOKENIZERS, Registry, load_plugins

REPO = Path(__file__).resolve().parent.parent


def test_plugin_folders_have_no_init():
    assert not (REPO / "tokenizers" / "__init__.py").exists()
    assert not (REPO / "generators" / "__init__.py").exists()


def test_huggingface_tokenizers_not_shadowed_from_repo_root():
    """From the repo root, `import tokenizers` is HuggingFace's and a transformers vision model builds."""
    code = textwrap.dedent("""
        import tokenizers, transformers
        from tokenizers import Encoding
        from transformers import Dinov2Config, Dinov2Model
        import benchmark.registry as r
        r.load_plugins()
        assert "titok" in r.TOKENIZERS
        import torch
        cfg = Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=64, image_size=28, patch_size=14)
        out = Dinov2Model(cfg)(torch.zeros(1, 3, 28, 28)).last_hidden_state
        print(tokenizers.__file__, tuple(out.shape))
    """)
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    path, shape = result.stdout.split(maxsplit=1)
    assert "site-packages" in path and not path.startswith(str(REPO / "tokenizers"))
    assert shape.strip() == "(1, 5, 32)"


def test_new_tokenizer_file_is_found_and_usable(tmp_path, monkeypatch, write_study):
    """One new decorated file in a plugin folder: registered, listed and usable in a study."""
    folder = tmp_path / "my_plugins"
    folder.mkdir()
    (folder / "helper.py").write_text("SCALE = 0.5\n")
    (folder / "halfres.py").write_text(
        textwrap.dedent("""
        from benchmark.registry import TOKENIZERS, register_tokenizer
        from .helper import SCALE

        TiTok = TOKENIZERS.get("titok").obj

        @register_tokenizer("titok_plugin_test")
        class TiTokPluginTest(TiTok):
            '''A TiTok subclass defined in a user plugin folder.'''
            def __init__(self, *, scale: float = SCALE, **kw):
                super().__init__(**kw)
                self.scale = scale
    """)
    )
    monkeypatch.setenv("TOK1D_PLUGINS", str(folder))
    load_plugins()
    entry = TOKENIZERS.get("titok_plugin_test")
    assert entry.description == "A TiTok subclass defined in a user plugin folder."
    assert entry.obj(image_size=16, size="tiny", patch_size=4).scale == 0.5

    from benchmark.study import build_plan

    study = write_study("""
        config:
          tokenizer: {name: titok_plugin_test, scale: 0.25}
    """)
    plan = build_plan(study, "smoke")
    tok = plan.cells[0].config["tokenizer"]
    assert tok["name"] == "titok_plugin_test" and tok["scale"] == 0.25 and tok["size"] == "tiny"


def test_plugin_with_relative_import_of_titok_fails_clearly(tmp_path):
    bad = tmp_path / "broken"
    bad.mkdir()
    (bad / "oops.py").write_text("import does_not_exist_anywhere\n")
    with pytest.raises(ConfigError, match=r"oops\.py failed to import.*does_not_exist_anywhere"):
        load_plugins([bad])


def test_missing_plugin_folder_is_named(tmp_path):
    with pytest.raises(ConfigError, match="nowhere"):
        load_plugins([tmp_path / "nowhere"])


def test_unknown_name_lists_close_matches():
    with pytest.raises(ConfigError, match=r"unknown tokenizer 'titk'.*Did you mean: titok"):
        TOKENIZERS.get("titk")


def test_duplicate_name_from_another_file_is_refused():
    reg = Registry("thing")

    @reg.register("a")
    class A:
        """First."""

    B = type("B", (), {"__doc__": "Second.", "__module__": "elsewhere"})
    with pytest.raises(ConfigError, match="registered twice"):
        reg.register("a")(B)
    assert reg.get("a").obj is A and reg.get("a").description == "First."


def test_list_command_prints_every_kind():
    result = subprocess.run([sys.executable, "-m", "benchmark.list"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    for heading in ("tokenizers:", "generators:", "encoders:", "datasets:", "metrics:"):
        assert heading in result.stdout
    for name in ("titok", "procedural", "imagefolder", "psnr", "ssim", "codebook_usage"):
        assert f"  {name}" in result.stdout
    encoders = {
        line.split()[0]: line for line in result.stdout.split("encoders:\n")[1].split("datasets:")[0].splitlines()
    }
    assert encoders["mae"].endswith("Offline stand-in pretraining: mae.")
    assert encoders["dinov2"].endswith("Offline stand-in pretraining: dino.")
    assert encoders["clip"].endswith("Offline stand-in pretraining: clip.")
    assert encoders["depth_anything_v2"].endswith("Offline stand-in pretraining: depth.")
    assert "pretraining" not in encoders["siglip2"]


def test_new_generator_file_is_found(tmp_path, monkeypatch):
    """Generators are found the same way: one decorated file, nothing else edited."""
    folder = tmp_path / "gens"
    folder.mkdir()
    (folder / "constant.py").write_text(
        textwrap.dedent('''
        import torch
        from benchmark.base import Generator
        from benchmark.registry import register_generator

        @register_generator("constant_test")
        class Constant(Generator):
            """Samples token 0 everywhere (a test plugin)."""
            def loss(self, tokens, labels):
                return {"zero": torch.zeros(())}
            def sample(self, labels, cfg_scale=1.0, steps=None, generator=None):
                return torch.zeros(len(labels), 4, dtype=torch.long)
    ''')
    )
    monkeypatch.setenv("TOK1D_PLUGINS", str(folder))
    load_plugins()
    from benchmark.registry import GENERATORS

    assert GENERATORS.get("constant_test").description == "Samples token 0 everywhere (a test plugin)."
    assert GENERATORS.build("constant_test").sample(torch.tensor([1, 2])).shape == (2, 4)
