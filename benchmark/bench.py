"""``python -m benchmark.bench``: speed, FLOPs and memory of tokenizers and generators, as one JSON on stdout.

    python -m benchmark.bench --tokenizer titok size=B patch_size=16 num_latent_tokens=64 \\
        --generator sit size=XL --image-size 256 --batch-size 32 --bf16 --compile
    python -m benchmark.bench --suite paper   # one H100 / H200, under 8 minutes (benchmark/bench_suites.py)
    python -m benchmark.bench --suite smoke   # the same code paths with tiny models, minutes on a CPU

Ops (each on one batch already on the device; random weights, or trained ones with --tokenizer-dir):
  encode, decode   the tokenizer's, under the inference precision (benchmark/precision.py)
  evaluate         benchmark.tokenizer_eval.evaluate_batch: one encode, one decode, PSNR / SSIM / codebook
                   usage on the device (as the evaluate_tokenizer stage runs it)
  train_step       benchmark.train.TrainStep.__call__, the step the training loop runs: the loss (bf16
                   autocast on CUDA with --bf16), backward, gradient clipping, fused AdamW, the discriminator
                   step of adversarial tokenizers (timed at the step the discriminator starts, so it is on)
                   and the EMA update; no host sync inside. Generators train on random tokens of the spec.
  sample           the generator's ``sample`` (--steps, --cfg-scale) under the inference precision
  rfid             (--rfid-images N) benchmark.tokenizer_eval.reconstruction_metrics over N procedural
                   images: data loading, encode, decode, Inception (rFID), PSNR, SSIM, codebook usage
--compile compiles encode / decode, the trainer's forward (TrainStep's ``compile``) and the generator's
network for sampling (as the sample stage does); evaluate and rfid run as the stages run them.

Timing: --warmup untimed calls, then each call timed alone with time.perf_counter (the device synchronised
before each clock read) until at least --iters calls and --min-time seconds (at most 20 x --iters calls);
rfid is one timed pass after a warm-up pass on other images. FLOPs: torch.utils.flop_counter over one
eager call of the op at the timed batch, before the warm-up (train_step: the first call of an eager
TrainStep, replaced by a fresh compiled one for compiled rows; sample: at batch 1, scaled), so they count the matmuls, convolutions and attention of everything the call runs (frozen
teachers, LPIPS, discriminator, Inception), forward and backward. MFU = achieved TFLOP/s / the device's
dense bf16 peak (PEAK_BF16_TFLOPS, or --peak-tflops); null where the peak is unknown (the CPU).

JSON (schema ``tok1d.bench/2``)::

    {"schema": "tok1d.bench/2", "suite": "paper" | "smoke" | null,
     "device": "cuda: NVIDIA H100 80GB HBM3" | "cpu: x86_64, 2 threads", "torch": "2.x",
     "peak_bf16_tflops": 989.0 | null, "peak_source": str, "settings": {CLI settings},
     "memory": str, "timing": str, "flops": str, "wall_seconds": float,
     "results": [row, ...]}
    row: {"component": "tokenizer" | "generator", "name": str, "op": str, "params": int,
          "batch_size": int, "images_per_call": int, "precision": str, "compile": bool,
          "image_size": int (tokenizers) | "tokens_of": str, "tokens": int (generators),
          op settings ("at_step", "adversary_active" | "steps", "cfg_scale", "sampler" | "num_images", "metrics"),
          "warmup": int, "calls": int, "ms_per_call": median, "ms_q1": float, "ms_q3": float,
          "ms_min": float, "ms_max": float, "images_per_s": images_per_call / median s,
          "tokens_per_s": float, "gflops_per_image": float, "tflops_per_s": float, "mfu": float | null,
          "peak_mem_mb": float}
    A row that could not run has "error" (e.g. CUDA out of memory) or "skipped" (the reason) instead of
    the timing fields.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import resource
import signal
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from benchmark.base import Generator, Tokenizer, TokenSpec
from benchmark.checkpoints import build_generator, build_tokenizer, load_tokenizer
from benchmark.config import EvalConfig, TrainConfig, parse_overrides, validate
from benchmark.cost import gflops, parameter_counts
from benchmark.distributed import device as pick_device
from benchmark.errors import ConfigError, Tok1dError
from benchmark.precision import InferencePrecision
from benchmark.registry import GENERATORS, TOKENIZERS, Registry, load_plugins
from benchmark.store import read_json

SCHEMA = "tok1d.bench/2"
# Dense (no sparsity) bf16 tensor-core peak per GPU, TFLOP/s, matched in this order against the device name.
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H200 NVL", 835.0),
    ("H200", 989.0),
    ("H100 NVL", 835.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),  # SXM ("NVIDIA H100 80GB HBM3")
    ("A100", 312.0),
)
MAX_CALLS_FACTOR = 20
GRACE_SECONDS = 40.0  # how long an op started within --time-budget may run past it before it is stopped


class OutOfTime(Exception):
    """Raised, in whatever op is running, by the alarm at the end of --time-budget + GRACE_SECONDS."""


@contextmanager
def alarm(seconds: float | None, message: str) -> Iterator[None]:
    """Raise :class:`OutOfTime` (``message``) in ``seconds`` (SIGALRM), in whatever runs then; None: never."""
    if seconds is None:
        yield
        return

    def ring(signum: int, frame: object) -> None:
        raise OutOfTime(message)

    previous = signal.signal(signal.SIGALRM, ring)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.001))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def peak_tflops(device: torch.device, given: float | None) -> tuple[float | None, str]:
    """The device's dense bf16 peak and where it comes from (``--peak-tflops``, the table, or why none)."""
    if given is not None:
        return given, "--peak-tflops"
    if device.type != "cuda":
        return None, f"{device.type}: no bf16 peak, no MFU"
    name = torch.cuda.get_device_name(device)
    for key, tflops in PEAK_BF16_TFLOPS:
        if key in name:
            return tflops, f"table: {key} dense bf16"
    return None, f"{name} is not in PEAK_BF16_TFLOPS: no MFU (give --peak-tflops)"


