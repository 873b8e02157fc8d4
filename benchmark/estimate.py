"""What a study will cost before anything runs: each stage's model FLOPs, counted by
``torch.utils.flop_counter`` on models built on the meta device (shapes only: no memory, no weights
read; a second or so per model, more at paper scale), times the images it will process, in GPU-hours at a stated
utilisation of an H100's dense bf16 peak. ``run --dry-run`` prints it per stage and for the study.

    training           train_step FLOPs per image (forward + backward) x steps x batch
    evaluate_tokenizer (encode + decode) x eval images       cache_latents  encode x train images
    sample             generator forward x sampling steps (x2 with CFG) x images, + decode x images
    evaluate_generator Inception forward x (samples + reference images)
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import Any

from benchmark.config import finetune_train
from benchmark.errors import ConfigError, Tok1dError, WeightsError
from benchmark.graph import PRETRAINED, encoder_at, is_released_generator
from benchmark.model_counts import ModelCounts

ASSUMED_PEAK_TFLOPS = 989.0  # NVIDIA H100 SXM, dense bf16
ASSUMED_UTILISATION = 0.4
INCEPTION_GFLOPS = 5.7  # Inception-v3 at 299 px, forward


@dataclass
class StageCost:
    """A stage's estimated compute; ``note`` says what was counted or why nothing could be."""

    pflops: float
    note: str = ""

    @property
    def gpu_hours(self) -> float:
        return self.pflops * 1e15 / (ASSUMED_PEAK_TFLOPS * 1e12 * ASSUMED_UTILISATION) / 3600

    def describe(self) -> str:
        return f"~{self.gpu_hours:.3g} GPU-h ({self.pflops:.3g} PFLOP{'; ' + self.note if self.note else ''})"


def needs_values(exc: BaseException) -> bool:
    """Whether a meta-device failure comes from an op that needs real values (``.item()``, a data-
    dependent branch), not from shapes that do not fit."""
    text = str(exc)
    return "meta" in text.lower() or "item()" in text or "data-dependent" in text


def _tokenizer_costs(config: dict[str, Any], counts: ModelCounts) -> tuple[dict[str, Any], Any]:
    """GFLOPs per image of the tokenizer's train step, encode and decode, and its token spec."""
    from benchmark.base import TokenSpec

    tok = config["tokenizer"]
    known = counts.get("tokenizer", [tok, config["data"]["resolution"]], lambda: _count_tokenizer(config))
    return known["cost"], TokenSpec.from_dict(known["spec"])


def _count_tokenizer(config: dict[str, Any]) -> dict[str, Any]:
    import torch

    from benchmark.checkpoints import build_tokenizer
    from benchmark.cost import counted, gflops, tokenizer_cost

    res = config["data"]["resolution"]
    with torch.device("meta"):
        model = build_tokenizer(config).to("meta")  # buffers some libraries make on the CPU too
        try:
            cost = tokenizer_cost(model, res, torch.device("meta"))
        except RuntimeError as exc:
            if not needs_values(exc):  # a shape that does not fit: the config cannot run
                name = config["tokenizer"]["name"]
                raise ConfigError(
                    f"tokenizer '{name}' cannot process {res} px images (data.resolution): "
                    f"{str(exc).splitlines()[0][:300]}"
                ) from None
            images = torch.zeros(1, 3, res, res)  # a loss that needs values (a solver's test): count the network
            encode, tokens = counted(lambda: model.encode(images))
            decode = gflops(lambda: model.decode(tokens))
            cost = {
                "train_step_gflops": 3 * (encode + decode),
                "encode_gflops": encode,
                "decode_gflops": decode,
                "note": f"training counted as 3 x (encode + decode); its losses could not be traced ({exc})",
            }
    return {"cost": cost, "spec": dataclasses.asdict(model.token_spec)}


def _generator_costs(config: dict[str, Any], spec: Any, num_classes: int, counts: ModelCounts) -> list[float]:
    """GFLOPs per item of the generator's train step and of one sampling step (one forward pass)."""
    inputs = [config["generator"], config["sample"].get("options"), dataclasses.asdict(spec), num_classes]
    return counts.get("generator", inputs, lambda: _count_generator(config, spec, num_classes))


def _count_generator(config: dict[str, Any], spec: Any, num_classes: int) -> tuple[float, float]:
    import torch

    from benchmark.checkpoints import build_generator
    from benchmark.cost import generator_cost

    with torch.device("meta"):
        model = build_generator(config, spec, num_classes).to("meta")
        if hasattr(model, "check_sampler_options"):  # a sampler known once built (generators/released.py)
            model.check_sampler_options(config["sample"].get("options") or {})
        tokens = (
            torch.zeros(1, *spec.shape, dtype=torch.long)
            if spec.kind == "discrete"
            else torch.zeros(1, *spec.shape, spec.dim)
        )
        flat = tokens.reshape(1, spec.num_generated, *(() if spec.kind == "discrete" else (spec.dim,)))
        labels = torch.zeros(1, dtype=torch.long)
        train = generator_cost(model, flat, labels)["train_step_gflops"]
    return train, train / 3  # a sampling step is one forward: a third of forward + backward


