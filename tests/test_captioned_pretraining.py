"""The image-text objectives for offline stand-ins (benchmark/pretraining_objectives.py ``siglip`` and
``clip``): captions as bytes, SigLIP's sigmoid loss and CLIP's contrastive one with repeated captions, a
short training on the built-in images that learns to match them to their class names, saved the way
the library saves it and loaded back through the encoder entry, and the plan-time checks."""

from __future__ import annotations

import csv

import open_clip
import pytest
import torch
import torch.nn.functional as F
from conftest import grads_of
from torch.utils.data import DataLoader, Subset

from benchmark.data import ProceduralShapes
from benchmark.encoder_pretraining import build_objective, pretrain_cost
from benchmark.encoders import build_encoder
from benchmark.errors import ConfigError
from benchmark.pretraining_objectives import CaptionedObjective, caption_bytes

STAND_INS = {
    "siglip": {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2},
    "clip": {"image_size": 16, "patch_size": 4, "width": 32, "layers": 2, "head_width": 16},
}
NAMES = ["circle", "stripes", "checker"]


def objective(init: str, names=NAMES, **options) -> CaptionedObjective:
    torch.manual_seed(0)
    spec = {"init": init, "stand_in": STAND_INS[init], "pretrain": {"steps": 4, **options}}
    return build_objective(spec, class_names=names)[0]


def test_captions_are_utf8_bytes_with_an_optional_end_padded_and_truncated():
    ids = caption_bytes(["ab", "é", "abcdef"], 4, pad=256)
    assert ids.tolist() == [[97, 98, 256, 256], [0xC3, 0xA9, 256, 256], [97, 98, 99, 100]]
    ids = caption_bytes(["ab", "abcdef"], 4, pad=0, end=256)  # CLIP's: the end of text always kept
    assert ids.tolist() == [[97, 98, 256, 0], [97, 98, 99, 256]]
    sig = objective("siglip", template="a {}")
    assert sig.captions.shape == (3, 32) and bytes(sig.captions[1][sig.captions[1] < 256].tolist()) == b"a stripes"
    clip = objective("clip", template="a {}")
    assert clip.captions[1].tolist()[:10] == [*b"a stripes", 256] and set(clip.captions[1].tolist()[10:]) == {0}


def test_siglip_loss_is_algorithm_1_with_matching_captions_positive_and_trains_both_towers():
    sig = objective("siglip")
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


def test_clip_loss_is_clips_with_targets_spread_over_matching_captions():
    clip = objective("clip")
    images, labels = torch.rand(6, 3, 16, 16), torch.tensor([0, 1, 2, 0, 1, 1])
    loss = clip.loss([images], labels)["clip"]

    model = clip.clip  # open_clip's own encoders, projections and temperature (1 / 0.07 at initialisation)
    x = F.normalize(model.encode_image(clip.normalize(images)), dim=-1)
    y = F.normalize(model.encode_text(clip.captions[labels]), dim=-1)
    logits = x @ y.T / 0.07
    match = (labels[:, None] == labels[None, :]).float()
    target = match / match.sum(1, keepdim=True)
    expected = -((target * logits.log_softmax(1)).sum(1).mean() + (target * logits.T.log_softmax(1)).sum(1).mean()) / 2
    torch.testing.assert_close(loss, expected)

    distinct = torch.tensor([2, 0, 1])  # every caption different: CLIP's loss, the diagonal as targets
    logits = x[:3] @ F.normalize(model.encode_text(clip.captions[distinct]), dim=-1).T / 0.07
    clip_loss = (F.cross_entropy(logits, torch.arange(3)) + F.cross_entropy(logits.T, torch.arange(3))) / 2
    torch.testing.assert_close(clip.loss([images[:3]], distinct)["clip"], clip_loss)

    grads = grads_of(clip, loss)
    assert {"vit.conv1.weight", "vit.proj", "clip.logit_scale", "clip.token_embedding.weight"} <= grads
    assert "clip.text_projection" in grads and model.visual is clip.vit  # the stand-in is CLIP's image tower


@pytest.mark.parametrize("init", STAND_INS)
def test_views_are_the_images_resized_without_augmentation(init):
    captioned = objective(init)
    images = torch.rand(2, 3, 32, 32)
    (view,) = captioned.views(images)
    assert view.shape == (2, 3, 16, 16)
    torch.testing.assert_close(captioned.views(images)[0], view)  # nothing random
    at_size = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(captioned.views(at_size)[0], at_size)  # no crop, flip or colour change


