"""Loader throughput: torchvision's per-sample pipeline vs cnnlib's batched BatchLoader.

    python benchmarks/loader_throughput.py [--batches 40] [--batch-size 512] [--repeats 3]

Uses the real CIFAR-10 training images when they can be read (``cnnlib.data.cifar.load_cifar``,
which honours ``CNNLIB_DATA_ROOT``; else the official pickles under the data root), otherwise
random uint8 images of the same shape (and says so).  Each pipeline is timed over ``--batches``
batches after a warm-up, ``--repeats`` times; the fastest repeat is reported, as the one least
disturbed by other processes (the load average is printed too).  The last line is
``speedup_vs_torchvision=<x>`` for crop+flip+normalize (cnnlib vs torchvision).
"""

from __future__ import annotations

import argparse
import gc
import os
import pickle
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from cnnlib.data.augment import BatchLoader  # noqa: E402
from cnnlib.flags import Parser
from cnnlib.training.config import RunConfig  # noqa: E402

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CNNLIB_PIPELINES = ("crop+flip", "crop+flip+cutout", "crop+flip+cutout+mixup", "randaugment")


# ----------------------------------------------------------------------------- data


def _read_pickles(root: Path) -> tuple[torch.Tensor, torch.Tensor] | None:
    folder = root / "cifar10" / "cifar-10-batches-py"
    files = [folder / f"data_batch_{i}" for i in range(1, 6)]
    if not all(f.is_file() for f in files):
        return None
    images, labels = [], []
    for f in files:
        with open(f, "rb") as fh:
            batch = pickle.load(fh, encoding="latin1")  # the official files: trusted layout
        images.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.append(np.asarray(batch["labels"], dtype=np.int64))
    return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))


def load_train_images() -> tuple[torch.Tensor, torch.Tensor, str]:
    """(images uint8 [N,3,32,32], labels, description of the source)."""
    try:
        from cnnlib.data.cifar import load_cifar

        data = load_cifar("cifar10", download=False)
        return data.train_images, data.train_labels, "real CIFAR-10 train (cnnlib.data.cifar)"
    except Exception as exc:  # any failure falls back to the next source
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    root = Path(os.environ.get("CNNLIB_DATA_ROOT") or "data")
    found = _read_pickles(root)
    if found is not None:
        return found[0], found[1], f"real CIFAR-10 train (pickles under {root})"
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (50000, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (50000,), generator=g)
    return images, labels, f"RANDOM uint8 images (no CIFAR-10 found; {reason})"


# ----------------------------------------------------------------------------- timing


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_batches(
    next_batch: Callable[[], tuple],
    batches: int,
    repeats: int,
    device: torch.device,
    warmup: int = 2,
) -> tuple[float, int]:
    """Fastest seconds for ``batches`` batches over the repeats, and the batch size seen."""
    size = 0
    for _ in range(warmup):
        size = len(next_batch()[1])
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(batches):
            next_batch()
        _sync(device)
        times.append(time.perf_counter() - start)
    return min(times), size


def cycling(make_iter: Callable[[int], Iterator]) -> Callable[[], tuple]:
    """``next`` over consecutive epochs, restarting the iterator when one runs out."""
    state = {"epoch": 0, "it": make_iter(0)}

    def next_batch():
        try:
            return next(state["it"])
        except StopIteration:
            state["epoch"] += 1
            state["it"] = make_iter(state["epoch"])
            return next(state["it"])

    return next_batch


