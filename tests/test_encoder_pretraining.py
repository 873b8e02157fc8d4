"""Offline pretraining of stand-in encoders (benchmark/encoder_pretraining.py): MAE's and DINO's objectives,
the pretrain_encoder stage, and the tokenizer initialised from what it saved."""

from __future__ import annotations

import logging
import math

import pytest
import timm
import torch
import torch.nn.functional as F
import transformers
from conftest import TINY
from torch import Tensor
from torch.utils.data import TensorDataset

from benchmark.checkpoints import build_tokenizer
from benchmark.encoder_pretraining import build_objective
from benchmark.errors import ConfigError
from benchmark.layers import patchify
from benchmark.pretraining_objectives import MaskedAutoencoder, SelfDistillation
from benchmark.report import teacher_sources
from benchmark.run import main
from benchmark.store import RunStore, read_json
from benchmark.study import build_plan
from benchmark.train import fit

STAND_IN = {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2}


def objective(init: str, **options) -> MaskedAutoencoder | SelfDistillation:
    torch.manual_seed(0)
    obj, _ = build_objective({"init": init, "stand_in": STAND_IN, "pretrain": {"steps": 4, **options}})
    return obj


def test_patchify_orders_patches_as_the_vits_patch_embedding():
    mae = objective("mae")
    images = torch.rand(2, 3, 16, 16)
    conv = mae.vit.patch_embed.proj
    as_linear = conv.weight.permute(0, 2, 3, 1).reshape(conv.out_channels, -1)  # (D, p, p, C) flattened
    expected = mae.vit.patch_embed(images)
    torch.testing.assert_close(patchify(images, 4) @ as_linear.T + conv.bias, expected, rtol=1e-5, atol=1e-5)


def test_mae_encodes_only_the_visible_quarter_and_scores_only_masked_patches():
    mae = objective("mae", mask_ratio=0.75)
    seen = []
    mae.vit.blocks[0].register_forward_pre_hook(lambda _, args: seen.append(args[0].shape))
    images = torch.rand(3, 3, 16, 16)
    loss = mae.loss([images])["mae"]
    assert seen == [torch.Size([3, 1 + 4, 32])]  # class token + 16 patches x (1 - 0.75)

    # the loss is the normalised-pixel MSE over the masked patches alone: a decoder that predicts the
    # targets of the masked patches (and garbage elsewhere) scores zero
    x = mae.normalize(images)
    target = patchify(x, 4)
    target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
    torch.manual_seed(1)
    order = torch.rand(3, 16).argsort(dim=1)
    masked = torch.ones(3, 16).scatter_(1, order[:, :4], 0.0).bool()
    perfect = torch.where(masked[..., None], target, torch.full_like(target, 5.0))
    mae.decoder_pred.register_forward_hook(lambda *_: torch.cat([torch.zeros(3, 1, 48), perfect], dim=1))
    torch.manual_seed(1)
    assert mae.loss([images])["mae"].item() == pytest.approx(0.0, abs=1e-6)
    assert loss.item() > 0.5


def test_dino_loss_teacher_momentum_and_centre_follow_the_paper():
    dino = objective("dino", out_dim=64, local_crops=0, center_momentum=0.9, momentum=0.99)
    views = [torch.rand(4, 3, 16, 16), torch.rand(4, 3, 16, 16)]

    def probs(vit, head, x, temp, center=0.0):
        cls = dino._class_token(vit, x)
        return F.softmax((head(cls) - center) / temp, dim=-1)

    with torch.no_grad():
        t = [probs(dino.teacher, dino.teacher_head, v, 0.04) for v in views]  # centre starts at zero
        s = [torch.log(probs(dino.vit, dino.head, v, 0.1)) for v in views]
        expected = (-(t[0] * s[1]).sum(-1).mean() - (t[1] * s[0]).sum(-1).mean()) / 2
        teacher_out = dino.teacher_head(dino._class_token(dino.teacher, torch.cat(views)))
    loss = dino.loss(views)["dino"]
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(dino.center, 0.1 * teacher_out.mean(0, keepdim=True))

    # theta_t <- m theta_t + (1 - m) theta_s with m = 1 - (1 - 0.99) (cos(pi k / K) + 1) / 2 at step k = 0
    with torch.no_grad():
        for p in dino.vit.parameters():
            p.add_(1.0)
    before = [p.clone() for p in dino.teacher.parameters()]
    dino.before_step(1, total=10)
    m = 1 - 0.01 * (math.cos(0.0) + 1) / 2
    for old, new, student in zip(before, dino.teacher.parameters(), dino.vit.parameters(), strict=True):
        torch.testing.assert_close(new, m * old + (1 - m) * student)
    assert not any(p.requires_grad for p in dino.teacher.parameters())


