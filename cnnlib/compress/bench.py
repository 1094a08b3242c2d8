"""Measuring compressed models: file sizes, CPU latency and throughput."""

from __future__ import annotations

import os
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

MB = 1e6  # sizes are decimal megabytes


def file_size_mb(path) -> float:
    return os.path.getsize(path) / MB


def zipped_size_mb(path) -> float:
    """Size after deflate (level 9): what an archive or a download would carry."""
    return len(zlib.compress(Path(path).read_bytes(), 9)) / MB


@torch.no_grad()
def time_per_call(model: nn.Module, batch_size: int, *, seconds: float = 1.0,
                  min_calls: int = 5, warmup: int = 2) -> float:
    """Median wall seconds of ``model(x)`` for a normalized batch of ``batch_size`` images."""
    x = torch.randn(batch_size, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    model.eval()
    for _ in range(warmup):
        model(x)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_calls or time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def benchmark(model: nn.Module, *, seconds: float = 1.0) -> dict:
    """CPU latency at batch 1 (ms) and throughput at batch 256 (images/s), with torch's threads."""
    return {
        "latency_ms_b1": 1e3 * time_per_call(model, 1, seconds=seconds, min_calls=20),
        "throughput_b256": 256 / time_per_call(model, 256, seconds=seconds, min_calls=3),
        "threads": torch.get_num_threads(),
    }


ROUNDS = 5  # timings are the median of this many rounds, with their range
TIMINGS = ("latency_ms_b1", "throughput_b256")  # what benchmark() times


def time_models(models: dict[str, nn.Module], *, seconds: float = 1.0, rounds: int = ROUNDS,
                progress: Callable[[int, int], None] | None = None) -> dict[str, dict]:
    """:func:`benchmark` of several models, in rounds that each visit every model.

    A burst of other work on the machine then spreads over all models instead of
    landing on one. Per model: the median over rounds of each timing, its lowest and
    highest round (``<timing>_min``, ``<timing>_max``) and the number of rounds.
    ``progress(round, rounds)`` is called after each round.
    """
    runs = {name: [] for name in models}
    for i in range(rounds):
        for name, model in models.items():
            runs[name].append(benchmark(model, seconds=seconds))
        if progress:
            progress(i + 1, rounds)
    out = {}
    for name, rs in runs.items():
        row = {}
        for key in TIMINGS:
            values = [r[key] for r in rs]
            row |= {key: float(np.median(values)), f"{key}_min": float(min(values)),
                    f"{key}_max": float(max(values))}
        out[name] = {**row, "threads": rs[0]["threads"], "timing_rounds": rounds}
    return out