class PeakMemory:
    """Peak memory of an op: ``torch.cuda.max_memory_allocated`` on CUDA (reset before the op); on the
    CPU the growth of the process's peak resident set size (``ru_maxrss``) while the op ran."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._start = 0.0

    @property
    def description(self) -> str:
        if self.device.type == "cuda":
            return "cuda: torch.cuda.max_memory_allocated during the op (warm-up included), MiB"
        return (
            "cpu: growth of the process's peak RSS (resource.getrusage ru_maxrss) during the op (warm-up "
            "included), MiB; 0 when an earlier op had already reached a higher peak"
        )

    @staticmethod
    def _max_rss_mb() -> float:
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, KiB on Linux

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._start = self._max_rss_mb()

    def peak_mb(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        return self._max_rss_mb() - self._start


def random_tokens(spec: TokenSpec, n: int, device: torch.device, rng: torch.Generator) -> Tensor:
    """A batch of generated-token sequences: ids (n, T) below vocab_size, or N(0, 1) vectors (n, T, dim)."""
    if spec.kind == "discrete":
        return torch.randint(spec.vocab_size, (n, spec.num_generated), generator=rng).to(device)
    return torch.randn(n, spec.num_generated, spec.dim, generator=rng).to(device)


def reconstruction_metric_names(model: Tokenizer) -> list[str]:
    """What the evaluate_tokenizer stage computes at paper scale: rFID, PSNR, SSIM and, where the tokens
    have codes, codebook usage."""
    codes = model.token_spec.kind == "discrete" or bool(model.codebook_sizes())
    return ["rfid", "psnr", "ssim", *(["codebook_usage"] if codes else [])]


class Bench:
    """Times ops on one device: warm-up, per-call timing, FLOPs, memory; stops starting ops past a deadline."""

    def __init__(self, args: argparse.Namespace, device: torch.device, deadline: float | None) -> None:
        self.args, self.device, self.deadline = args, device, deadline
        self.memory = PeakMemory(device)
        self.peak, self.peak_source = peak_tflops(device, args.peak_tflops)
        self.rng = torch.Generator().manual_seed(args.seed)

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def precision(self) -> InferencePrecision:
        return InferencePrecision(self.device, "bf16" if self.args.bf16 else "fp32")

    def train_config(self, ema_decay: float = 0.0) -> TrainConfig:
        return TrainConfig(precision="bf16" if self.args.bf16 else "fp32", ema_decay=ema_decay)

    def train_precision(self) -> str:
        """What TrainStep runs in with :meth:`train_config` (its autocast is CUDA only)."""
        return "bf16 autocast (CUDA)" if self.args.bf16 and self.device.type == "cuda" else "float32"

    def skipped(self, row: dict[str, Any]) -> dict[str, Any] | None:
        """``row`` marked skipped when the time budget is spent (nothing more starts), else None."""
        if self.deadline is None or time.monotonic() <= self.deadline:
            return None
        print(f"bench: {row['component']} {row['name']}: {row['op']}: skipped (time budget spent)", file=sys.stderr)
        return {**row, "skipped": f"the time budget (--time-budget {self.args.time_budget} s) was spent"}

    def measure(
        self,
        row: dict[str, Any],
        fn: Callable[[], Any],
        flops: Callable[[], Any] | float,
        *,
        images: int,
        tokens_per_image: int,
        warmup: int | None = None,
        calls: int | None = None,
    ) -> dict[str, Any]:
        """``row`` completed with the timing of ``fn`` (one call = ``images`` images) and its FLOPs: those of
        one eager call ``flops``, or ``flops`` GFLOPs per image; ``skipped`` past the deadline, ``error`` on
        CUDA out-of-memory."""
        skipped = self.skipped(row)
        if skipped is not None:
            return skipped
        print(f"bench: {row['component']} {row['name']}: {row['op']}, compile {row['compile']}", file=sys.stderr)
        warmup = self.args.warmup if warmup is None else warmup
        calls = self.args.iters if calls is None else calls
        self.memory.reset()
        try:
            total = gflops(flops) if callable(flops) else flops * images
            for _ in range(warmup):
                fn()
            self.synchronize()
            seconds: list[float] = []
            start = time.perf_counter()
            while len(seconds) < calls or (
                time.perf_counter() - start < self.args.min_time and len(seconds) < MAX_CALLS_FACTOR * calls
            ):
                t0 = time.perf_counter()
                fn()
                self.synchronize()
                seconds.append(time.perf_counter() - t0)
        except torch.cuda.OutOfMemoryError as exc:
            torch.cuda.empty_cache()
            return {**row, "error": f"CUDA out of memory at batch size {row['batch_size']}: {str(exc).splitlines()[0]}"}
        except OutOfTime as exc:
            return {**row, "error": str(exc)}
        median = statistics.median(seconds)
        q1, _, q3 = statistics.quantiles(seconds, n=4, method="inclusive") if len(seconds) > 1 else [median] * 3
        per_image = total / images
        achieved = per_image * images / median / 1e3
        return {
            **row,
            "images_per_call": images,
            "warmup": warmup,
            "calls": len(seconds),
            "ms_per_call": 1e3 * median,
            "ms_q1": 1e3 * q1,
            "ms_q3": 1e3 * q3,
            "ms_min": 1e3 * min(seconds),
            "ms_max": 1e3 * max(seconds),
            "images_per_s": images / median,
            "tokens_per_s": images * tokens_per_image / median,
            "gflops_per_image": per_image,
            "tflops_per_s": achieved,
            "mfu": achieved / self.peak if self.peak else None,
            "peak_mem_mb": self.memory.peak_mb(),
        }

    def compiled(self, fn: Callable, compile: bool) -> Callable:
        return torch.compile(fn) if compile else fn

    def inference(self, fn: Callable[[], Any]) -> Callable[[], Any]:
        """``fn`` without autograd under the inference precision."""
        precision = self.precision()

        def run() -> Any:
            with torch.no_grad(), precision():
                return fn()

        return run

    def train_step(
        self,
        row: dict[str, Any],
        model: torch.nn.Module,
        step_fn: Callable,
        batch: tuple[Tensor, ...],
        cfg: TrainConfig,
        tokens_per_image: int,
    ) -> dict[str, Any]:
        """The row of ``TrainStep.__call__`` on ``batch``: FLOPs from one call of an eager TrainStep, then the
        timed TrainStep (compiled when ``row['compile']``), at the step the discriminator starts."""
        from benchmark.train import TrainStep

        adversary = getattr(model, "adversary", None)
        at = int(adversary.start) if adversary is not None else 0
        row = {**row, "op": "train_step", "precision": self.train_precision(), "at_step": at}
        if adversary is not None:
            row["adversary_active"] = adversary.active(at)
        skipped = self.skipped(row)
        if skipped is not None:
            return skipped
        trainer = TrainStep(model, step_fn, cfg, self.device, adversary)
        per_image = gflops(lambda: trainer(batch, at)) / len(batch[0])
        if row["compile"]:  # a fresh TrainStep, compiled (the eager one's optimiser state and EMA freed first)
            del trainer
            free(self.device)
            trainer = TrainStep(model, step_fn, cfg, self.device, adversary, compile=True)
        return self.measure(
            row, lambda: trainer(batch, at), per_image, images=len(batch[0]), tokens_per_image=tokens_per_image
        )

    def tokenizer(
        self, model: Tokenizer, name: str, image_size: int, ops: tuple[str, ...], ema_decay: float = 0.0
    ) -> list[dict[str, Any]]:
        """The rows of ``ops`` (encode, decode, evaluate, train_step, rfid) of one tokenizer."""
        from benchmark.metrics import build_metrics
        from benchmark.tokenizer_eval import evaluate_batch

        b, compile = self.args.batch_size, self.args.compile
        x = torch.rand(b, 3, image_size, image_size, generator=self.rng).to(self.device)
        labels = torch.zeros(b, dtype=torch.int64)
        k = model.token_spec.num_tokens
        base = {
            "component": "tokenizer",
            "name": name,
            "params": parameter_counts(model)["total"],
            "image_size": image_size,
            "batch_size": b,
            "precision": self.precision().describe(),
            "compile": compile,
        }
        rows = []
        model.eval()
        with torch.no_grad(), self.precision()():
            tokens = model.encode(x)
        if "encode" in ops:
            encode = self.compiled(model.encode, compile)
            rows.append(
                self.measure(
                    {**base, "op": "encode"},
                    self.inference(lambda: encode(x)),
                    self.inference(lambda: model.encode(x)),
                    images=b,
                    tokens_per_image=k,
                )
            )
        if "decode" in ops:
            decode = self.compiled(model.decode, compile)
            rows.append(
                self.measure(
                    {**base, "op": "decode"},
                    self.inference(lambda: decode(tokens)),
                    self.inference(lambda: model.decode(tokens)),
                    images=b,
                    tokens_per_image=k,
                )
            )
        if "evaluate" in ops:
            names = ["psnr", "ssim", *(n for n in reconstruction_metric_names(model) if n == "codebook_usage")]
            metrics = build_metrics(names, model.token_spec)
            rows.append(
                self.measure(
                    {**base, "op": "evaluate", "compile": False, "metrics": names},
                    lambda: evaluate_batch(model, x, labels, metrics, self.precision()),
                    lambda: evaluate_batch(model, x, labels, build_metrics(names, model.token_spec), self.precision()),
                    images=b,
                    tokens_per_image=k,
                )
            )
        if "rfid" in ops:
            rows.append(self.rfid({**base, "op": "rfid", "compile": False}, model, image_size))
        if "train_step" in ops:
            from benchmark.tokenizer_stages import tokenizer_step

            cfg = self.train_config(ema_decay)
            rows.append(self.train_step(base, model, tokenizer_step(model), (x, labels), cfg, k))
        model.eval()
        return rows

    def rfid(self, row: dict[str, Any], model: Tokenizer, image_size: int) -> dict[str, Any]:
        """One timed pass of the evaluation over ``--rfid-images`` procedural images (after a warm-up pass
        over a batch of other images: Inception loaded, kernels chosen, no feature memo hit)."""
        from torch.utils.data import Subset

        from benchmark.data import ProceduralShapes
        from benchmark.metrics import build_metrics, compute_all
        from benchmark.tokenizer_eval import evaluate_batch, metric_options, reconstruction_metrics

        skipped = self.skipped(row)
        if skipped is not None:
            return skipped
        n, b = self.args.rfid_images, self.args.batch_size
        names = reconstruction_metric_names(model)
        cfg = EvalConfig(batch_size=b, metrics=names, inception_weights=self.args.inception_weights)
        precision = "bf16" if self.args.bf16 else "fp32"
        data = {"resolution": image_size, "eval_size": n, "train_size": b}
        evals, others = ProceduralShapes("eval", **data), Subset(ProceduralShapes("train", **data), range(b))
        workers = self.args.workers
        x = torch.rand(b, 3, image_size, image_size, generator=self.rng).to(self.device)

        def count() -> None:
            metrics = build_metrics(names, model.token_spec, metric_options(cfg, self.device))
            evaluate_batch(model, x, torch.zeros(b, dtype=torch.int64), metrics, self.precision())

        def evaluate(dataset: Any) -> dict[str, float]:
            return compute_all(reconstruction_metrics(model, dataset, cfg, self.device, workers, precision)[0])

        evaluate(others)
        row = {**row, "batch_size": b, "num_images": n, "metrics": names, "workers": workers}
        per_image = gflops(count) / b
        k = model.token_spec.num_tokens
        return self.measure(row, lambda: evaluate(evals), per_image, images=n, tokens_per_image=k, warmup=0, calls=1)

    def generator(
        self,
        model: Generator,
        name: str,
        spec: TokenSpec,
        tokens_of: str,
        ops: tuple[str, ...],
        ema_decay: float = 0.0,
        sampling: dict[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        """train_step (on random tokens of ``spec``; random images for a REPA teacher) and sample rows."""
        from benchmark.generator_stages import generator_step

        b, compile = self.args.batch_size, self.args.compile
        tokens = random_tokens(spec, b, self.device, self.rng)
        labels = torch.randint(self.args.num_classes, (b,), generator=self.rng).to(self.device)
        n = spec.num_generated
        base = {
            "component": "generator",
            "name": name,
            "params": parameter_counts(model)["total"],
            "tokens_of": tokens_of,
            "tokens": n,
            "batch_size": b,
            "compile": compile,
        }
        rows = []
        if "train_step" in ops:
            batch: tuple[Tensor, ...] = (tokens, labels)
            if getattr(model, "repa_teacher", None) is not None:
                size = self.args.image_size
                batch += (torch.rand(b, 3, size, size, generator=self.rng).to(self.device),)
            rows.append(self.train_step(base, model, generator_step(model), batch, self.train_config(ema_decay), n))
        if "sample" in ops:
            options = sampling or {}
            settings = {"steps": self.args.steps, "cfg_scale": self.args.cfg_scale, **options}

            def sample(y: Tensor) -> Tensor:
                rng = torch.Generator(self.device).manual_seed(self.args.seed)
                return model.sample(y, generator=rng, **settings)

            row = {**base, "op": "sample", "precision": self.precision().describe(), **settings}
            skipped = self.skipped(row)
            if skipped is not None:
                rows.append(skipped)
                return rows
            model.eval()
            per_image = gflops(self.inference(lambda: sample(labels[:1])))  # eager, at batch 1
            if compile:  # the network each sampler step calls, as the sample stage compiles it
                model.compile()
            rows.append(
                self.measure(row, self.inference(lambda: sample(labels)), per_image, images=b, tokens_per_image=n)
            )
        return rows


def parse_entry(words: list[str], registry: Registry, section: str) -> tuple[str, dict[str, Any]]:
    """``NAME key=value ...`` -> (name, options), checked against the registered class's constructor."""
    name, *items = words
    options = parse_overrides(items) if items else {}
    registry.get(name, where=f"--{section}")
    validate({section: {"name": name, **options}}, {f"{section}.{k}": f"--{section}" for k in ["name", *options]})
    return name, options