@pytest.mark.parametrize(
    ("logits", "verdict"),
    [
        (torch.zeros(8, 32), "uniform for every image"),
        (10 * F.one_hot(torch.full((8,), 3), 32).float(), "the same prototype"),
        (10 * F.one_hot(torch.arange(8), 32).float(), None),  # sharp, and a different prototype per image
    ],
)
def test_dino_names_its_two_collapses(logits, verdict):
    dino = objective("dino", out_dim=32)
    dino.teacher_head.register_forward_hook(lambda *_: logits)
    found = dino.collapse(torch.rand(8, 3, 16, 16))
    assert (found is None) if verdict is None else (verdict in found)
    assert objective("mae").collapse(torch.rand(8, 3, 16, 16)) is None


def test_views_draw_their_own_crop_for_every_image():
    dino = objective("dino", local_crops=3)
    images = torch.rand(1, 3, 16, 16).expand(6, -1, -1, -1)  # one image, six times
    views = dino.views(images)
    assert len(views) == dino.num_views == 5 and all(v.shape == (6, 3, 16, 16) for v in views)
    assert all(0 <= v.min() and v.max() <= 1 for v in views)
    assert len({tuple(v.flatten().tolist()) for v in views[0]}) == 6  # per image, not per batch
    torch.manual_seed(3)
    first = objective("mae").views(images)[0]
    torch.manual_seed(3)
    torch.testing.assert_close(objective("mae").views(images)[0], first)  # the seed decides


def test_an_interrupted_dino_pretraining_resumes_to_the_same_weights(tmp_path, caplog):
    """The teacher, the centre and the augmentations' random draws all resume with the checkpoint."""
    images = TensorDataset(torch.rand(16, 3, 16, 16), torch.zeros(16))

    def pretrain(folder, crash_at: int | None = None) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        options = {"steps": 8, "batch_size": 4, "checkpoint_every": 4, "log_every": 2, "precision": "fp32"}
        dino, loop = build_objective({"init": "dino", "stand_in": STAND_IN, "pretrain": {**options, "out_dim": 32}})

        def step(batch, i):
            if i == crash_at:
                raise RuntimeError("node lost")
            dino.before_step(i, loop.steps)
            return dino(batch[0]), None

        return fit(dino, step, images, loop, 0, folder, torch.device("cpu"))[1]

    with pytest.raises(RuntimeError, match="node lost"):
        pretrain(tmp_path / "a", crash_at=6)
    with caplog.at_level("INFO"):
        resumed = pretrain(tmp_path / "a")
    assert "at step 4" in caplog.text
    straight = pretrain(tmp_path / "b")
    assert "teacher.blocks.0.attn.qkv.weight" in straight and "center" in straight
    assert all(torch.equal(resumed[k], straight[k]) for k in straight)