@pytest.mark.parametrize("init", STAND_INS)
def test_collapse_is_the_same_embedding_for_every_image(init):
    captioned = objective(init)
    images = torch.rand(8, 3, 16, 16)
    assert captioned.collapse(images) is None
    pool = captioned.vit.attn_pool if init == "siglip" else captioned.vit.ln_post
    pool.register_forward_hook(lambda _, __, out: torch.ones_like(out))
    assert "the same embedding" in captioned.collapse(images)


def loaded(init: str, folder):
    """The saved stand-in as the encoder entry loads it, and as the library's own loader does."""
    entry = build_encoder({"init": init, "stand_in": STAND_INS[init], "weights": str(folder)})
    if init == "clip":
        own = open_clip.create_model(f"local-dir:{folder}").visual
    else:
        import timm

        own = timm.create_model(f"local-dir:{folder}", pretrained=True)
    return entry, own


@pytest.mark.parametrize("init", STAND_INS)
def test_a_short_pretraining_matches_images_to_their_class_names_and_saves_a_loadable_stand_in(tmp_path, init):
    data = ProceduralShapes("train", resolution=16, num_classes=3, train_size=96)
    lr = {"siglip": 3e-3, "clip": 1e-3}[init]
    options = {"steps": 120, "batch_size": 24, "lr": lr, "warmup_steps": 10, "precision": "fp32", "log_every": 1}
    torch.manual_seed(0)
    spec = {"init": init, "stand_in": STAND_INS[init], "pretrain": options}
    captioned, loop = build_objective(spec, class_names=data.class_names)
    images, labels = next(iter(DataLoader(data, batch_size=96)))

    @torch.no_grad()
    def zero_shot() -> float:  # each image's nearest caption among the three class names
        texts = captioned.embed_captions(captioned.captions)
        accuracy = (captioned.embed_images(images) @ texts.T).argmax(1).eq(labels).float().mean().item()
        assert captioned.probe_metrics(images, labels) == {"zero_shot_accuracy": pytest.approx(accuracy)}
        return accuracy

    before = zero_shot()

    def step(batch, i):
        captioned.before_step(i, loop.steps)
        return captioned(batch[0], batch[1]), None

    from benchmark.train import fit

    terms, weights = fit(captioned, step, Subset(data, range(96)), loop, 0, tmp_path / "run", torch.device("cpu"))
    with open(tmp_path / "run" / "losses.csv") as f:
        losses = [float(row[init]) for row in csv.DictReader(f)]
    assert len(losses) == 120 and sum(losses[-10:]) < 0.8 * sum(losses[:10])  # CLIP's floor: log 8 of log 24
    captioned.load_state_dict(weights)
    captioned.eval()
    assert zero_shot() > max(before, 0.9)  # it learned which caption goes with which shape

    folder = tmp_path / "encoder"
    captioned.save(folder)
    entry, own = loaded(init, folder)
    with torch.no_grad():
        if init == "clip":
            tokens = captioned.vit.transformer(captioned.vit._embeds(captioned.normalize(images[:4])))
            expected = own.transformer(own._embeds(captioned.normalize(images[:4])))
            torch.testing.assert_close(expected, tokens)  # open_clip's own loader gives the trained tower
            torch.testing.assert_close(
                own(captioned.normalize(images[:4])), captioned.vit(captioned.normalize(images[:4]))
            )
        else:
            expected = captioned.vit.forward_features(captioned.normalize(images[:4]))
            torch.testing.assert_close(own.forward_features(captioned.normalize(images[:4])), expected)
        features = entry.teacher_features(images[:4])
    assert features.shape[0] == 4 and torch.isfinite(features).all()
    if init == "siglip":
        torch.testing.assert_close(features, expected)


@pytest.mark.parametrize("init", STAND_INS)
def test_captioned_pretraining_is_checked_at_plan_time(init):
    spec = {"init": init, "stand_in": STAND_INS[init], "pretrain": {"steps": 4, "template": "an image of {}"}}
    entry = build_encoder(spec, where="tokenizer.align_local")
    assert f"stand-in pretrained ({init})" in entry.describe()
    costs = [pretrain_cost(spec)["train_pflops"] for _ in range(2)]
    assert costs[0] > 0 and costs[0] == costs[1]
    with pytest.raises(ConfigError, match=r"pretrain\.class_names: not an option of any pretraining objective"):
        build_encoder({**spec, "pretrain": {"class_names": ["a"]}}, where="tokenizer.align_local")
    with pytest.raises(ConfigError, match=rf"'{init}': needs the dataset's class names"):
        objective(init, names=[])
    with pytest.raises(ConfigError, match=r"template with '\{\}'"):
        objective(init, template="no slot")


def test_siglip2_has_no_objective():
    with pytest.raises(ConfigError, match=r"encoder 'siglip2' has no offline pretraining objective"):
        build_encoder({"init": "siglip2", "stand_in": {"image_size": 16}, "pretrain": {"steps": 4}})
