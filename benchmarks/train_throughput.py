"""Training throughput and peak memory of every registered model on the CPU.

For each model and configuration a fresh Python process builds the model, runs
a few warm-up training steps (SGD with momentum, cross-entropy, random images)
and then times up to ``--steps`` steps (at least 2, stopping early once
``--max-seconds`` have passed); img/s is from the fastest timed step, the
median is in the note. The peak resident set size of that process
(``ru_maxrss``) is its memory high-water mark; it includes the interpreter and
torch themselves, whose share is printed under the table.

Configurations:
  plain          NCHW, fp32, default thread count
  channels_last  NHWC model weights and inputs
  cl+bf16        channels_last plus ``torch.autocast("cpu", torch.bfloat16)``
  compile        ``torch.compile`` (inductor) of the NCHW fp32 model; only for the
                 models in ``--compile-models``; the first step pays for compiling,
                 which inductor's on-disk cache shortens on later runs

The last line printed is ``best_speedup_fastnet=<x>``: the best non-plain
configuration's images/s divided by plain's, for fastnet.

    python benchmarks/train_throughput.py                   # all models, a few minutes
    python benchmarks/train_throughput.py --quick           # smoke run, no compile
    python benchmarks/train_throughput.py --models fastnet,resnet20 --steps 10
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from cnnlib.flags import Parser

REPO = Path(__file__).resolve().parents[1]
CONFIGS = ("plain", "channels_last", "cl+bf16", "compile")
# Huge models get a smaller batch and fewer steps so the whole table takes minutes, not hours.
HEAVY = {"wrn28_10": {"batch_size": 32, "warmup": 1, "steps": 2}}


def _row(*cells) -> str:
    widths = (12, 8, 14, 5, 8, 8, 6)
    aligned = [
        f"{c!s:<{w}}" if i in (0, 2) else f"{c!s:>{w}}"
        for i, (c, w) in enumerate(zip(cells[:-1], widths, strict=True))
    ]
    return " ".join(aligned) + "  " + str(cells[-1])


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def worker(spec: dict) -> dict:
    """Measure one (model, config) pair; runs in its own process so the peak RSS is its own."""
    sys.path.insert(0, str(REPO))
    import torch
    import torch.nn.functional as F

    from cnnlib.models.registry import count_parameters, create_model

    base_mb = _rss_mb()
    torch.manual_seed(0)
    config, bs = spec["config"], spec["batch_size"]
    model = create_model(spec["model"], 10).train()
    x = torch.randn(bs, 3, 32, 32)
    y = torch.randint(0, 10, (bs,))
    if config in ("channels_last", "cl+bf16"):
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    forward = torch.compile(model) if config == "compile" else model
    use_bf16 = config == "cl+bf16"

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
            loss = F.cross_entropy(forward(x), y)
        loss.backward()
        opt.step()

    t0 = time.perf_counter()
    step()  # the first step also pays for oneDNN primitive creation or compilation
    first_s = time.perf_counter() - t0
    for _ in range(spec["warmup"] - 1):
        step()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < spec["steps"]:
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
        if len(times) >= 2 and time.perf_counter() - start > spec["max_seconds"]:
            break
    # The fastest step, as timeit does: other processes only ever slow a step down, and on a
    # 2-core machine one busy neighbour can stall a whole OpenMP team.
    best = min(times)
    return {
        "params": count_parameters(model),
        "img_s": bs / best,
        "img_s_median": bs / sorted(times)[len(times) // 2],
        "steps": len(times),
        "first_s": first_s,
        "peak_mb": _rss_mb(),
        "base_mb": base_mb,
        "threads": torch.get_num_threads(),
        "load": os.getloadavg()[0],
        "torch": torch.__version__,
        "cpu": torch.backends.cpu.get_cpu_capability(),
    }


def run_one(spec: dict, timeout: float) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines() or ["no output"]
        return {"error": lines[-1][:70]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = Parser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", help="comma-separated model names (default: all registered)")
    p.add_argument("--configs", default=",".join(CONFIGS), help=f"subset of {','.join(CONFIGS)}")
    p.add_argument("--compile-models", default="fastnet,baseline", help="models to compile")
    p.add_argument("--steps", type=int, help="timed steps per run (default 5; 2 for wrn28_10)")
    p.add_argument("--warmup", type=int, help="warm-up steps per run (default 2)")
    p.add_argument("--batch-size", type=int, help="batch size (default 128; 32 for wrn28_10)")
    p.add_argument("--max-seconds", type=float, default=8.0, help="stop timing after this")
    p.add_argument("--timeout", type=float, default=600.0, help="per-run limit in seconds")
    p.add_argument("--quick", action="store_true", help="batch 32, 1+2 steps, no compile")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if not args.worker:  # one line, before anything is timed; main gets the checked lists
        from cnnlib.models.registry import list_models

        args.models = args.models.split(",") if args.models else list_models()
        unknown = [m for m in args.models if m not in list_models()]
        if unknown:
            p.error(f"--models: unknown {unknown[0]!r}; allowed: {', '.join(list_models())}")
        args.configs = args.configs.split(",")
        if any(c not in CONFIGS for c in args.configs):
            p.error(f"--configs: allowed: {', '.join(CONFIGS)}; got {','.join(args.configs)!r}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0

    sys.path.insert(0, str(REPO))
    from cnnlib.training.device import cpu_model, precision_note, resolve_precision
    models, configs = args.models, args.configs
    compile_models = set(args.compile_models.split(",")) if args.compile_models else set()
    if args.quick:
        configs = [c for c in configs if c != "compile"]

    rows = []
    header = _row("model", "params", "config", "batch", "img/s", "peak MB", "+MB", "note")
    print(header)
    print("-" * len(header))
    for name in models:
        heavy = HEAVY.get(name, {})
        spec = {
            "model": name,
            "batch_size": args.batch_size or (32 if args.quick else heavy.get("batch_size", 128)),
            "warmup": args.warmup or (1 if args.quick else heavy.get("warmup", 2)),
            "steps": args.steps or (2 if args.quick else heavy.get("steps", 5)),
            "max_seconds": 3.0 if args.quick else args.max_seconds,
        }
        for config in configs:
            if config == "compile" and name not in compile_models:
                continue
            res = run_one({**spec, "config": config}, args.timeout)
            rows.append({"model": name, "config": config, **spec, **res})
            bs = spec["batch_size"]
            if "error" in res:
                print(_row(name, "", config, bs, "failed", "", "", res["error"]), flush=True)
                continue
            # Other processes on the CPU distort the numbers: show the 1-minute load average.
            note = f"median {res['img_s_median']:.1f}/{res['steps']} steps, load {res['load']:.1f}"
            if config == "compile":
                note += f", first step (compiling) {res['first_s']:.0f} s"
            params = f"{res['params'] / 1e6:.2f}M"
            peak, own = f"{res['peak_mb']:.0f}", f"{res['peak_mb'] - res['base_mb']:.0f}"
            print(
                _row(name, params, config, bs, f"{res['img_s']:.1f}", peak, own, note), flush=True
            )

    done = [r for r in rows if "error" not in r]
    if done:
        r = done[0]
        load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
        print(
            f"\ntorch {r['torch']}, CPU capability {r['cpu']}, {r['threads']} threads, "
            f"load average now {load}\n"
            f"peak MB: the process high-water mark, ~{min(d['base_mb'] for d in done):.0f} MB of "
            "it Python + torch; +MB: the rest (model, activations, optimizer, compiled code)"
        )
    chosen = resolve_precision("auto", "cpu")
    trainer_config = "cl+bf16" if chosen == "bf16" else "channels_last"
    print(f"{cpu_model()}: the trainer's {precision_note('auto', chosen, 'cpu')}, "
          f"i.e. the {trainer_config} row")
    plain = {r["model"]: r["img_s"] for r in done if r["config"] == "plain"}
    speedup = math.nan
    fast = [r for r in done if r["model"] == "fastnet" and r["config"] != "plain"]
    if fast and "fastnet" in plain:
        best = max(fast, key=lambda r: r["img_s"])
        speedup = best["img_s"] / plain["fastnet"]
        print(f"fastnet: best configuration {best['config']} ({best['img_s']:.1f} img/s)")
    print(f"best_speedup_fastnet={speedup:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
