"""Depth-Anything's objective for an offline stand-in (benchmark/pretraining_objectives.py ``depth``): the
built-in scenes' depth maps, MiDaS's scale-and-shift-invariant and gradient-matching losses against
hand-written formulas, the least-squares alignment of the probe, a short training that learns the scenes'
depth, saved as transformers saves the model and loaded back through the encoder entry, and the plan-time
checks."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
import transformers
from conftest import grads_of
from PIL import Image
from torch.utils.data import default_collate

from benchmark.data import PROCEDURAL_KINDS, WALL_KINDS, DepthPairs, ProceduralShapes
from benchmark.encoder_pretraining import build_objective, pretrain_cost
from benchmark.encoders import build_encoder
from benchmark.errors import ConfigError
from benchmark.pretraining_objectives import (
    RelativeDepth,
    align_least_squares,
    gradient_matching,
    ssi_normalize,
)
from benchmark.study import build_plan

STAND_IN = {
    "image_size": 16,
    "patch_size": 4,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
}


def objective(**pretrain) -> RelativeDepth:
    torch.manual_seed(0)
    spec = {"init": "depth_anything_v2", "stand_in": STAND_IN, "pretrain": {"steps": 4, **pretrain}}
    return build_objective(spec)[0]


def test_scenes_put_shapes_in_front_of_a_tilted_wall_and_keep_their_images():
    data = ProceduralShapes("train", resolution=32, num_classes=len(PROCEDURAL_KINDS), train_size=40)
    y = (np.arange(32) + 0.5) / 16 - 1
    for i in range(len(data)):
        image, label, depth = data.scene(i)
        assert torch.equal(image, data[i][0]) and label == data[i][1] and depth.shape == (1, 32, 32)
        kind = PROCEDURAL_KINDS[label]
        if kind in WALL_KINDS:  # a plane: depth is affine in the pixel position, between 2 and 3
            assert depth.min() >= 2 and depth.max() <= 3
            plane = np.stack([np.repeat(y, 32), np.tile(y, 32), np.ones(32 * 32)], 1)
            fit = np.linalg.lstsq(plane, depth.flatten().double().numpy(), rcond=None)
            assert fit[1].item() < 1e-8
        elif kind != "blob":  # a flat cut-out at 0.5 / size in [0.77, 1.43], in front of the wall
            near = depth.min()
            assert 0.5 / 0.65 - 1e-4 < near < 0.5 / 0.35 + 1e-4 and depth.max() <= 3
            assert ((depth - near).abs() < 1e-5).sum() > 10
    pairs = DepthPairs(data)
    image, depth = pairs[3]
    assert len(pairs) == len(data) and torch.equal(image, data[3][0]) and torch.equal(depth, data.scene(3)[2])


def test_depth_pairs_refuse_a_dataset_without_depth_maps(tmp_path):
    from benchmark.data import ImageFolderDataset

    for c in ("a", "b"):
        (tmp_path / "train" / c).mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "train" / c / "0.png")
    with pytest.raises(ConfigError, match="ImageFolderDataset has no depth maps"):
        DepthPairs(ImageFolderDataset("train", root=str(tmp_path), resolution=8))


def test_losses_are_midas_scale_and_shift_invariant_l1_and_gradient_matching():
    torch.manual_seed(1)
    d = torch.rand(2, 8, 8) + 0.5
    normalised = ssi_normalize(d)
    t = d.flatten(1).median(1).values[:, None, None]
    s = (d - t).abs().mean((1, 2), keepdim=True)
    torch.testing.assert_close(normalised, (d - t) / s)  # Eq. 5-6: median and mean absolute deviation
    torch.testing.assert_close(ssi_normalize(3.0 * d + 7.0), normalised)  # invariant to scale and shift

    r = torch.randn(2, 8, 8)
    expected = sum(
        ((q[:, :, 1:] - q[:, :, :-1]).abs().sum() + (q[:, 1:] - q[:, :-1]).abs().sum()) / q.numel()
        for q in (r, r[:, ::2, ::2], r[:, ::4, ::4])
    )
    torch.testing.assert_close(gradient_matching(r, 3), expected)
    torch.testing.assert_close(gradient_matching(r, 9), gradient_matching(r, 3))  # a 1x1 scale has no gradient
    assert gradient_matching(torch.full((2, 8, 8), 4.0), 4) == 0

    model = objective(gradient_weight=0.5, scales=2)
    images, depth = torch.rand(3, 3, 16, 16), torch.rand(3, 1, 16, 16) + 1.0
    terms = model.loss([images], depth)
    predicted = model.model(pixel_values=model.normalize(images)).predicted_depth
    residual = ssi_normalize(predicted) - ssi_normalize(1.0 / depth[:, 0])
    torch.testing.assert_close(terms["ssi"], residual.abs().mean())
    torch.testing.assert_close(terms["gradient"], 0.5 * gradient_matching(residual, 2))
    reached = grads_of(model, sum(terms.values()))
    assert any(n.startswith("vit.") for n in reached) and any(n.startswith("model.head.") for n in reached)
    assert any(n.startswith("model.neck.") for n in reached)


def test_the_head_starts_with_every_pixel_in_its_relus_active_range():
    """From random weights the head's output is tiny; at a zero last bias some seeds start (or after one AdamW
    step end) with every pixel below the final ReLU, a dead head that never learns. Its bias starts at 1."""
    images = torch.rand(8, 3, 16, 16)
    for seed in range(4):
        torch.manual_seed(seed)
        model = build_objective({"init": "depth_anything_v2", "stand_in": STAND_IN, "pretrain": {}})[0]
        with torch.no_grad():
            assert (model.predict(images) > 0.5).all()


def test_views_flip_image_and_depth_together():
    model = objective()
    images = torch.rand(8, 3, 16, 16)
    depth = images.mean(1, keepdim=True) + 1.0  # depth tied to the image: a flip of one alone breaks the tie
    seen = []
    model.loss = lambda views, targets: seen.append((views[0], targets)) or {}
    torch.manual_seed(3)
    model(images, depth)
    views, targets = seen[0]
    torch.testing.assert_close(targets, views.mean(1, keepdim=True) + 1.0)
    flipped = [not torch.equal(v, x) for v, x in zip(views, images, strict=True)]
    assert any(flipped) and not all(flipped)


def test_probe_alignment_is_least_squares_and_a_flat_map_is_a_collapse():
    torch.manual_seed(2)
    target = torch.rand(2, 6, 6)
    torch.testing.assert_close(align_least_squares(2.5 * target - 0.3, target), target)
    model = objective()
    images, depth = torch.rand(4, 3, 16, 16), torch.rand(4, 1, 16, 16) + 1.0
    metrics = model.probe_metrics(images, depth)
    assert set(metrics) == {"abs_rel", "delta1", "abs_rel_flat"} and 0 <= metrics["delta1"] <= 1
    assert model.collapse(images) is None
    with torch.no_grad():
        model.model.head.conv3.weight.zero_()
        model.model.head.conv3.bias.fill_(0.3)
    assert "flat depth map for every image" in model.collapse(images)


def test_a_short_pretraining_learns_the_scenes_depth_and_saves_a_loadable_model(tmp_path):
    from benchmark.train import fit

    data = DepthPairs(ProceduralShapes("train", resolution=16, train_size=96))
    images, depth = default_collate([data[i] for i in range(96)])
    options = {"steps": 120, "batch_size": 24, "lr": 2e-3, "warmup_steps": 10, "precision": "fp32", "log_every": 1}
    torch.manual_seed(0)
    spec = {"init": "depth_anything_v2", "stand_in": STAND_IN, "pretrain": options}
    model, loop = build_objective(spec)
    before = model.eval().probe_metrics(images, depth)

    def step(batch, i):
        return model.train()(batch[0], batch[1]), None

    _, weights = fit(model, step, data, loop, 0, tmp_path / "run", torch.device("cpu"))
    with open(tmp_path / "run" / "losses.csv") as f:
        rows = list(csv.DictReader(f))
    losses = [float(r["ssi"]) + float(r["gradient"]) for r in rows]
    assert len(losses) == 120 and sum(losses[-10:]) < 0.8 * sum(losses[:10])
    model.load_state_dict(weights)
    after = model.eval().probe_metrics(images, depth)
    assert after["abs_rel"] < 0.75 * before["abs_rel"] and after["abs_rel"] < 0.6 * after["abs_rel_flat"]
    assert after["delta1"] > before["delta1"]

    model.save(tmp_path / "encoder")
    own = transformers.DepthAnythingForDepthEstimation.from_pretrained(tmp_path / "encoder").eval()
    pixels = model.normalize(images[:4])
    with torch.no_grad():
        torch.testing.assert_close(own(pixel_values=pixels).predicted_depth, model.predict(images[:4]))
    entry = build_encoder({"init": "depth_anything_v2", "stand_in": STAND_IN, "weights": str(tmp_path / "encoder")})
    backbone = entry.model()
    assert all(torch.equal(p, q) for p, q in zip(backbone.state_dict().values(), model.vit.state_dict().values()))


def test_depth_pretraining_is_checked_at_plan_time(tmp_path, write_study):
    spec = {"init": "depth_anything_v2", "stand_in": STAND_IN, "pretrain": {"steps": 4, "scales": 2}}
    assert "stand-in pretrained (depth)" in build_encoder(spec).describe()
    costs = [pretrain_cost(spec)["train_pflops"] for _ in range(2)]
    assert costs[0] > 0 and costs[0] == costs[1]
    with pytest.raises(ConfigError, match=r"pretraining objective 'depth': .* got gradient_weight -1"):
        objective(gradient_weight=-1)

    for split in ("train", "val"):
        for c in ("a", "b"):
            (tmp_path / "data" / split / c).mkdir(parents=True)
            Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "data" / split / c / "0.png")
    stand_in = "{image_size: 16, patch_size: 4, hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 2}"
    study = write_study(f"""
        config:
          data: {{name: imagefolder, root: {tmp_path / "data"}, eval_dir: val, resolution: 16}}
          tokenizer: {{name: titok, size: tiny, encoder: {{init: depth_anything_v2, stand_in: {stand_in}, pretrain: {{steps: 4}}}}}}
        profiles: {{smoke: {{data: {{name: imagefolder, root: {tmp_path / "data"}, eval_dir: val, resolution: 16}}}}}}
    """)
    from benchmark.plan_checks import check_plan

    with pytest.raises(ConfigError, match=r"tokenizer\.encoder\.pretrain trains on depth maps, and data 'imagefolder'"):
        check_plan(build_plan(study, "smoke"))
