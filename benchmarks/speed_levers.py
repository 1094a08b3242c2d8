"""What each speed lever is worth to the fast recipe on this CPU, one lever at a time.

Every row is a fresh process that builds the real trainer (`recipe`, default fastnet_muon)
on the real CIFAR-10 training set with one change, trains ``--warmup`` steps (these pay for
oneDNN primitives, or for compiling), then times ``--steps`` more steps of the trainer's own
epoch loop: batch assembly and augmentation, forward, backward, optimizer. The final
evaluation (the recipe's TTA) is timed in the same process on 2,000 test images and scaled to
the 10,000. From the two, the row estimates a whole run: ``epochs * 50,000 / img/s +
evaluation + setup`` (setup: loading the split, the whitening layer's init).

Levers: bf16 autocast against fp32, channels_last against NCHW, the batch size, Muon against
Nesterov SGD (the optimizer's own cost), ``torch.compile`` of the model (its compile time is
in the note: a first run pays it, later runs mostly hit inductor's on-disk cache),
the evaluation batch, OpenMP thread binding, jemalloc (the copy that ships with ray) in
place of glibc's allocator (as shipped, and keeping its freed pages: ``jemalloc kept``),
torch's CPU allocator without 2 MB pages (``no huge pages``: ``THP_MEM_ALLOC_ENABLE=0``;
``import cnnlib`` turns them on), the whitening bias frozen from the first step (the steps
after ``whiten_epochs``: backward stops at the first conv group), and oneDNN's filter
gradient in place of the hand-written one on fastnet's small maps (``no small-map grad``:
none; ``small-map 3x3 only``: the 7x7 maps take oneDNN's). Each row also counts the page
faults of a timed step (a fresh page costs the kernel a fault and a zeroing). Run it with
nothing else on the machine.

    python benchmarks/speed_levers.py                  # every lever, about 10 minutes
    python benchmarks/speed_levers.py --levers recipe,compile --steps 10

The last line is ``best_lever=<name> <x>x``: the fastest row's estimated run time against
the recipe row's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from cnnlib.flags import Parser

REPO = Path(__file__).resolve().parents[1]


def _jemalloc() -> str | None:
    try:
        import ray
    except ImportError:
        return None
    path = Path(ray.__file__).parent / "core" / "libjemalloc.so"
    return str(path) if path.is_file() else None


# name -> (RunConfig changes, environment changes, evaluation batch)
LEVERS = {
    "recipe": ({}, {}, 1000),
    "fp32": ({"precision": "fp32"}, {}, 1000),
    "nchw": ({"channels_last": False}, {}, 1000),
    "batch 1024": ({"batch_size": 1024}, {}, 1000),
    "batch 4000": ({"batch_size": 4000}, {}, 1000),
    "nesterov sgd": ({"optimizer": "nesterov"}, {}, 1000),
    "compile": ({"compile": True}, {}, 1000),
    "whiten frozen": ({"whiten_epochs": 1e-3}, {}, 1000),
    "no small-map grad": ({}, {"CNNLIB_SMALL_MAP": "0"}, 1000),
    "small-map 3x3 only": ({}, {"CNNLIB_SMALL_MAP": "16"}, 1000),
    "no huge pages": ({}, {"THP_MEM_ALLOC_ENABLE": "0"}, 1000),
    "eval batch 500": ({}, {}, 500),
    "eval batch 2500": ({}, {}, 2500),
    "omp bind": ({}, {"OMP_PROC_BIND": "close", "OMP_PLACES": "cores"}, 1000),
    "jemalloc": ({}, {"LD_PRELOAD": "jemalloc"}, 1000),
    "jemalloc kept": ({}, {"LD_PRELOAD": "jemalloc",
                           "MALLOC_CONF": "retain:true,dirty_decay_ms:-1,muzzy_decay_ms:-1"}, 1000),
}


def worker(spec: dict) -> dict:
    sys.path.insert(0, str(REPO))
    import resource

    import torch

    from cnnlib.training.config import recipe  # `import cnnlib` sets THP_MEM_ALLOC_ENABLE
    from cnnlib.training.device import huge_page_allocs
    from cnnlib.training.evaluate import predict_logits
    from cnnlib.training.loop import Trainer

    if "CNNLIB_SMALL_MAP" in os.environ:  # the library's conv for every fastnet map size
        from cnnlib.models.fastnet import DiracConv

        DiracConv.small_map = int(os.environ["CNNLIB_SMALL_MAP"])
    config = recipe(spec["recipe"], **spec["changes"])
    t0 = time.perf_counter()
    trainer = Trainer(config, None, progress=False)
    setup_s = time.perf_counter() - t0
    trainer.total_steps = spec["warmup"]
    t0 = time.perf_counter()
    trainer.train_epoch()
    warmup_s = time.perf_counter() - t0
    trainer.total_steps = spec["warmup"] + spec["steps"]
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t0 = time.perf_counter()
    trainer.train_epoch()
    train_s = time.perf_counter() - t0
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    images = spec["steps"] * config.batch_size
    test = trainer.test_split.images
    t0 = time.perf_counter()
    predict_logits(trainer.model, test[:2000], trainer.mean, trainer.std, tta=config.tta,
                   batch_size=spec["eval_batch"], device=trainer.device,
                   channels_last=config.channels_last, autocast_dtype=trainer.amp_dtype)
    eval_s = (time.perf_counter() - t0) * len(test) / 2000
    img_s = images / train_s
    train_images = len(trainer.train_split)
    return {"img_s": img_s, "eval_s": eval_s, "setup_s": setup_s, "warmup_s": warmup_s,
            "run_min": (config.epochs * train_images / img_s + eval_s + setup_s) / 60,
            "precision": trainer.precision, "threads": torch.get_num_threads(),
            "faults_k": faults / spec["steps"] / 1000, "huge_pages": huge_page_allocs(),
            "load": os.getloadavg()[0]}


def run_one(spec: dict, env_changes: dict, timeout: float) -> dict:
    env = dict(os.environ)
    for k, v in env_changes.items():
        if v == "jemalloc":
            v = _jemalloc()
            if v is None:
                return {"error": "no jemalloc found (ray's copy is missing)"}
        env[k] = v
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines() or ["no output"]
        return {"error": lines[-1][:90]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def parse_args(argv=None) -> argparse.Namespace:
    p = Parser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", default="fastnet_muon", help="the recipe the levers change")
    p.add_argument("--levers", default=",".join(LEVERS), help=f"subset of: {', '.join(LEVERS)}")
    p.add_argument("--steps", type=int, default=6, help="timed training steps (default 6)")
    p.add_argument("--warmup", type=int, default=2, help="untimed first steps (default 2)")
    p.add_argument("--timeout", type=float, default=900.0, help="per-row limit in seconds")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if not args.worker:
        from cnnlib.training.config import RECIPES

        args.levers = args.levers.split(",")
        unknown = [lever for lever in args.levers if lever not in LEVERS]
        if unknown:
            p.error(f"--levers: unknown {unknown[0]!r}; allowed: {', '.join(LEVERS)}")
        if args.recipe not in RECIPES:
            p.error(f"--recipe: unknown {args.recipe!r}; allowed: {', '.join(RECIPES)}")
        if args.steps < 1 or args.warmup < 1:
            p.error("--steps and --warmup must be >= 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    sys.path.insert(0, str(REPO))
    from cnnlib.training.device import hardware

    print(f"{args.recipe} on {hardware()}; {args.warmup} warm-up + {args.steps} timed steps a row")
    head = f"{'lever':<16}{'img/s':>8}{'eval s':>8}{'run min':>9}  note"
    print(head)
    print("-" * len(head))
    rows = {}
    for name in args.levers:
        changes, env, eval_batch = LEVERS[name]
        spec = {"recipe": args.recipe, "changes": changes, "steps": args.steps,
                "warmup": args.warmup, "eval_batch": eval_batch}
        res = run_one(spec, env, args.timeout)
        if "error" in res:
            print(f"{name:<16}{'failed':>8}  {res['error']}", flush=True)
            continue
        rows[name] = res
        note = (f"{res['precision']}, {res['faults_k']:.0f}k faults a step"
                f"{'' if res['huge_pages'] else ' (no huge pages)'}, warm-up {res['warmup_s']:.0f} s, "
                f"setup {res['setup_s']:.0f} s, load {res['load']:.1f}")
        print(f"{name:<16}{res['img_s']:>8.0f}{res['eval_s']:>8.1f}{res['run_min']:>9.2f}  {note}",
              flush=True)
    if "recipe" in rows and rows:
        best = min(rows, key=lambda n: rows[n]["run_min"])
        print(f"best_lever={best} {rows['recipe']['run_min'] / rows[best]['run_min']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
