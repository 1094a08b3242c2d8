"""Time the compressed models of notebook 05 again, interleaved, to check its speedups.

The notebook times one variant after the other; on a shared machine a burst of other
work can land on one variant only. This script loads every file of a folder once
(checkpoints through ``cnnlib.load_model``, ``.onnx`` through onnxruntime), then times
them in rounds, each round visiting every file (``bench.time_models``), and reports per
file the median over rounds: latency at batch 1, throughput at batch 256, and both relative
to the fp32 file of the same model.

    .venv/bin/python benchmarks/compression.py [--folder outputs/compression]
        [--rounds 5] [--seconds 1.0] [--threads N] [--csv PATH]

Run it only when nothing else uses the CPU.
"""

from __future__ import annotations

from pathlib import Path

import torch

from cnnlib.compress import bench, saving
from cnnlib.flags import Parser


def model_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix in (".pt", ".onnx")) if folder.is_dir() else []


def with_speedups(results: dict[str, dict]) -> list[dict]:
    rows = []
    for name, r in results.items():
        model = name.split("-", 1)[0]
        base = results.get(f"{model}-fp32")
        row = {"file": name, **r}
        if base:
            row["speedup_b1"] = base["latency_ms_b1"] / r["latency_ms_b1"]
            row["speedup_b256"] = r["throughput_b256"] / base["throughput_b256"]
        rows.append(row)
    return rows


def main() -> None:
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("--folder", default="outputs/compression")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=float, default=1.0, help="per file, batch size and round")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--csv", help="also write the table here")
    args = p.parse_args()
    files = model_files(Path(args.folder))
    if not files:  # one line, before anything loads
        p.error(f"--folder {args.folder}: no .pt or .onnx files there (notebook 05 writes them)")
    if args.threads:
        torch.set_num_threads(args.threads)
    models = {f.stem: saving.load_model(f) for f in files}  # checkpoints of every kind, and .onnx
    print(f"{len(models)} files, {torch.get_num_threads()} threads, {args.rounds} rounds",
          flush=True)
    rows = with_speedups(bench.time_models(models, seconds=args.seconds,
                                              rounds=args.rounds))
    print(f"{'file':<28} {'ms @b1':>8} {'img/s @b256':>12} {'x b1':>6} {'x b256':>7}")
    for r in rows:
        print(f"{r['file']:<28} {r['latency_ms_b1']:8.2f} {r['throughput_b256']:12.0f} "
              f"{r.get('speedup_b1', float('nan')):6.2f} {r.get('speedup_b256', float('nan')):7.2f}")
    if args.csv:
        import pandas as pd

        pd.DataFrame(rows).to_csv(args.csv, index=False)


if __name__ == "__main__":
    main()