def test_pretraining_options_are_checked_at_plan_time(write_study):
    def plan(encoder: str) -> None:
        study = write_study(f"config: {{tokenizer: {{name: titok, size: tiny, encoder: {encoder}}}}}")
        build_plan(study, "smoke")

    with pytest.raises(ConfigError, match=r"tokenizer\.encoder\.pretrain: pretrains a random-weight stand-in"):
        plan("{init: mae, pretrain: {steps: 10}}")
    with pytest.raises(ConfigError, match=r"encoder 'siglip2' has no offline pretraining objective \(SigLIP 2 adds"):
        plan("{init: siglip2, stand_in: {image_size: 16}, pretrain: {steps: 10}}")
    with pytest.raises(ConfigError, match=r"pretrain\.objective: 'dino' is not how mae was pretrained"):
        plan("{init: mae, stand_in: {img_size: 16}, pretrain: {objective: dino}}")
    with pytest.raises(
        ConfigError, match=r"tokenizer\.encoder\.pretrain\.out_dim: not an option of pretraining objective 'mae'"
    ):
        plan("{init: mae, stand_in: {img_size: 16}, pretrain: {out_dim: 64}}")
    with pytest.raises(ConfigError, match=r"tokenizer\.encoder\.pretrain\.steps must be int"):
        plan("{init: dino, stand_in: {img_size: 16}, pretrain: {steps: many}}")


def test_teacher_pretraining_is_checked_at_plan_time_under_the_teachers_own_key(write_study):
    def plan(tokenizer: str) -> None:
        build_plan(write_study(f"config: {{tokenizer: {tokenizer}}}\nstages: [train_tokenizer]"), "smoke")

    softvq = "name: softvq, size: tiny, align: "
    with pytest.raises(
        ConfigError,
        match=r"tokenizer\.align\.pretrain: pretrains a random-weight stand-in; give this encoder a stand_in",
    ):
        plan(f"{{{softvq}{{init: dinov2, pretrain: {{steps: 4}}}}}}")
    with pytest.raises(
        ConfigError, match=r"tokenizer\.align\.pretrain: encoder 'siglip2' has no offline pretraining objective"
    ):
        plan(f"{{{softvq}{{init: siglip2, stand_in: {{image_size: 16}}, pretrain: {{steps: 4}}}}}}")
    with pytest.raises(ConfigError, match=r"tokenizer\.align\.pretrain\.steps must be int"):
        plan(f"{{{softvq}{{init: dinov2, stand_in: {{img_size: 16}}, pretrain: {{steps: many}}}}}}")
    with pytest.raises(
        ConfigError, match=r"finetune\.tokenizer\.align_local\.pretrain: stage 2 trains with stage 1's teachers"
    ):
        build_plan(
            write_study("""
            config:
              tokenizer: {name: selfboottok, size: tiny}
              finetune: {tokenizer: {stage: 2, align_local: {init: dinov2, stand_in: {img_size: 32}, pretrain: {steps: 4}}}}
            stages: [finetune_tokenizer]
        """),
            "smoke",
        )


def test_a_teacher_whose_term_is_weighted_0_is_neither_pretrained_nor_built(tmp_path, write_study):
    """SelfBootTok's local REPA term (or the whole alignment) weighted 0: its teacher is not pretrained, not
    read, not built (no projector either), and the report says it is not used; the global one still is."""
    teacher = "{init: dinov2, stand_in: {img_size: 32, patch_size: 4, embed_dim: 48, depth: 2, num_heads: 2}, pretrain: {steps: 4}}"
    study = write_study(f"""
        config:
          tokenizer: {{name: selfboottok, size: tiny, branches: G+L1, align_global: {teacher},
                       align_local: {teacher.replace("dinov2", "ijepa")}}}
        cells:
          - {{label: used}}
          - {{label: local off, set: {{tokenizer.repa_local_weight: 0}}}}
          - {{label: all off, set: {{tokenizer.align_weight: 0.0}}}}
        stages: [train_tokenizer]
    """)
    plan = build_plan(study, "smoke")
    kinds = {c.label: {k for k in c.stages if k.startswith("pretrain_")} for c in plan.cells}
    assert kinds == {
        "used": {"pretrain_align_global", "pretrain_align_local"},
        "local off": {"pretrain_align_global"},
        "all off": set(),
    }
    for cell in plan.cells:
        model = build_tokenizer(cell.config)
        assert (model.teacher_local is not None) == (cell.label == "used")
        assert (model.projector_local is not None) == (cell.label == "used")
        assert (model.teacher_global is not None) == (cell.label != "all off")
    assert "not used: its term is weighted 0" in teacher_sources(RunStore(tmp_path / "runs"), plan.cells[1], {})