def label(name: str, options: dict[str, Any]) -> str:
    return " ".join([name, *(f"{k}={v}" for k, v in options.items())])


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"{device.type}: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def free(device: torch.device) -> None:
    """Memory and compiled code of the last model released: the next one starts from nothing."""
    torch.compiler.reset()  # else a new model's shapes recompile the shared code with dynamic shapes
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def custom_rows(args: argparse.Namespace, bench: Bench) -> list[dict[str, Any]]:
    """The rows of the --tokenizer / --tokenizer-dir / --generator entries."""
    if not args.tokenizer and not args.tokenizer_dir:
        raise ConfigError(
            "give at least one --tokenizer NAME [key=value ...] or --tokenizer-dir PATH "
            "(generators are benchmarked on a tokenizer's tokens), or --suite"
        )
    tokenizers = [parse_entry(words, TOKENIZERS, "tokenizer") for words in args.tokenizer]
    generators = [parse_entry(words, GENERATORS, "generator") for words in args.generator]
    device = bench.device

    def built(name: str, options: dict[str, Any]) -> Callable[[], tuple[Tokenizer, int]]:
        def make() -> tuple[Tokenizer, int]:
            torch.manual_seed(args.seed)
            config = {"tokenizer": {"name": name, **options}, "data": {"resolution": args.image_size}}
            with device:  # initialised on the device: seconds saved per model at paper scale
                return build_tokenizer(config).to(device), args.image_size

        return make

    def stored(folder: Path) -> Callable[[], tuple[Tokenizer, int]]:
        def make() -> tuple[Tokenizer, int]:
            return load_tokenizer(folder, device), read_json(folder / "tokenizer.json")["data"]["resolution"]

        return make

    makers = [(label(n, o), built(n, o)) for n, o in tokenizers]
    makers += [(str(Path(p).expanduser()), stored(Path(p).expanduser())) for p in args.tokenizer_dir]
    ops = ("encode", "decode", "evaluate", *(["rfid"] if args.rfid_images else []), "train_step")
    rows: list[dict[str, Any]] = []
    for tok_label, make in makers:
        model, image_size = make()
        rows += bench.tokenizer(model, tok_label, image_size, ops)
        spec = model.token_spec
        del model
        free(device)
        for name, options in generators:
            gen_label = label(name, options)
            torch.manual_seed(args.seed)
            try:
                with device:
                    generator = build_generator({"generator": {"name": name, **options}}, spec, args.num_classes)
            except ConfigError as exc:  # e.g. MaskGIT on continuous tokens
                rows.append({"component": "generator", "name": gen_label, "tokens_of": tok_label, "skipped": str(exc)})
                continue
            rows += bench.generator(generator.to(device), gen_label, spec, tok_label, ("train_step", "sample"))
            del generator
            free(device)
    return rows


