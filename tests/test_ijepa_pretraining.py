"""I-JEPA's objective for an offline stand-in (benchmark/pretraining_objectives.py ``ijepa``): its masks,
Eq. 1's loss, the EMA target encoder, a short training saved with ``save_pretrained`` and loaded back
through the encoder entry, and the plan-time checks."""

from __future__ import annotations

import csv

import pytest
import torch
import torch.nn.functional as F
from conftest import grads_of
from torch.utils.data import TensorDataset

from benchmark.encoder_pretraining import build_objective, pretrain_cost
from benchmark.encoders import build_encoder
from benchmark.errors import ConfigError
from benchmark.pretraining_objectives import JointEmbeddingPredictive, block_size, context_without_targets, sample_masks
from benchmark.train import fit

STAND_IN = {
    "image_size": 32,
    "patch_size": 4,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
}
GRID = (8, 8)


def objective(**options) -> JointEmbeddingPredictive:
    torch.manual_seed(0)
    obj, _ = build_objective({"init": "ijepa", "stand_in": STAND_IN, "pretrain": {"steps": 4, **options}})
    return obj


def rectangle(patches: torch.Tensor) -> tuple[int, int]:
    """The (height, width) of the block of raster indices ``patches`` on GRID, asserting it is one."""
    rows, cols = patches // GRID[1], patches % GRID[1]
    h, w = int(rows.max() - rows.min()) + 1, int(cols.max() - cols.min()) + 1
    assert sorted(patches.tolist()) == sorted(
        (r * GRID[1] + c)
        for r in range(int(rows.min()), int(rows.min()) + h)
        for c in range(int(cols.min()), int(cols.min()) + w)
    )
    return h, w


def test_masks_are_four_target_blocks_and_a_context_block_without_them():
    torch.manual_seed(0)
    for _ in range(5):
        context, targets = sample_masks(16, GRID, 4, (0.15, 0.2), (0.75, 1.5), (0.85, 1.0), torch.device("cpu"))
        assert targets.shape[:2] == (16, 4) and context.shape[0] == 16 and context.shape[1] >= 1
        for image_context, image_targets in zip(context, targets, strict=True):
            for block in image_targets:
                h, w = rectangle(block)
                # 15-20% of the 64 patches and aspect 0.75-1.5, up to the rounding of each side
                assert (h - 0.5) * (w - 0.5) <= 0.2 * 64 and (h + 0.5) * (w + 0.5) >= 0.15 * 64
                assert (h - 0.5) / (w + 0.5) <= 1.5 and (h + 0.5) / (w - 0.5) >= 0.75
            assert not set(image_context.tolist()) & set(image_targets.flatten().tolist())
            assert image_context.tolist() == sorted(set(image_context.tolist()))  # distinct, first k in raster order
    for _ in range(5):
        h, w = block_size(GRID, (0.85, 1.0), (1.0, 1.0))
        assert h == w and h in (7, 8)  # the context block: aspect 1, 85-100% of the grid


def test_the_context_keeps_a_patch_when_the_targets_cover_its_block():
    block = torch.zeros(1, 16, dtype=torch.bool)
    block[0, [0, 1, 4, 5]] = True  # a 2 x 2 context block on a 4 x 4 grid
    targets = torch.tensor([[[0, 1], [4, 5], [2, 3]]])  # the first two blocks cover it
    assert context_without_targets(block, targets)[0].nonzero().flatten().tolist() == [4, 5]  # less the first only
    torch.manual_seed(0)
    for _ in range(20):  # 2 x 2 grid: four one-patch targets often cover the whole image
        context, _ = sample_masks(3, (2, 2), 4, (0.15, 0.2), (0.75, 1.5), (0.85, 1.0), torch.device("cpu"))
        assert context.shape[1] >= 1


def test_loss_is_eq1_over_the_modules_own_pieces_and_trains_only_the_context_side():
    jepa = objective(predictor_depth=1)
    images = torch.rand(3, 3, 32, 32)
    x = jepa.normalize(images)
    torch.manual_seed(1)
    context, targets = jepa.masks(x)
    rows = torch.arange(3)[:, None]
    with torch.no_grad():
        s = jepa.target_encoder(pixel_values=x).last_hidden_state  # the library's own forward
        s = F.layer_norm(s, s.shape[-1:])
        h = jepa.vit.embeddings(x)[rows, context]
        for layer in jepa.vit.layers:
            h = layer(h)
        h = jepa.vit.layernorm(h)
        p = jepa.predictor
        per_block = []
        for j in range(4):  # the predictor once per target block
            z = torch.cat([p.embed(h) + p.pos[context], p.mask_token + p.pos[targets[:, j]]], dim=1)
            predicted = p.proj(p.norm(p.blocks(z)[:, context.shape[1] :]))
            per_block.append((predicted - s[rows, targets[:, j]]).pow(2).sum(-1).mean())
        expected = torch.stack(per_block).mean()
    torch.manual_seed(1)
    loss = jepa.loss([images])["ijepa"]
    torch.testing.assert_close(loss, expected)

    trained = grads_of(jepa, loss)
    context_side = {n for n, q in jepa.named_parameters() if n.startswith(("vit.", "predictor."))}
    assert context_side and trained == context_side
    assert not any(q.requires_grad for q in jepa.target_encoder.parameters())