@pytest.mark.parametrize("repa_steps", [4, 5])
def test_a_pretrained_teacher_is_one_stage_read_by_the_stages_that_train_with_it(write_study, repa_steps):
    """SoftVQ's alignment teacher and SiT's REPA teacher, pretrained offline: one stage per distinct
    teacher, shared by every cell and role whose teacher, data and seed agree; only the stages that train
    with a teacher read its pretraining."""
    stand_in = "{img_size: 32, patch_size: 4, embed_dim: 48, depth: 2, num_heads: 2}"
    study = write_study(f"""
        config:
          tokenizer: {{name: softvq, size: tiny, align: {{init: dinov2, stand_in: {stand_in}, pretrain: {{steps: 4}}}}}}
          generator:
            name: sit
            size: tiny
            repa_teacher: {{init: dinov2, stand_in: {stand_in}, pretrain: {{steps: {repa_steps}}}}}
            repa_dim: 48
            repa_depth: 1
        axes: {{grid: {{tokenizer.num_latent_tokens: [4, 8]}}}}
        label: "{{tokenizer.num_latent_tokens}}"
        stages: [evaluate_generator]
    """)
    plan = build_plan(study, "smoke")
    pretrainings = [s for s in plan.stages.values() if s.kind.startswith("pretrain_")]
    assert len(pretrainings) == (1 if repa_steps == 4 else 2)  # the same teacher in both roles: one
    assert all(s.cells == ["4", "8"] for s in pretrainings)
    for cell in plan.cells:
        assert (cell.stages["pretrain_align"] == cell.stages["pretrain_repa_teacher"]) == (repa_steps == 4)
    for stage in plan.stages.values():
        reads = set(stage.inputs)
        assert ("pretrain_align" in reads) == (stage.kind == "train_tokenizer"), stage
        assert ("pretrain_repa_teacher" in reads) == (stage.kind == "train_generator"), stage
    assert not any(s.kind == "pretrain_encoder" for s in plan.stages.values())  # the encoder is not pretrained


ENCODER_STAND_INS = {  # timm's (MAE's, DINO's objective), open_clip's (CLIP's, on the class names) and
    # transformers' Depth-Anything (its depth objective, on the built-in scenes' depth maps)
    "mae": {"img_size": 16, "patch_size": 4, "embed_dim": 64, "depth": 2, "num_heads": 4},
    "dino": {"img_size": 16, "patch_size": 4, "embed_dim": 64, "depth": 2, "num_heads": 4},
    "clip": {"image_size": 16, "patch_size": 4, "width": 64, "layers": 2, "head_width": 16},
    "depth_anything_v2": {
        "image_size": 16,
        "patch_size": 4,
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 256,
    },
}
OBJECTIVE_OF = {"depth_anything_v2": "depth"}  # where an encoder's objective is not named after it


def first_attention_weight(init: str, folder) -> Tensor:
    """The first block's attention weight of a saved stand-in, read by its library's own loader."""
    if init == "clip":
        import open_clip

        return open_clip.create_model(f"local-dir:{folder}").visual.transformer.resblocks[0].attn.in_proj_weight
    if init == "depth_anything_v2":
        import transformers

        model = transformers.DepthAnythingForDepthEstimation.from_pretrained(folder)
        return model.backbone.encoder.layer[0].attention.q_proj.weight
    return timm.create_model(f"local-dir:{folder}", pretrained=True).blocks[0].attn.qkv.weight