def suite_rows(args: argparse.Namespace, bench: Bench) -> list[dict[str, Any]]:
    """The rows of ``--suite``: each entry builds its model afresh, with its own batch, compile and ops.
    An entry stopped by the time budget's alarm (:class:`OutOfTime`) gets an error row and the suite goes on."""
    from benchmark.bench_suites import SUITES

    rows: list[dict[str, Any]] = []
    for entry in SUITES[args.suite]:
        local = argparse.Namespace(**{**vars(args), **entry.settings})
        sub = Bench(local, bench.device, bench.deadline)
        sub.memory, sub.rng = bench.memory, bench.rng
        torch.manual_seed(args.seed)
        try:
            if entry.component == "tokenizer":
                config = {"tokenizer": entry.config, "data": {"resolution": local.image_size}}
                with bench.device:
                    model = build_tokenizer(config).to(bench.device)
                rows += sub.tokenizer(model, entry.label, local.image_size, entry.ops, entry.ema_decay)
            else:
                spec = entry.tokens
                with bench.device:
                    model = build_generator({"generator": entry.config}, spec, local.num_classes).to(bench.device)
                rows += sub.generator(
                    model, entry.label, spec, entry.tokens_of, entry.ops, entry.ema_decay, entry.sampling
                )
        except OutOfTime as exc:
            rows += [
                {"component": entry.component, "name": entry.label, "op": op, "error": str(exc)} for op in entry.ops
            ]
        model = None
        free(bench.device)
    return rows