def test_the_target_encoder_follows_the_context_encoder_with_a_linear_momentum():
    jepa = objective(momentum=0.99)
    with torch.no_grad():
        for q in jepa.vit.parameters():
            q.add_(1.0)
    before = [q.clone() for q in jepa.target_encoder.parameters()]
    jepa.before_step(0, total=10)  # nothing to follow before the first step
    assert all(torch.equal(old, new) for old, new in zip(before, jepa.target_encoder.parameters(), strict=True))
    jepa.before_step(6, total=10)  # after step 5 of 10: m = 0.99 + 0.01 * 5 / 10
    m = 0.995
    for old, new, online in zip(before, jepa.target_encoder.parameters(), jepa.vit.parameters(), strict=True):
        torch.testing.assert_close(new, m * old + (1 - m) * online)


def test_views_are_random_resized_crops_at_the_stand_ins_input_size():
    jepa = objective()
    images = torch.rand(1, 3, 16, 16).expand(4, -1, -1, -1)  # one image at the data's resolution, four times
    (view,) = jepa.views(images)
    assert jepa.num_views == 1 and view.shape == (4, 3, 32, 32)
    assert len({tuple(v.flatten().tolist()) for v in view}) == 4  # a crop of its own per image


def test_collapse_is_the_same_features_for_every_image():
    jepa = objective()
    images = torch.rand(8, 3, 16, 16)  # resized to the stand-in's 32 x 32
    assert jepa.collapse(images) is None
    jepa.target_encoder.layernorm.register_forward_hook(lambda _, __, out: torch.ones_like(out))
    assert "the same features" in jepa.collapse(images)


def test_a_short_pretraining_saves_a_stand_in_that_the_encoder_entry_loads(tmp_path):
    images = torch.rand(16, 3, 32, 32)
    options = {"steps": 4, "batch_size": 8, "lr": 1e-3, "warmup_steps": 0, "precision": "fp32", "log_every": 1}
    torch.manual_seed(0)
    jepa, loop = build_objective({"init": "ijepa", "stand_in": STAND_IN, "pretrain": options})
    start = {n: q.detach().clone() for n, q in jepa.state_dict().items()}

    def step(batch, i):
        jepa.before_step(i, loop.steps)
        return jepa(batch[0]), None

    terms, weights = fit(
        jepa, step, TensorDataset(images, torch.zeros(16)), loop, 0, tmp_path / "run", torch.device("cpu")
    )
    with open(tmp_path / "run" / "losses.csv") as f:
        losses = [float(row["ijepa"]) for row in csv.DictReader(f)]
    assert len(losses) == 4 and losses[-1] < losses[0] and terms["ijepa"] == pytest.approx(losses[-1])
    for name in ("vit.layers.0.attention.q_proj.weight", "target_encoder.layers.0.attention.q_proj.weight"):
        assert not torch.equal(weights[name], start[name]), name  # trained, and followed by the EMA

    jepa.load_state_dict(weights)
    folder = tmp_path / "encoder"
    jepa.save(folder)
    assert (folder / "model.safetensors").is_file() and (folder / "config.json").is_file()
    entry = build_encoder({"init": "ijepa", "stand_in": STAND_IN, "weights": str(folder)})
    with torch.no_grad():
        expected = jepa.vit(pixel_values=jepa.normalize(images[:4])).last_hidden_state
    torch.testing.assert_close(entry.teacher_features(images[:4]), expected)


def test_ijepa_pretraining_is_checked_at_plan_time():
    spec = {"init": "ijepa", "stand_in": STAND_IN, "pretrain": {"steps": 4}}
    entry = build_encoder(spec, where="tokenizer.align_local")
    assert entry.pretrain == {"steps": 4} and "stand-in pretrained (ijepa)" in entry.describe()
    costs = [pretrain_cost(spec)["train_pflops"] for _ in range(4)]  # the plan's estimate, on the meta device
    assert costs[0] > 0 and len(set(costs)) == 1  # the masks it counts are drawn from a fixed seed
    with pytest.raises(ConfigError, match=r"tokenizer\.align_local\.pretrain\.objective: 'dino' is not how ijepa"):
        build_encoder({**spec, "pretrain": {"objective": "dino"}}, where="tokenizer.align_local")
    with pytest.raises(ConfigError, match=r"pretrain\.mask_ratio: not an option of pretraining objective 'ijepa'"):
        build_encoder({**spec, "pretrain": {"mask_ratio": 0.5}}, where="tokenizer.align_local")
    with pytest.raises(
        ConfigError,
        match=r"encoder 'siglip2' has no offline pretraining objective .*pretrain mae, dino, dinov2, ijepa, siglip, "
        r"clip or depth_anything_v2 stand-ins",
    ):
        build_encoder({"init": "siglip2", "stand_in": {"image_size": 16}, "pretrain": {"steps": 4}})