@pytest.mark.slow
@pytest.mark.parametrize("init", ENCODER_STAND_INS)
def test_cells_share_one_pretraining_and_the_tokenizer_starts_from_its_weights(tmp_path, write_study, init):
    stand_in = "{" + ", ".join(f"{k}: {v}" for k, v in ENCODER_STAND_INS[init].items()) + "}"
    study = write_study(f"""
        config:
          tokenizer:
            name: titok
            size: tiny
            patch_size: 4
            encoder: {{init: {init}, stand_in: {stand_in}, pretrain: {{steps: 6, batch_size: 8, checkpoint_every: 3}}}}
        axes: {{grid: {{tokenizer.num_latent_tokens: [4, 8]}}}}
        label: "{{tokenizer.num_latent_tokens}}"
        stages: [train_tokenizer]
    """)
    plan = build_plan(study, "smoke", TINY)
    pretrain = [s for s in plan.stages.values() if s.kind == "pretrain_encoder"]
    assert len(pretrain) == 1 and len(pretrain[0].cells) == 2  # one pretraining for both K
    runs = tmp_path / "runs"
    assert main([str(study), "--profile", "smoke", "--runs", str(runs), "--results", str(tmp_path / "r"), *TINY]) == 0

    folder = runs / "pretrain_encoder" / pretrain[0].hash
    result = read_json(folder / "result.json")
    objective = OBJECTIVE_OF.get(init, init)
    assert result["objective"] == objective and result["cost"]["train_pflops"] > 0
    probe = {"clip": {"zero_shot_accuracy"}, "depth": {"abs_rel", "delta1", "abs_rel_flat"}}.get(objective, set())
    assert set(result["probe"]) == probe  # measured on the training images (depth: against their depth maps)
    assert (folder / "losses.csv").read_text().count("\n") > 1
    torch.manual_seed(0)
    fresh, _ = build_objective({"init": init, "stand_in": ENCODER_STAND_INS[init], "pretrain": {}}, class_names=["a"])
    fresh.save(tmp_path / "fresh")
    assert not torch.equal(
        first_attention_weight(init, folder / "encoder"), first_attention_weight(init, tmp_path / "fresh")
    )

    for train in (runs / "train_tokenizer").iterdir():
        report = read_json(train / "init_report.json")
        assert f"stand-in pretrained ({objective})" in report["source"] and str(folder / "encoder") in report["source"]
        assert report["counts"]["copied"] > 0
    md = next((tmp_path / "r").rglob("README.md")).read_text()
    init_section = md.split("## Encoder initialisation")[1].split("##")[0]
    assert f"- 4, 8: {init} ViT" in init_section and f"stand-in pretrained ({objective})" in init_section
    assert ("; on its training images: " in init_section) == bool(probe)  # what the pretraining measured
    assert all(f"{key} " in init_section for key in probe)
    assert (
        f"from <run store>/pretrain_encoder/{pretrain[0].hash}/encoder (" in init_section and " copied" in init_section
    )


TEACHERS = {  # timm stand-ins (DINO's objective, SigLIP's on the class names) and a transformers one (I-JEPA's)
    "dinov2": ("dino", "{img_size: 16, patch_size: 4, embed_dim: 32, depth: 2, num_heads: 2}"),
    "siglip": ("siglip", "{img_size: 16, patch_size: 4, embed_dim: 32, depth: 2, num_heads: 2}"),
    "ijepa": (
        "ijepa",
        "{image_size: 16, patch_size: 4, hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 2, intermediate_size: 64}",
    ),
}


def first_block_weight(model: torch.nn.Module) -> Tensor:
    return next(p for n, p in model.named_parameters() if ".0." in n and n.endswith("weight") and p.ndim == 2)


