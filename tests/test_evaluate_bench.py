"""``python -m benchmark.evaluate`` on stored checkpoints and image sets, and ``python -m benchmark.bench``.

Checkpoints are random tiny models saved in the run-store layout the stages write; Inception has
random weights (tests/test_fid.py), so FID values are only compared with each other.
"""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from benchmark import bench, evaluate
from benchmark.checkpoints import build_generator, build_tokenizer, save_tokenizer
from benchmark.data import build_dataset
from benchmark.latents import write_cache
from benchmark.stage_context import StageContext
from benchmark.store import RunStore, write_json
from benchmark.tokenizer_stages import evaluate_tokenizer

DATA = {"name": "procedural", "resolution": 16, "num_classes": 8, "train_size": 12, "eval_size": 8}
TOKENIZER = {"name": "titok", "size": "tiny", "patch_size": 4, "codebook_size": 64, "num_latent_tokens": 8}
GENERATOR = {"name": "maskgit", "size": "tiny"}

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run store with a random tiny TiTok (train_tokenizer/tok), its latent cache of the 12 training
    images (cache_latents/lat) and a random tiny MaskGIT on them (train_generator/gen)."""
    root = tmp_path_factory.mktemp("runs")
    torch.manual_seed(0)
    config = {"data": DATA, "tokenizer": TOKENIZER}
    tokenizer = build_tokenizer(config).eval()
    save_tokenizer(root / "train_tokenizer" / "tok", config, tokenizer.state_dict())
    meta = write_cache(tokenizer, build_dataset(DATA, "train"), root / "cache_latents" / "lat", torch.device("cpu"))
    write_json(
        root / "cache_latents" / "lat" / "stage.json", {"kind": "cache_latents", "inputs": {"train_tokenizer": "tok"}}
    )
    generator = build_generator({"generator": GENERATOR}, tokenizer.token_spec, meta["num_classes"])
    (root / "train_generator" / "gen").mkdir(parents=True)
    save_file(generator.state_dict(), str(root / "train_generator" / "gen" / "model.safetensors"))
    write_json(
        root / "train_generator" / "gen" / "stage.json",
        {"kind": "train_generator", "config": {"seed": 0, "generator": GENERATOR}, "inputs": {"cache_latents": "lat"}},
    )
    return root


def run_json(argv: list[str], path: Path) -> dict:
    assert evaluate.main([*argv, "--device", "cpu", "--json", str(path)]) == 0
    return json.loads(path.read_text())


def sample_images(n: int = 10) -> np.ndarray:
    """``n`` procedural eval images (16 px) as (N, H, W, 3) uint8."""
    dataset = build_dataset({**DATA, "eval_size": n}, "eval")
    images = torch.stack([dataset[i][0] for i in range(n)])
    return (images * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


# ---------------------------------------------------------------------------------------------
# Tokenizers


@pytest.mark.slow
def test_tokenizer_folder_deterministic_same_as_stage_and_printed(
    runs: Path, weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    folder = runs / "train_tokenizer" / "tok"
    argv = [
        str(folder),
        "--metrics",
        "psnr",
        "ssim",
        "codebook_usage",
        "rfid",
        "--inception-weights",
        str(weights),
        "--num-images",
        "6",
        "--batch-size",
        "4",
        "--cache",
        str(tmp_path / "fid_stats"),
    ]
    first = run_json(argv, tmp_path / "a.json")
    printed = capsys.readouterr().out
    second = run_json([*argv, "--out", str(tmp_path / "out")], tmp_path / "b.json")
    assert first["metrics"] == second["metrics"]  # bit for bit
    metrics = first["metrics"]
    assert {"psnr", "ssim", "codebook_usage", "codebook_perplexity", "rfid"} <= set(metrics)
    assert 0 < metrics["psnr"] < 100 and -1 < metrics["ssim"] < 1 and metrics["rfid"] > 0
    assert 0 < metrics["codebook_usage"] <= 100
    assert first["mode"] == "tokenizer" and first["protocol"]["num_images"] == 6
    assert (tmp_path / "out" / "reconstructions.png").is_file()
    # The printed report: a markdown table of the metrics, then the protocol (rFID's in full).
    header = next(line for line in printed.splitlines() if line.startswith("| path"))
    assert [c.strip() for c in header.strip("|").split("|")][:3] == ["path", "psnr", "ssim"]
    assert f"{metrics['psnr']:.4g}" in printed and "## Protocol" in printed
    assert "6 images of the eval split" in printed and "weights_sha256" in printed
    # The study's evaluate_tokenizer stage gives the same numbers.
    eval_cfg = {"metrics": ["psnr", "ssim", "codebook_usage", "rfid"], "num_images": 6, "batch_size": 4}
    ctx = StageContext(
        "evaluate_tokenizer",
        "h",
        {"data": DATA, "eval": {**eval_cfg, "inception_weights": str(weights)}},
        {"train_tokenizer": "tok"},
        {"device": "cpu"},
        tmp_path / "stage",
        RunStore(runs),
        logging.getLogger("test"),
    )
    stage = evaluate_tokenizer(ctx)["metrics"]
    assert stage == {k: metrics[k] for k in stage} and "rfid" in stage


@pytest.mark.slow
def test_rfid_originals_run_through_inception_once(
    runs: Path, weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """rFID's originals are the eval split's first images whatever the tokenizer: their statistics are
    cached (benchmark.fid.dataset_reference_stats), and the rFID is the one computed without the cache."""
    from benchmark.config import EvalConfig
    from benchmark.fid import InceptionV3
    from benchmark.tokenizer_eval import evaluate_tokenizer as evaluate_folder

    seen: list[int] = []
    call = InceptionV3.__call__
    monkeypatch.setattr(InceptionV3, "__call__", lambda self, x, memo=False: seen.append(len(x)) or call(self, x, memo))
    folder, cpu = runs / "train_tokenizer" / "tok", torch.device("cpu")
    cfg = EvalConfig(metrics=["rfid"], num_images=6, batch_size=4, inception_weights=str(weights))
    uncached = evaluate_folder(folder, DATA, cfg, cpu)
    assert sum(seen) == 12  # originals and reconstructions
    assert uncached.protocol["metric_protocols"][0]["reference"] == "originals of the evaluated batches"
    cache = tmp_path / "fid_stats"
    seen.clear()
    first = evaluate_folder(folder, DATA, cfg, cpu, reference_cache=cache)
    assert sum(seen) == 12 and len(list(cache.glob("*.npz"))) == 1
    seen.clear()
    again = evaluate_folder(folder, DATA, cfg, cpu, reference_cache=cache)
    assert sum(seen) == 6  # the reconstructions only
    assert again.metrics == first.metrics and first.metrics["rfid"] == pytest.approx(uncached.metrics["rfid"], rel=1e-9)
    assert "procedural eval split, 6 images" in again.protocol["metric_protocols"][0]["reference"]


def test_tokenizer_split_and_data_overrides(runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = str(runs / "train_tokenizer" / "tok")
    train = run_json([folder, "--split", "train", "--metrics", "psnr", "--data", "train_size=5"], tmp_path / "t.json")
    assert train["protocol"]["split"] == "train" and train["protocol"]["num_images"] == 5
    assert train["protocol"]["data"] == {**DATA, "train_size": 5}
    evaluated = run_json([folder, "--metrics", "psnr", "--num-images", "5"], tmp_path / "e.json")
    assert evaluated["metrics"]["psnr"] != train["metrics"]["psnr"]  # other images
    assert evaluate.main([folder, "--data", "resolution=32", "--device", "cpu"]) == 2
    assert "trained at 16 px" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Generators and generated images


@pytest.mark.slow
def test_generator_folder_samples_deterministically(
    runs: Path, weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    folder, tokenizer = runs / "train_generator" / "gen", runs / "train_tokenizer" / "tok"
    cache = tmp_path / "fid_stats"
    argv = [
        str(folder),
        "--tokenizer",
        str(tokenizer),
        "--num-images",
        "10",
        "--batch-size",
        "4",
        "--steps",
        "2",
        "--seed",
        "3",
        "--inception-weights",
        str(weights),
        "--cache",
        str(cache),
    ]
    first = run_json([*argv, "--out", str(tmp_path / "a")], tmp_path / "a.json")
    printed = capsys.readouterr().out
    assert first["metrics"]["gfid"] > 0 and first["metrics"]["is_mean"] >= 1 - 1e-9  # exp(KL) >= 1, up to rounding
    images = np.load(tmp_path / "a" / "images.npy")
    assert images.shape == (10, 16, 16, 3) and images.dtype == np.uint8 and images.std() > 0
    assert np.load(tmp_path / "a" / "labels.npy").tolist() == [i % 8 for i in range(10)]  # balanced
    assert json.loads((tmp_path / "a" / "result.json").read_text())["protocol"]["seed"] == 3  # a sample folder
    # gFID's default reference: the tokenizer data's train split (12 images), computed once and cached.
    assert len(list(cache.glob("*.npz"))) == 1
    assert "procedural train split, 12 images" in first["protocol"]["metric_protocols"][0]["reference"]
    assert first["protocol"]["sampling"]["seed"] == 3 and first["protocol"]["sampling"]["steps"] == 2
    assert "10 generated images, labels balanced (i mod C), seed 3, cfg 1.0, steps 2" in printed
    # Same seed: the same images and numbers (IS only: each FID costs seconds of a 2048 x 2048 eig).
    again = run_json([*argv, "--metrics", "inception_score", "--out", str(tmp_path / "b")], tmp_path / "b.json")
    np.testing.assert_array_equal(np.load(tmp_path / "b" / "images.npy"), images)
    assert again["metrics"] == {k: first["metrics"][k] for k in ("is_mean", "is_std")}
    run_json([*argv, "--metrics", "inception_score", "--seed", "4", "--out", str(tmp_path / "c")], tmp_path / "c.json")
    assert not np.array_equal(np.load(tmp_path / "c" / "images.npy"), images)


def test_sample_folder_npz_and_image_folder(weights: Path, tmp_path: Path) -> None:
    images = sample_images(10)
    (tmp_path / "samples").mkdir()
    np.save(tmp_path / "samples" / "images.npy", images)
    np.savez(tmp_path / "samples.npz", arr_0=images)
    (tmp_path / "pngs").mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image).save(tmp_path / "pngs" / f"{i:02d}.png")
    # The three sources give the same images (--num-images: the first ones) ...
    for limit in (None, 4):
        loaded = [
            evaluate.load_images(tmp_path / name, evaluate.detect_mode(tmp_path / name), limit, tmp_path, 3)
            for name in ("samples", "samples.npz", "pngs")
        ]
        for array in loaded:
            np.testing.assert_array_equal(array, images[:limit])
    # ... and gFID / IS of an ADM-style sample batch against ADM-style reference statistics.
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "ref.npz", mu=rng.normal(size=2048), sigma=np.eye(2048))
    result = run_json(
        [str(tmp_path / "samples.npz"), "--inception-weights", str(weights), "--reference", str(tmp_path / "ref.npz")],
        tmp_path / "r.json",
    )
    assert result["mode"] == "npz" and result["protocol"]["num_images"] == 10
    assert result["metrics"]["gfid"] > 0 and result["metrics"]["is_mean"] >= 1 - 1e-9
    assert "ref.npz (mu, sigma)" == result["protocol"]["metric_protocols"][0]["reference"]


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", "no such file or folder"),
        ("empty", "an empty folder"),
        ("junk_folder", "none of the expected files"),
        ("junk.npz", "is not an .npz archive"),
        ("stats.npz", r"holds reference statistics \(mu, sigma\), not images: pass it as --reference"),
        ("gray.npz", r"expected images as an \(N, H, W, 3\) uint8 array"),
        ("no_reference", "gFID needs reference statistics"),
        ("few", "2 images; gfid and inception_score need at least 10"),
        ("generator", "--tokenizer DIR is required"),
    ],
)
def test_bad_input_is_one_clear_error(
    case: str, message: str, runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    path = tmp_path / case
    if case in ("empty", "junk_folder", "no_reference", "few"):
        path.mkdir()
    if case == "junk_folder":
        (path / "notes.txt").write_text("no images here")
    if case in ("no_reference", "few"):
        np.save(path / "images.npy", sample_images(10 if case == "no_reference" else 2))
    if case == "junk.npz":
        path.write_text("not a zip")
    if case == "stats.npz":
        np.savez(path, mu=np.zeros(2048), sigma=np.eye(2048))
    if case == "gray.npz":
        np.savez(path, arr_0=np.zeros((4, 8, 8), np.uint8))
    if case == "generator":
        path = runs / "train_generator" / "gen"
    assert evaluate.main([str(path), "--device", "cpu"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1 and captured.err.startswith("error: ")
    assert re.search(message, captured.err), captured.err
    if case not in ("generator", "no_reference"):
        assert str(path) in captured.err


# ---------------------------------------------------------------------------------------------
# Speed benchmark


TIMING = ("ms_per_call", "ms_q1", "ms_q3", "ms_min", "ms_max", "images_per_s", "tokens_per_s")


def check_numbers(row: dict) -> None:
    """A timed row: a consistent median, quartiles and extremes, FLOPs, throughput and memory."""
    assert "error" not in row and "skipped" not in row, row
    assert row["calls"] >= 1 and row["warmup"] >= 0 and row["params"] > 0
    assert row["ms_min"] <= row["ms_q1"] <= row["ms_per_call"] <= row["ms_q3"] <= row["ms_max"]
    assert row["images_per_s"] == pytest.approx(1e3 * row["images_per_call"] / row["ms_per_call"])
    assert row["gflops_per_image"] > 0 and row["peak_mem_mb"] >= 0
    assert row["tflops_per_s"] == pytest.approx(row["gflops_per_image"] * row["images_per_s"] / 1e3)
    assert row["mfu"] is None  # the CPU has no bf16 peak


def test_bench_reports_every_op_as_json(runs: Path, capsys: pytest.CaptureFixture) -> None:
    argv = [
        *("--tokenizer", "titok", "size=tiny", "patch_size=4", "codebook_size=64", "num_latent_tokens=8"),
        *("--tokenizer-dir", str(runs / "train_tokenizer" / "tok")),
        *("--generator", "maskgit", "size=tiny"),
        *("--image-size", "16", "--batch-size", "2", "--iters", "2", "--warmup", "0", "--min-time", "0"),
        *("--steps", "2", "--num-classes", "8", "--device", "cpu"),
    ]
    assert bench.main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["schema"] == "tok1d.bench/2" and report["suite"] is None
    assert report["device"].startswith("cpu") and report["torch"] == torch.__version__
    assert report["peak_bf16_tflops"] is None and report["settings"]["batch_size"] == 2
    assert "ru_maxrss" in report["memory"] and "flop_counter" in report["flops"]
    rows = report["results"]
    ops = [(r["component"], r["op"]) for r in rows]
    tokenizer_ops = [("tokenizer", op) for op in ("encode", "decode", "evaluate", "train_step")]
    generator_ops = [("generator", "train_step"), ("generator", "sample")]
    assert ops == (tokenizer_ops + generator_ops) * 2  # the random and the stored tokenizer
    for row in rows:
        check_numbers(row)
        assert row["batch_size"] == row["images_per_call"] == 2 and row["calls"] == 2
        assert row["tokens_per_s"] == pytest.approx(row["images_per_s"] * 8)
        assert row["precision"] == "float32" or row["precision"].startswith("float32 on cpu")
    by_op = {(r["component"], r["op"]): r for r in rows[:6]}
    encode, decode = by_op["tokenizer", "encode"]["gflops_per_image"], by_op["tokenizer", "decode"]["gflops_per_image"]
    assert by_op["tokenizer", "evaluate"]["gflops_per_image"] > encode + decode  # + the SSIM filters
    step = by_op["tokenizer", "train_step"]
    assert step["gflops_per_image"] > 2 * encode and step["at_step"] == 0
    assert by_op["generator", "sample"]["steps"] == 2
    assert rows[6]["name"] == str(runs / "train_tokenizer" / "tok") and rows[6]["params"] == rows[0]["params"]


def test_bench_times_the_trainers_step(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """train_step is TrainStep.__call__ itself: once for the FLOP count, then the warm-up and timed calls."""
    from benchmark.train import TrainStep

    steps: list[int] = []
    original = TrainStep.__call__

    def counted(self: TrainStep, batch: tuple, step: int) -> tuple:
        steps.append(step)
        return original(self, batch, step)

    monkeypatch.setattr(TrainStep, "__call__", counted)
    adversarial = "adversarial={kind: patchgan, start: 3, width: 8, num_layers: 1}"
    argv = ["--tokenizer", "titok", "size=tiny", "patch_size=4", "codebook_size=64", "num_latent_tokens=8", adversarial]
    argv += ["--image-size", "16", "--batch-size", "2", "--iters", "3", "--warmup", "2", "--min-time", "0"]
    assert bench.main([*argv, "--device", "cpu"]) == 0
    row = json.loads(capsys.readouterr().out)["results"][-1]
    assert row["op"] == "train_step" and row["calls"] == 3 and row["warmup"] == 2
    assert steps == [3] * (1 + 2 + 3)  # at the discriminator's start step: its step is timed too
    assert row["at_step"] == 3 and row["adversary_active"] is True


@pytest.mark.slow
def test_bench_smoke_suite_has_every_entry_with_its_numbers(
    weights: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """``--suite smoke``: the paper suite's entries and code paths with tiny models (compiled rows through
    AOTAutograd without code generation, to keep the test short: dynamo's tracing is what is checked)."""
    from benchmark.bench_suites import PAPER, SMOKE

    compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: compile(fn, backend="aot_eager"))
    assert bench.main(["--suite", "smoke", "--device", "cpu", "--inception-weights", str(weights)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["suite"] == "smoke" and report["schema"] == "tok1d.bench/2"
    rows = report["results"]
    shape = [(e.component, op, e.settings.get("compile", False)) for e in SMOKE for op in e.ops]
    assert [(r["component"], r["op"], r["compile"]) for r in rows] == shape
    assert shape == [(e.component, op, e.settings.get("compile", False)) for e in PAPER for op in e.ops]
    for row in rows:
        check_numbers(row)
    rfid = next(r for r in rows if r["op"] == "rfid")
    assert rfid["num_images"] == rfid["images_per_call"] == 8 and rfid["calls"] == 1
    assert rfid["metrics"] == ["rfid", "psnr", "ssim", "codebook_usage"]
    sample = next(r for r in rows if r["op"] == "sample")
    assert sample["steps"] == 4 and sample["cfg_scale"] == 1.75 and sample["sampler"] == "sde"
    assert {r["tokens"] for r in rows if r["component"] == "generator"} == {8, 16}
    assert all(r["adversary_active"] for r in rows if r["component"] == "tokenizer" and r["op"] == "train_step")


def test_paper_suite_models_build_and_count(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the GPU suite builds can be built (on the meta device: shapes only, no memory) and counted."""
    from benchmark.bench_suites import PAPER
    from benchmark.cost import generator_cost, tokenizer_cost

    for entry in PAPER:
        with torch.device("meta"):
            if entry.component == "tokenizer":
                config = {"tokenizer": entry.config, "data": {"resolution": entry.settings["image_size"]}}
                model = build_tokenizer(config).to("meta")
                assert (
                    tokenizer_cost(model, entry.settings["image_size"], torch.device("meta"))["train_step_gflops"] > 0
                )
            else:
                model = build_generator({"generator": entry.config}, entry.tokens, 1000).to("meta")
                tokens = torch.zeros(1, entry.tokens.num_generated, entry.tokens.dim)
                assert generator_cost(model, tokens, torch.zeros(1, dtype=torch.int64))["train_step_gflops"] > 0


@pytest.mark.parametrize(
    "name, peak", [("NVIDIA H100 80GB HBM3", 989.0), ("NVIDIA H100 PCIe", 756.0), ("NVIDIA H200", 989.0), ("X", None)]
)
def test_mfu_peak_from_the_device_name(monkeypatch: pytest.MonkeyPatch, name: str, peak: float | None) -> None:
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: name)
    assert bench.peak_tflops(torch.device("cuda"), None)[0] == peak
    assert bench.peak_tflops(torch.device("cuda"), 500.0) == (500.0, "--peak-tflops")
    assert bench.peak_tflops(torch.device("cpu"), None)[0] is None


def test_time_budget_skips_what_has_not_started_and_stops_what_overruns(capsys: pytest.CaptureFixture) -> None:
    argv = ["--tokenizer", "titok", "size=tiny", "patch_size=4", "codebook_size=64", "num_latent_tokens=8"]
    assert bench.main([*argv, "--image-size", "16", "--device", "cpu", "--time-budget", "0"]) == 0
    rows = json.loads(capsys.readouterr().out)["results"]
    assert [r["op"] for r in rows] == ["encode", "decode", "evaluate", "train_step"]
    assert all("time budget" in r["skipped"] and "ms_per_call" not in r for r in rows)
    with pytest.raises(bench.OutOfTime, match="late"), bench.alarm(0.05, "late"):
        time.sleep(5)


def test_bench_bad_options_are_clear_errors(capsys: pytest.CaptureFixture) -> None:
    assert bench.main(["--tokenizer", "titokk"]) == 2
    assert "unknown tokenizer 'titokk'" in capsys.readouterr().err
    assert bench.main(["--tokenizer", "titok", "sise=tiny"]) == 2
    assert "--tokenizer: unknown key 'tokenizer.sise'. Did you mean: size?" in capsys.readouterr().err
    assert bench.main(["--generator", "maskgit"]) == 2
    assert "at least one --tokenizer" in capsys.readouterr().err
    assert bench.main(["--suite", "smoke", "--tokenizer", "titok"]) == 2
    assert "either --suite or" in capsys.readouterr().err


def test_cpu_attention_is_counted_as_on_the_meta_device_and_cuda() -> None:
    """PyTorch's FLOP counter counts the CPU's SDPA kernel as 0 FLOPs; ours counts it as the meta device's
    (forward: 2 x 2 b h s_q s_k d) and the CUDA flash kernel's backward formula, so a stage's cost on the
    CPU includes attention and an encode costs the same on the CPU and on the meta device."""
    from torch.utils.flop_counter import sdpa_backward_flop_count

    from benchmark.cost import gflops, tokenizer_cost

    b, h, s_q, s_k, d = 2, 3, 16, 24, 8
    q, k = torch.randn(b, h, s_q, d, requires_grad=True), torch.randn(b, h, s_k, d, requires_grad=True)
    attention = lambda: torch.nn.functional.scaled_dot_product_attention(q, k, k)  # noqa: E731
    forward = 2 * 2 * b * h * s_q * s_k * d
    assert round(gflops(attention) * 1e9) == forward
    assert round(gflops(lambda: attention().sum().backward()) * 1e9) == forward + sdpa_backward_flop_count(
        (b, h, s_q, d), (b, h, s_q, d), (b, h, s_k, d), (b, h, s_k, d)
    )
    torch.manual_seed(0)
    config = {"data": DATA, "tokenizer": TOKENIZER}
    cpu = tokenizer_cost(build_tokenizer(config), DATA["resolution"], torch.device("cpu"))
    with torch.device("meta"):
        meta = tokenizer_cost(build_tokenizer(config).to("meta"), DATA["resolution"], torch.device("meta"))
    assert cpu["encode_gflops"] == meta["encode_gflops"] and cpu["decode_gflops"] == meta["decode_gflops"]
