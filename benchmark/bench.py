"""``python -m benchmark.bench``: speed and memory of tokenizers and generators, as JSON on stdout.

    python -m benchmark.bench --tokenizer titok size=B patch_size=16 --generator maskgit size=B \\
        --image-size 256 --batch-size 32 --bf16 --compile

Per tokenizer (random weights, or trained ones with --tokenizer-dir): ``encode``, ``decode``,
``train_step`` (forward + backward + AdamW step on the sum of ``model(images).losses``; an adversary's
discriminator is not stepped) and ``evaluate`` (encode + decode + per-image PSNR / SSIM, the batch
step of benchmark.evaluate). Per generator, on each tokenizer's token spec: ``train_step`` on random
tokens and ``sample`` with --steps and --cfg-scale. Each op runs --warmup untimed calls, then --iters
calls timed with time.perf_counter (CUDA synchronised before each clock read). Parameters and GFLOPs
per image come from benchmark.cost (torch.utils.flop_counter, counted without autocast).
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from benchmark.base import Generator, Tokenizer, TokenSpec
from benchmark.checkpoints import build_generator, build_tokenizer, load_tokenizer
from benchmark.config import TrainConfig, parse_overrides, validate
from benchmark.cost import generator_cost, gflops, tokenizer_cost
from benchmark.distributed import device as pick_device
from benchmark.errors import ConfigError, Tok1dError
from benchmark.metrics import build_metrics
from benchmark.registry import GENERATORS, TOKENIZERS, Registry, load_plugins
from benchmark.store import read_json
from benchmark.tokenizer_eval import evaluate_batch
from benchmark.train import generator_parameters, make_optimizer


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


class Bench:
    """Times the ops of each model on one device with one setting (autocast, compile, batch size)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.device = pick_device(args.device)
        self.bf16 = args.bf16 and self.device.type == "cuda"
        self.memory = PeakMemory(self.device)
        self.rng = torch.Generator().manual_seed(args.seed)

    def compiled(self, fn: Callable) -> Callable:
        return torch.compile(fn) if self.args.compile else fn

    def call(self, fn: Callable[[], Any], grad: bool = False) -> Callable[[], Any]:
        """``fn`` under bf16 autocast (on CUDA with --bf16) and, unless ``grad``, without autograd."""

        def run() -> Any:
            with (
                torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16),
                torch.set_grad_enabled(grad),
            ):
                return fn()

        return run

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def measure(
        self,
        base: dict[str, Any],
        op: str,
        fn: Callable[[], Any],
        tokens_per_image: int,
        gflops_per_image: float,
        **extra: Any,
    ) -> dict[str, Any]:
        """Run ``fn`` (one batch) --warmup times, then --iters times on the clock: the result row, with
        images/s, tokens/s, ms per batch and peak memory (an ``error`` instead on CUDA out-of-memory)."""
        print(f"bench: {base['component']} {base['name']}: {op}", file=sys.stderr)
        batch, iters = self.args.batch_size, self.args.iters
        row = {
            "component": base["component"],
            "name": base["name"],
            "op": op,
            **base,
            "batch_size": batch,
            "gflops_per_image": gflops_per_image,
            **extra,
        }
        self.memory.reset()
        try:
            for _ in range(self.args.warmup):
                fn()
            self.synchronize()
            t0 = time.perf_counter()
            for _ in range(iters):
                fn()
            self.synchronize()
            seconds = (time.perf_counter() - t0) / iters
        except torch.cuda.OutOfMemoryError as exc:
            torch.cuda.empty_cache()
            return {**row, "error": f"CUDA out of memory at batch size {batch}: {str(exc).splitlines()[0]}"}
        return {
            **row,
            "images_per_s": batch / seconds,
            "tokens_per_s": batch * tokens_per_image / seconds,
            "ms_per_batch": 1e3 * seconds,
            "peak_mem_mb": self.memory.peak_mb(),
        }

    def tokenizer(self, model: Tokenizer, name: str, image_size: int) -> list[dict[str, Any]]:
        """encode, decode, evaluate (eval mode) and train_step rows of one tokenizer."""
        b = self.args.batch_size
        images = torch.rand(b, 3, image_size, image_size, generator=self.rng)
        labels = torch.zeros(b, dtype=torch.int64)
        x = images.to(self.device)
        model.eval()
        cost = tokenizer_cost(model, image_size, self.device)
        with torch.no_grad():
            tokens = model.encode(x)
        encode, decode = self.compiled(model.encode), self.compiled(model.decode)
        metrics = build_metrics(["psnr", "ssim"], model.token_spec)
        k = model.token_spec.num_tokens
        base = {"component": "tokenizer", "name": name, "image_size": image_size, "params": cost["params"]["total"]}
        rows = [
            self.measure(base, "encode", self.call(lambda: encode(x)), k, cost["encode_gflops"]),
            self.measure(base, "decode", self.call(lambda: decode(tokens)), k, cost["decode_gflops"]),
            self.measure(
                base,
                "evaluate",
                self.call(lambda: evaluate_batch(model, images.to(self.device), labels, metrics)),
                k,
                cost["encode_gflops"] + cost["decode_gflops"],
            ),
        ]
        model.train()
        step_gflops = gflops(lambda: sum(model(x[:1]).losses.values()).backward())
        model.zero_grad(set_to_none=True)
        forward = self.compiled(lambda: sum(model(x).losses.values()))
        rows.append(self.measure(base, "train_step", self.step(model, self.call(forward, grad=True)), k, step_gflops))
        model.eval()
        return rows

    def generator(self, model: Generator, name: str, spec: TokenSpec, tokens_of: str) -> list[dict[str, Any]]:
        """train_step (train mode, on random tokens of ``spec``) and sample (eval mode) rows of one generator."""
        b = self.args.batch_size
        tokens = random_tokens(spec, b, self.device, self.rng)
        labels = torch.randint(self.args.num_classes, (b,), generator=self.rng).to(self.device)
        model.train()
        cost = generator_cost(model, tokens[:1], labels[:1])
        n = spec.num_generated
        base = {"component": "generator", "name": name, "tokens_of": tokens_of, "params": cost["params"]["total"]}
        loss = self.compiled(lambda: sum(model.loss(tokens, labels).values()))
        rows = [
            self.measure(base, "train_step", self.step(model, self.call(loss, grad=True)), n, cost["train_step_gflops"])
        ]
        model.eval()
        options = {"cfg_scale": self.args.cfg_scale, "steps": self.args.steps}

        def seeded() -> torch.Generator:
            return torch.Generator(self.device).manual_seed(self.args.seed)

        with torch.no_grad():
            sample_gflops = gflops(lambda: model.sample(labels[:1], generator=seeded(), **options))
        sample = self.compiled(model.sample)
        rows.append(
            self.measure(
                base,
                "sample",
                self.call(lambda: sample(labels, generator=seeded(), **options)),
                n,
                sample_gflops,
                **options,
            )
        )
        return rows

    def step(self, model: nn.Module, loss: Callable[[], Tensor]) -> Callable[[], None]:
        """One optimisation step: backward of ``loss()`` and an AdamW step (fused on CUDA, as
        benchmark.train) over the model's trainable parameters."""
        optimizer = make_optimizer(
            generator_parameters(model, getattr(model, "adversary", None)), TrainConfig(), self.device
        )

        def step() -> None:
            loss().backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return step


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
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The benchmark's JSON object: device, torch version, settings, memory method and result rows."""
    load_plugins()
    for key, low in (("batch_size", 1), ("iters", 1), ("warmup", 0), ("image_size", 1), ("num_classes", 1)):
        if getattr(args, key) < low:
            raise ConfigError(f"--{key.replace('_', '-')}: must be at least {low}, got {getattr(args, key)}")
    if not args.tokenizer and not args.tokenizer_dir:
        raise ConfigError(
            "give at least one --tokenizer NAME [key=value ...] or --tokenizer-dir PATH "
            "(generators are benchmarked on a tokenizer's tokens)"
        )
    tokenizers = [parse_entry(words, TOKENIZERS, "tokenizer") for words in args.tokenizer]
    generators = [parse_entry(words, GENERATORS, "generator") for words in args.generator]
    bench = Bench(args)
    device = bench.device

    def built(name: str, options: dict[str, Any]) -> Callable[[], tuple[Tokenizer, int]]:
        def make() -> tuple[Tokenizer, int]:
            torch.manual_seed(args.seed)
            config = {"tokenizer": {"name": name, **options}, "data": {"resolution": args.image_size}}
            return build_tokenizer(config).to(device), args.image_size

        return make

    def stored(folder: Path) -> Callable[[], tuple[Tokenizer, int]]:
        def make() -> tuple[Tokenizer, int]:
            return load_tokenizer(folder, device), read_json(folder / "tokenizer.json")["data"]["resolution"]

        return make

    makers = [(label(n, o), built(n, o)) for n, o in tokenizers]
    makers += [(str(Path(p).expanduser()), stored(Path(p).expanduser())) for p in args.tokenizer_dir]
    rows: list[dict[str, Any]] = []
    for tok_label, make in makers:
        model, image_size = make()
        rows += bench.tokenizer(model, tok_label, image_size)
        spec = model.token_spec
        del model
        free(device)
        for name, options in generators:
            gen_label = label(name, options)
            torch.manual_seed(args.seed)
            try:
                generator = build_generator({"generator": {"name": name, **options}}, spec, args.num_classes)
            except ConfigError as exc:  # e.g. MaskGIT on continuous tokens
                rows.append({"component": "generator", "name": gen_label, "tokens_of": tok_label, "skipped": str(exc)})
                continue
            rows += bench.generator(generator.to(device), gen_label, spec, tok_label)
            del generator
            free(device)
    settings = {
        k: getattr(args, k)
        for k in ("image_size", "batch_size", "warmup", "iters", "steps", "cfg_scale", "num_classes", "seed", "compile")
    }
    settings["bf16_autocast"] = bench.bf16
    return {
        "device": device_name(device),
        "torch": torch.__version__,
        "settings": settings,
        "memory": bench.memory.description,
        "timing": "time.perf_counter over --iters calls after --warmup "
        "calls" + (", torch.cuda.synchronize before each clock read" if device.type == "cuda" else ""),
        "results": rows,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmark.bench",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
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
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile encode, decode, the training losses and "
        "sample (evaluate runs uncompiled, as benchmark.evaluate does)",
    )
    p.add_argument(
        "--warmup",
        type=int,
        default=3,
        help="untimed calls per op; with --compile, enough for every "
        "(re)compilation, e.g. MaskGIT's dynamic mask counts recompile on the second call",
    )
    p.add_argument("--iters", type=int, default=10, help="timed calls per op")
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
