"""SigLIP's objective for an offline stand-in (benchmark/pretraining_objectives.py ``siglip``): captions as
bytes, Algorithm 1's sigmoid loss with repeated captions, a short training on the built-in images that
learns to match them to their class names, saved with timm and loaded back through the encoder entry,
and the plan-time checks."""

from __future__ import annotations

import csv

import pytest
import torch
import torch.nn.functional as F
from conftest import grads_of
from torch.utils.data import DataLoader, Subset

from benchmark.data import ProceduralShapes
from benchmark.encoder_pretraining import build_objective, pretrain_cost, save_stand_in
from benchmark.encoders import build_encoder
from benchmark.errors import ConfigError
from benchmark.pretraining_objectives import BYTE_PAD, SigmoidLanguageImage, caption_bytes
from benchmark.train import fit

STAND_IN = {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2}
NAMES = ["circle", "stripes", "checker"]


def objective(names=NAMES, **options) -> SigmoidLanguageImage:
    torch.manual_seed(0)
    obj, _ = build_objective(
        {"init": "siglip", "stand_in": STAND_IN, "pretrain": {"steps": 4, **options}}, class_names=names
    )
    return obj


def test_captions_are_utf8_bytes_right_padded_and_truncated():
    ids = caption_bytes(["ab", "é", "abcdef"], 4)
    assert ids.tolist() == [[97, 98, BYTE_PAD, BYTE_PAD], [0xC3, 0xA9, BYTE_PAD, BYTE_PAD], [97, 98, 99, 100]]
    sig = objective(template="a {}")
    assert sig.captions.shape == (3, 32) and bytes(sig.captions[1][sig.captions[1] < BYTE_PAD].tolist()) == b"a stripes"


def test_loss_is_algorithm_1_with_matching_captions_positive_and_trains_both_towers():
    sig = objective()
    images, labels = torch.rand(6, 3, 16, 16), torch.tensor([0, 1, 2, 0, 1, 1])
    loss = sig.loss([images], labels)["siglip"]

    # Algorithm 1 from the module's pieces: the MAP head's pooled image embedding, the text tower's pooled one
    x = F.normalize(sig.vit.forward_head(sig.vit.forward_features(sig.normalize(images)), pre_logits=True), dim=-1)
    y = F.normalize(sig.text(input_ids=sig.captions[labels]).pooler_output, dim=-1)
    logits = x @ y.T * 10.0 - 10.0  # t = exp(log 10), b = -10 at initialisation
    z = torch.tensor([[1.0 if labels[i] == labels[j] else -1.0 for j in range(6)] for i in range(6)])
    torch.testing.assert_close(loss, -F.logsigmoid(z * logits).sum() / 6)

    distinct = torch.tensor([0, 1, 2])  # every caption different: z is Algorithm 1's 2 I - 1
    x3, y3 = x[:3], F.normalize(sig.text(input_ids=sig.captions[distinct]).pooler_output, dim=-1)
    expected = -F.logsigmoid((2 * torch.eye(3) - 1) * (x3 @ y3.T * 10.0 - 10.0)).sum() / 3
    torch.testing.assert_close(sig.loss([images[:3]], distinct)["siglip"], expected)

    grads = grads_of(sig, loss)
    assert {"vit.attn_pool.q.weight", "vit.blocks.0.attn.qkv.weight", "logit_scale", "logit_bias"} <= grads
    assert "text.head.weight" in grads and "text.encoder.layers.0.self_attn.q_proj.weight" in grads
    with pytest.raises(ValueError, match="give the labels"):
        sig.loss([images])


def test_views_are_the_images_resized_without_augmentation():
    sig = objective()
    images = torch.rand(2, 3, 32, 32)
    (view,) = sig.views(images)
    assert view.shape == (2, 3, 16, 16)
    torch.testing.assert_close(sig.views(images)[0], view)  # nothing random
    at_size = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(sig.views(at_size)[0], at_size)  # no crop, flip or colour change


def test_collapse_is_the_same_embedding_for_every_image():
    sig = objective()
    images = torch.rand(8, 3, 16, 16)
    assert sig.collapse(images) is None
    sig.vit.attn_pool.register_forward_hook(lambda _, __, out: torch.ones_like(out))
    assert "the same embedding" in sig.collapse(images)


def test_a_short_pretraining_matches_images_to_their_class_names_and_saves_a_loadable_stand_in(tmp_path):
    data = ProceduralShapes("train", resolution=16, num_classes=3, train_size=96)
    options = {"steps": 120, "batch_size": 24, "lr": 3e-3, "warmup_steps": 10, "precision": "fp32", "log_every": 1}
    torch.manual_seed(0)
    sig, loop = build_objective(
        {"init": "siglip", "stand_in": STAND_IN, "pretrain": options}, class_names=data.class_names
    )
    images, labels = next(iter(DataLoader(data, batch_size=96)))

    @torch.no_grad()
    def zero_shot() -> float:  # each image's nearest caption among the three class names
        texts = F.normalize(sig.text(input_ids=sig.captions).pooler_output, dim=-1)
        accuracy = (sig.embed_images(images) @ texts.T).argmax(1).eq(labels).float().mean().item()
        assert sig.probe_metrics(images, labels) == {"zero_shot_accuracy": pytest.approx(accuracy)}
        return accuracy

    before = zero_shot()

    def step(batch, i):
        sig.before_step(i, loop.steps)
        return sig(batch[0], batch[1]), None

    terms, weights = fit(sig, step, Subset(data, range(96)), loop, 0, tmp_path / "run", torch.device("cpu"))
    with open(tmp_path / "run" / "losses.csv") as f:
        losses = [float(row["siglip"]) for row in csv.DictReader(f)]
    assert len(losses) == 120 and sum(losses[-10:]) < 0.2 * sum(losses[:10])
    sig.load_state_dict(weights)
    sig.eval()
    assert zero_shot() > max(before, 0.9)  # it learned which caption goes with which shape

    folder = tmp_path / "encoder"
    save_stand_in(sig.vit.cpu(), "timm", folder)
    entry = build_encoder({"init": "siglip", "stand_in": STAND_IN, "weights": str(folder)})
    with torch.no_grad():
        expected = sig.vit.forward_features(sig.normalize(images[:4]))
    torch.testing.assert_close(entry.teacher_features(images[:4]), expected)


def test_siglip_pretraining_is_checked_at_plan_time():
    spec = {"init": "siglip", "stand_in": STAND_IN, "pretrain": {"steps": 4, "template": "an image of {}"}}
    entry = build_encoder(spec, where="tokenizer.align_local")
    assert "stand-in pretrained (siglip)" in entry.describe()
    costs = [pretrain_cost(spec)["train_pflops"] for _ in range(2)]
    assert costs[0] > 0 and costs[0] == costs[1]
    with pytest.raises(
        ConfigError,
        match=r"pretrain\.class_names: not an option of any pretraining objective \(mae, dino, ijepa, siglip\)",
    ):
        build_encoder({**spec, "pretrain": {"class_names": ["a"]}}, where="tokenizer.align_local")
    with pytest.raises(ConfigError, match=r"'siglip': needs the dataset's class names"):
        objective(names=[])
    with pytest.raises(ConfigError, match=r"template with '\{\}'"):
        objective(template="no slot")
    with pytest.raises(ConfigError, match=r"encoder 'siglip2' has no offline pretraining objective"):
        build_encoder({"init": "siglip2", "stand_in": {"image_size": 16}, "pretrain": {"steps": 4}})
