"""Time to 94% CIFAR-10 test accuracy on one GPU with cnnlib's fast path.

Times the training alone (data already on the GPU, after a warm-up run that pays
for cuDNN autotuning and torch.compile), like the speedrun literature, then
evaluates with the recipe's test-time augmentation. Several seeds.

    python benchmarks/gpu_speedrun.py                # fastnet_muon recipe, 8 epochs, 5 seeds
    python benchmarks/gpu_speedrun.py --recipe fastnet --epochs 10   # airbench94's SGD recipe
    python benchmarks/gpu_speedrun.py --compile      # with torch.compile
    python benchmarks/gpu_speedrun.py --device cpu --smoke   # check the code path without a GPU

Last line: seconds_to_94=<mean training seconds> (or "n/a" when the mean accuracy misses 94%).
"""

from __future__ import annotations

import statistics
import time

import torch

from cnnlib.flags import Parser
from cnnlib.training.config import RECIPES, recipe
from cnnlib.training.loop import Trainer


def timed_run(config, data_root=None) -> tuple[float, float]:
    trainer = Trainer(config, None, data_root=data_root, progress=False)
    sync = torch.cuda.synchronize if trainer.device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    trainer.run_epochs()
    sync()
    seconds = time.perf_counter() - t0
    return seconds, trainer.finish().test["acc"]


def main() -> None:
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", choices=sorted(RECIPES), default="fastnet_muon")
    p.add_argument("--epochs", type=float, default=8.0)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--device", default="cuda")
    p.add_argument("--precision", default="bf16", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--compile", action="store_true")
    p.add_argument("--target", type=float, default=0.94)
    p.add_argument("--smoke", action="store_true", help="tiny subset, one seed: a code-path check")
    args = p.parse_args()

    base = dict(dataset="cifar10", epochs=args.epochs, device=args.device,
                precision=args.precision if args.device != "cpu" else "fp32", compile=args.compile)
    if args.smoke:
        base.update(epochs=1, train_subset=2048, test_subset=1000, batch_size=512,
                    model_options={"widths": [16, 32, 32]})
        args.seeds = 1
    print(f"device: {torch.cuda.get_device_name() if args.device.startswith('cuda') else 'cpu'}; "
          f"torch {torch.__version__}; {base}")
    warm, _ = timed_run(recipe(args.recipe, **{**base, "epochs": min(1.0, base["epochs"]), "seed": 999}))
    print(f"warm-up run: {warm:.2f} s")
    rows = []
    for seed in range(args.seeds):
        seconds, acc = timed_run(recipe(args.recipe, **base, seed=seed))
        rows.append((seed, seconds, acc))
        print(f"seed {seed}: train {seconds:.2f} s, test acc (TTA) {acc:.4f}", flush=True)
    mean_s = statistics.mean(r[1] for r in rows)
    accs = [r[2] for r in rows]
    sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
    print(f"| seeds | epochs | mean train s | mean test acc | sd |\n|---|---|---|---|---|\n"
          f"| {len(rows)} | {base['epochs']} | {mean_s:.2f} | {statistics.mean(accs):.4f} | {sd:.4f} |")
    hit = statistics.mean(accs) >= args.target
    print(f"seconds_to_{round(args.target * 100)}={mean_s:.2f}" if hit
          else f"seconds_to_{round(args.target * 100)}=n/a (mean acc {statistics.mean(accs):.4f})")


if __name__ == "__main__":
    main()
