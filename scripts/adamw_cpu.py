"""AdamW on the CPU: the trainer's optimiser against its alternatives (issue 13: "two parameter groups take
twice as long as one"), alone and inside a whole TiTok training step.

    python scripts/adamw_cpu.py [--size S] [--image-size 128] [--batch-size 2] [--rounds 3] [--steps 6]

Each (variant, round) runs in a fresh process, the variants interleaved round by round, so that one
variant's allocations cannot change another's timings. A process builds TiTok-``size`` and times, after
one untimed step that allocates the optimiser state, ``--steps`` calls of ``optimizer.step()`` over the
model's trainable tensors (random gradients) and ``--steps`` calls of ``TrainStep.__call__`` with that
optimiser. Prints one JSON object: per variant the min and median over rounds of each process's median
wall ms, CPU ms and minor page faults per call, and the before / after ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch

VARIANTS = {  # name: (parameter groups, AdamW keyword arguments)
    "for-loop, two groups (before)": ("two", {"foreach": False}),
    "for-loop, one group": ("one", {"foreach": False}),
    "foreach, two groups": ("two", {"foreach": True}),
    "fused, two groups (after)": ("two", {"fused": True}),
    "fused, one group": ("one", {"fused": True}),
}


def clock(fn: Callable[[], object]) -> tuple[float, float, int]:
    """Wall seconds, process CPU seconds and minor page faults of one call."""
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return wall, cpu, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults


def medians(samples: list[tuple[float, float, int]]) -> dict[str, float]:
    return {
        "wall_ms": 1e3 * statistics.median(s[0] for s in samples),
        "cpu_ms": 1e3 * statistics.median(s[1] for s in samples),
        "page_faults": statistics.median(s[2] for s in samples),
    }


def one(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """This process's timings of variant ``args.variant``."""
    from benchmark.checkpoints import build_tokenizer
    from benchmark.config import TrainConfig
    from benchmark.registry import load_plugins
    from benchmark.tokenizer_stages import tokenizer_step
    from benchmark.train import TrainStep

    torch.set_num_threads(args.threads)
    load_plugins()
    torch.manual_seed(0)
    config = {"tokenizer": {"name": "titok", "size": args.size, "num_latent_tokens": 32}}
    model = build_tokenizer({**config, "data": {"resolution": args.image_size}})
    trainer = TrainStep(model, tokenizer_step(model), TrainConfig(), torch.device("cpu"))
    which, kwargs = VARIANTS[args.variant]
    groups = [{"params": g["params"], "weight_decay": g["weight_decay"]} for g in trainer.optimizer.param_groups]
    if which == "one":
        groups = [{"params": [p for g in groups for p in g["params"]], "weight_decay": 1e-4}]
    trainer.optimizer = torch.optim.AdamW(groups, lr=1e-4, **kwargs)
    for p in trainer.trained:
        p.grad = torch.randn_like(p) * 1e-3
    trainer.optimizer.step()  # allocates the state
    optimizer = medians([clock(trainer.optimizer.step) for _ in range(args.steps)])
    batch = (torch.rand(args.batch_size, 3, args.image_size, args.image_size), torch.zeros(args.batch_size))
    trainer(batch, 0)
    step = medians([clock(lambda: trainer(batch, 0)) for _ in range(args.steps)])
    return {"optimizer_step": optimizer, "train_step": step}


def summary(runs: list[dict[str, float]]) -> dict[str, float]:
    return {
        f"{k}_{how}": round(fn(r[k] for r in runs), 1)
        for k in runs[0]
        for how, fn in (("min", min), ("median", statistics.median))
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="S")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--variant", choices=VARIANTS, help="(internal) time one variant in this process")
    args = p.parse_args(argv)
    if args.variant:
        print(json.dumps(one(args)))
        return 0
    common = [f"--size={args.size}", f"--image-size={args.image_size}", f"--batch-size={args.batch_size}"]
    common += [f"--steps={args.steps}", f"--threads={args.threads}"]
    runs: dict[str, list[dict[str, dict[str, float]]]] = {name: [] for name in VARIANTS}
    for _ in range(args.rounds):
        for name in VARIANTS:
            out = subprocess.run(
                [sys.executable, __file__, *common, f"--variant={name}"], capture_output=True, text=True
            )
            out.check_returncode()
            runs[name].append(json.loads(out.stdout.splitlines()[-1]))
    result = {
        "model": f"TiTok-{args.size}, {args.image_size} px, batch {args.batch_size}, {args.threads} threads",
        "rounds": args.rounds,
        "load_average_at_end": os.getloadavg(),
        "optimizer_step": {name: summary([r["optimizer_step"] for r in rs]) for name, rs in runs.items()},
        "train_step": {name: summary([r["train_step"] for r in rs]) for name, rs in runs.items()},
    }
    for part in ("optimizer_step", "train_step"):
        before, after = result[part]["for-loop, two groups (before)"], result[part]["fused, two groups (after)"]
        result[f"{part}_ratio_before_after"] = {
            k: round(before[k] / after[k], 2) for k in ("cpu_ms_min", "cpu_ms_median", "wall_ms_median")
        }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