def estimate_plan(plan: Any, counts: ModelCounts | None = None) -> dict[str, StageCost]:
    """Stage hash -> estimated cost of the stages of the selected cells. Building each cell's models on
    the meta device also checks what only a built model can tell (constructor checks, shapes that do
    not fit the resolution): such a config error is raised, naming the cell; anything else only leaves
    a stage without an estimate ("cost: -"). A model ``counts`` knows is not built again
    (benchmark/model_counts.py; None: every model is built)."""
    out: dict[str, StageCost] = {}
    counts = ModelCounts(None) if counts is None else counts
    for cell in (c for c in plan.cells if c.selected):
        costs: dict[str, StageCost] = {}
        # libraries that copy real weights into a meta model (lpips' heads) warn that the copy is a
        # no-op, which is the point here
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            try:
                _estimate_cell(cell.config, cell.stages, costs, counts)
            except WeightsError:  # weights not fetched yet: the stage that needs them says so when it runs
                continue
            except Tok1dError as exc:
                raise type(exc)(f"{plan.path}: cell {cell.label}: {exc}") from None
            except Exception:
                pass  # what could be estimated
        out.update(costs)
    counts.save()
    return out


def _estimate_cell(
    config: dict[str, Any], stages: dict[str, str], out: dict[str, StageCost], counts: ModelCounts
) -> None:
    tok, spec = _tokenizer_costs(config, counts)
    data, train = config["data"], config["train"]
    for path, kind in PRETRAINED.items():
        if kind in stages and stages[kind] not in out:  # a teacher in several roles: one stage
            from benchmark.encoder_pretraining import pretrain_cost

            teacher = encoder_at(config, path)
            cost = counts.get("pretraining", teacher, lambda teacher=teacher: pretrain_cost(teacher))
            out[stages[kind]] = StageCost(cost["train_pflops"])
    if "train_latent_2d" in stages:  # SelfBootTok's OT target, trained first
        from benchmark.checkpoints import latent_2d_tokenizer
        from benchmark.config import latent_2d_loop
        from benchmark.cost import training_pflops

        ot_target = config["tokenizer"]["latent_2d"]
        target, _ = _tokenizer_costs({"tokenizer": latent_2d_tokenizer(ot_target), "data": data}, counts)
        loop = latent_2d_loop(config)
        out[stages["train_latent_2d"]] = StageCost(training_pflops(target, loop.steps, loop.batch_size))
    if "train_tokenizer" in stages and config["tokenizer"]["name"] == "released":
        out[stages["train_tokenizer"]] = StageCost(0.0, "installed from its release, not trained")
    elif "train_tokenizer" in stages:
        out[stages["train_tokenizer"]] = StageCost(
            tok["train_step_gflops"] * train["steps"] * train["batch_size"] / 1e6
        )
    if "finetune_tokenizer" in stages:
        tuned = {**config, "tokenizer": {**config["tokenizer"], **config["finetune"]["tokenizer"]}}
        ft = finetune_train(config)
        tok, _ = _tokenizer_costs(tuned, counts)  # the cell's final tokenizer: what is evaluated and decodes
        out[stages["finetune_tokenizer"]] = StageCost(
            tok["train_step_gflops"] * ft["steps"] * ft["batch_size"] / 1e6, "network only" if "note" in tok else ""
        )
    from benchmark.data import split_images

    per_image = tok["encode_gflops"] + tok["decode_gflops"]
    if "evaluate_tokenizer" in stages:
        n = split_images(data, "eval", config["eval"].get("num_images"))
        out[stages["evaluate_tokenizer"]] = (
            StageCost(per_image * n / 1e6) if n is not None else StageCost(0.0, f"{per_image:.3g} GFLOP per eval image")
        )
    n_train = split_images(data, "train")
    if "cache_latents" in stages:
        out[stages["cache_latents"]] = (
            StageCost(tok["encode_gflops"] * n_train / 1e6)
            if n_train is not None
            else StageCost(0.0, f"{tok['encode_gflops']:.3g} GFLOP per train image")
        )
    if "train_generator" not in stages:
        return
    classes = data.get("num_classes", 1000) if data.get("name") == "procedural" else 1000
    try:
        gen_train, gen_forward = _generator_costs(config, spec, classes, counts)
    except ConfigError:  # a bad generator option fails the plan, as a bad tokenizer option does
        raise
    except (RuntimeError, ValueError) as exc:  # e.g. a loss that needs teacher features: no estimate
        out[stages["train_generator"]] = StageCost(0.0, f"not estimated: {str(exc).splitlines()[0][:80]}")
        return
    gt = config["generator_train"]
    if is_released_generator(config):
        out[stages["train_generator"]] = StageCost(0.0, "installed from its release, not trained")
    else:
        out[stages["train_generator"]] = StageCost(gen_train * gt["steps"] * gt["batch_size"] / 1e6)
    sample = config["sample"]
    if "sample" in stages:
        steps = sample.get("steps") or 1
        per = gen_forward * steps * (2 if sample["cfg_scale"] != 1.0 else 1) + tok["decode_gflops"]
        out[stages["sample"]] = StageCost(
            per * sample["num_images"] / 1e6, "sampling steps unknown: one counted" if not sample.get("steps") else ""
        )
    if "evaluate_generator" in stages:
        out[stages["evaluate_generator"]] = StageCost(INCEPTION_GFLOPS * (sample["num_images"] + (n_train or 0)) / 1e6)