class _PerSampleCifar(torch.utils.data.Dataset):
    """torchvision's CIFAR10 dataset behaviour: HWC uint8 -> PIL image -> transform."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform):
        self.images = images.permute(0, 2, 3, 1).contiguous().numpy()
        self.labels = labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), self.labels[i]


def torchvision_next(images, labels, batch_size: int, workers: int) -> Callable[[], tuple]:
    from torchvision import transforms as T

    tf = T.Compose(
        [
            T.RandomCrop(32, padding=4),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(CIFAR10_MEAN, CIFAR10_STD),
        ]
    )
    loader = torch.utils.data.DataLoader(
        _PerSampleCifar(images, labels, tf),
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        drop_last=True,
        persistent_workers=workers > 0,
    )
    return cycling(lambda _epoch: iter(loader))


def cnnlib_next(
    images, labels, batch_size: int, augment: str, device
) -> tuple[Callable, BatchLoader]:
    loader = BatchLoader(
        images,
        labels,
        batch_size=batch_size,
        mean=CIFAR10_MEAN,
        std=CIFAR10_STD,
        augment=augment,
        options=RunConfig().augment_options(),
        num_classes=10,
        shuffle=True,
        seed=0,
        device=device,
    )

    def make_iter(epoch: int) -> Iterator:
        loader.set_epoch(epoch)
        return iter(loader)

    return cycling(make_iter), loader


# ----------------------------------------------------------------------------- main


def parse_args(argv=None) -> argparse.Namespace:
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, default=40, help="timed batches per repeat")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--repeats", type=int, default=3, help="timed repeats; the fastest is shown")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers for torchvision")
    p.add_argument("--device", default="cpu", help="device for the cnnlib loaders")
    p.add_argument("--threads", type=int, default=0,
                   help="torch intra-op threads for the cnnlib loaders (0: torch's default)")
    p.add_argument(
        "--per-sample-policy",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time RandAugment applied one image at a time",
    )
    args = p.parse_args(argv)
    if args.batches < 1 or args.batch_size < 1 or args.repeats < 1:
        p.error("--batches, --batch-size and --repeats must be >= 1")
    return args


def run(args) -> list[tuple[str, float, float]]:
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    images, labels, source = load_train_images()
    device = torch.device(args.device)
    print(f"data: {source}, {len(images)} images {list(images.shape[1:])}")
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, cnnlib device {device}, "
        f"batch {args.batch_size}, {args.batches} batches x {args.repeats} repeats"
    )
    rows = []

    def record(name: str, next_batch, batches: int, dev, warmup: int = 2) -> None:
        seconds, size = time_batches(next_batch, batches, args.repeats, dev, warmup)
        rows.append((name, batches * size / seconds, batches / seconds))
        print(f"  timed {name}: {rows[-1][1]:,.0f} img/s", flush=True)

    tv = torchvision_next(images, labels, args.batch_size, args.workers)
    record(
        f"torchvision crop+flip (per-sample, {args.workers} workers)",
        tv,
        args.batches,
        torch.device("cpu"),
        warmup=2 + 4 * args.workers,  # drain the batches the workers prefetched meanwhile
    )
    del tv  # stops the workers so they do not compete with the loaders timed next
    gc.collect()
    for aug in CNNLIB_PIPELINES:
        next_batch, _ = cnnlib_next(images, labels, args.batch_size, aug, device)
        record(f"cnnlib {aug}", next_batch, args.batches, device)
    if args.per_sample_policy:
        # The fallback path: one torchvision call per image (slow; fewer batches).
        next_batch, loader = cnnlib_next(images, labels, args.batch_size, "randaugment", device)
        loader._policies[0].grouped = False
        record(
            "cnnlib randaugment (per-sample v2 calls)",
            next_batch,
            max(2, args.batches // 8),
            device,
        )
    return rows


def print_table(rows: list[tuple[str, float, float]]) -> float:
    base = rows[0][1]
    width = max(len(r[0]) for r in rows)
    print(f"\n{'pipeline':<{width}}  {'images/s':>10}  {'batches/s':>9}  {'speedup':>7}")
    for name, ips, bps in rows:
        print(f"{name:<{width}}  {ips:>10,.0f}  {bps:>9.1f}  {ips / base:>6.1f}x")
    crop_flip = next(ips for name, ips, _ in rows if name == "cnnlib crop+flip")
    return crop_flip / base


def load_note() -> str:
    """The 1-minute load average against the core count: other busy processes distort timings
    (multi-threaded torch ops suffer most when a core is taken)."""
    if not hasattr(os, "getloadavg"):
        return "load: unknown"
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    busy = "  <- machine busy, timings unreliable" if load > 0.5 * cores else ""
    return f"load average {load:.2f} on {cores} cores{busy}"


def main(argv=None) -> None:
    args = parse_args(argv)
    print(f"before: {load_note()}")
    rows = run(args)
    print(f"after: {load_note()}")
    speedup = print_table(rows)
    print(f"speedup_vs_torchvision={speedup:.1f}")


if __name__ == "__main__":
    main()