SETTINGS = (
    "suite",
    "image_size",
    "batch_size",
    "warmup",
    "iters",
    "min_time",
    "steps",
    "cfg_scale",
    "num_classes",
    "seed",
    "bf16",
    "compile",
    "rfid_images",
    "workers",
    "time_budget",
)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The benchmark's JSON object (schema in the module docstring)."""
    t0 = time.monotonic()
    load_plugins()
    for key, low in (("batch_size", 1), ("iters", 1), ("warmup", 0), ("image_size", 1), ("num_classes", 1)):
        if getattr(args, key) < low:
            raise ConfigError(f"--{key.replace('_', '-')}: must be at least {low}, got {getattr(args, key)}")
    if args.suite and (args.tokenizer or args.tokenizer_dir or args.generator):
        raise ConfigError("--suite runs its own models: give either --suite or --tokenizer / --generator entries")
    if args.suite:
        from benchmark.bench_suites import SUITE_SETTINGS

        for key, value in SUITE_SETTINGS[args.suite].items():
            if getattr(args, key) in (None, False):
                setattr(args, key, value)
    device = pick_device(args.device)
    bench = Bench(args, device, None if args.time_budget is None else t0 + args.time_budget)
    grace = bench.deadline - time.monotonic() + GRACE_SECONDS if bench.deadline is not None else None
    with alarm(grace, f"stopped {GRACE_SECONDS:.0f} s after the time budget (--time-budget {args.time_budget} s)"):
        rows = suite_rows(args, bench) if args.suite else custom_rows(args, bench)
    return {
        "schema": SCHEMA,
        "suite": args.suite,
        "device": device_name(device),
        "torch": torch.__version__,
        "peak_bf16_tflops": bench.peak,
        "peak_source": bench.peak_source,
        "settings": {k: getattr(args, k) for k in SETTINGS},
        "memory": bench.memory.description,
        "timing": "time.perf_counter per call after the warm-up calls; median, quartiles, min and max over the "
        "timed calls" + (", torch.cuda.synchronize before each clock read" if device.type == "cuda" else ""),
        "flops": "torch.utils.flop_counter over one eager call at the timed batch (matmul, convolution, "
        "attention; forward and backward), per image",
        "wall_seconds": time.monotonic() - t0,
        "results": rows,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmark.bench",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    p.add_argument("--suite", choices=("paper", "smoke"), help="a fixed table of models and ops (bench_suites.py)")
    p.add_argument(
        "--tokenizer",
        nargs="+",
        action="append",
        default=[],
        metavar="NAME [KEY=VALUE]",
        help="a registered tokenizer and its options (random weights); repeatable",
    )
    p.add_argument(
        "--tokenizer-dir",
        action="append",
        default=[],
        metavar="PATH",
        help="a trained tokenizer folder (tokenizer.json + model.safetensors); repeatable",
    )
    p.add_argument(
        "--generator",
        nargs="+",
        action="append",
        default=[],
        metavar="NAME [KEY=VALUE]",
        help="a registered generator and its options, run on every tokenizer's tokens; repeatable",
    )
    p.add_argument("--image-size", type=int, default=256, help="for --tokenizer (a --tokenizer-dir keeps its own)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--num-classes", type=int, default=1000, help="generators' classes")
    p.add_argument("--steps", type=int, help="sampling steps (default: the generator's)")
    p.add_argument("--cfg-scale", type=float, default=1.0, help="sampling guidance scale")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA only; ignored on the CPU)")
    p.add_argument("--compile", action="store_true", help="torch.compile encode, decode, train_step and sampling")
    p.add_argument(
        "--warmup",
        type=int,
        default=3,
        help="untimed calls per op; with --compile, enough for every (re)compilation",
    )
    p.add_argument("--iters", type=int, default=10, help="timed calls per op, at least")
    p.add_argument("--min-time", type=float, default=1.0, help="timed seconds per op, at least (more calls)")
    p.add_argument("--rfid-images", type=int, default=0, help="also time a streamed rFID evaluation of N images")
    p.add_argument("--workers", type=int, default=0, help="data-loader workers of the rfid op")
    p.add_argument("--inception-weights", help="the FID Inception weights (default: as eval.inception_weights)")
    p.add_argument("--peak-tflops", type=float, help="the device's dense bf16 peak, for MFU (default: table)")
    p.add_argument("--time-budget", type=float, help="seconds after which no further op starts (its row says skipped)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        report = run(args)
    except Tok1dError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