@pytest.mark.slow
@pytest.mark.parametrize("init", TEACHERS)
def test_a_tokenizer_aligns_to_its_pretrained_teacher_and_is_evaluated_without_it(tmp_path, write_study, init):
    """SoftVQ's alignment teacher pretrained offline: the training loads what the pretraining saved (the
    record keeps the config without the run store's path), a rebuilt model for evaluation needs no teacher
    weights, and a teacher left without them refuses to give features instead of aligning to noise."""
    from types import SimpleNamespace

    from benchmark.checkpoints import build_tokenizer
    from benchmark.encoder_pretraining import with_pretrained_teachers

    objective, stand_in = TEACHERS[init]
    study = write_study(f"""
        config:
          tokenizer:
            name: softvq
            size: tiny
            patch_size: 4
            align: {{init: {init}, stand_in: {stand_in}, pretrain: {{steps: 6, batch_size: 8, checkpoint_every: 3}}}}
        stages: [evaluate_tokenizer]
    """)
    plan = build_plan(study, "smoke", TINY)
    (pretrain,) = [s for s in plan.stages.values() if s.kind == "pretrain_align"]
    runs = tmp_path / "runs"
    assert main([str(study), "--profile", "smoke", "--runs", str(runs), "--results", str(tmp_path / "r"), *TINY]) == 0

    folder = runs / "pretrain_teacher" / pretrain.hash  # the folder every teacher role shares
    result = read_json(folder / "result.json")
    assert result["objective"] == objective
    assert ("zero_shot_accuracy" in result["probe"]) == (objective == "siglip")  # images against their class names
    (train,) = (runs / "train_tokenizer").iterdir()
    assert (
        f"tokenizer.align: the stand-in pretrained by pretrain_align {pretrain.hash}" in (train / "log.txt").read_text()
    )
    config = read_json(train / "stage.json")["config"]
    assert "weights" not in config["tokenizer"]["align"] and config["tokenizer"]["align"]["pretrain"]
    assert read_json(next((runs / "evaluate_tokenizer").iterdir()) / "result.json")["metrics"]["psnr"] > 0
    md = next((tmp_path / "r").rglob("README.md")).read_text()
    where = f"<run store>/pretrain_teacher/{pretrain.hash}"
    assert (
        f"## Alignment teachers\n\n- base: tokenizer.align: {init} stand-in pretrained ({objective}) in {where}" in md
    )
    assert ("; on its training images: zero_shot_accuracy " in md) == (objective == "siglip")

    ctx = SimpleNamespace(
        inputs={"pretrain_align": pretrain.hash},
        input_dir=lambda kind: folder.parent / pretrain.hash,
        log=logging.getLogger(),
    )
    teacher = build_tokenizer(with_pretrained_teachers(config, ctx)).teacher
    if init == "ijepa":  # the library's own loaders
        saved = transformers.IJepaModel.from_pretrained(folder / "encoder")
    else:
        saved = timm.create_model(f"local-dir:{folder / 'encoder'}", pretrained=True)
    assert torch.equal(first_block_weight(teacher.model()), first_block_weight(saved))
    assert (folder / "losses.csv").read_text().count("\n") > 1  # it trained
    with pytest.raises(ConfigError, match="its offline pretraining .* has not given it weights"):
        build_tokenizer(config).teacher.teacher_features(torch.rand(1, 3, 16, 16))


def test_dino_saves_its_teacher_as_dino_publishes_it(tmp_path):
    """DINO's released weights and evaluations are the EMA teacher's (``--checkpoint_key teacher``): the
    saved stand-in is the teacher, not the student it follows."""
    from safetensors.torch import load_file

    dino = objective("dino", out_dim=32)
    with torch.no_grad():
        for p in dino.vit.parameters():
            p.add_(torch.randn_like(p))  # a trained student, ahead of its teacher
    dino.before_step(1, 4)
    dino.save(tmp_path / "dino")
    saved = load_file(tmp_path / "dino" / "model.safetensors")
    teacher, student = dino.teacher.state_dict(), dino.vit.state_dict()
    assert saved.keys() == teacher.keys()
    assert all(torch.equal(saved[k], teacher[k]) for k in saved)
    assert not all(torch.equal(saved[k], student[k]) for k in saved)
