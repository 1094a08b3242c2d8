"""The exact pixel nearest-neighbour search of `cnnlib.data.duplicates`: int8 products against
fp32 slices, on the real CIFAR-10 test images against its 50,000 training images.

    python benchmarks/duplicates_search.py [--queries 1024] [--repeats 3]

Both ways give the same exact distances (checked here); the search takes whichever a probe
block finds faster on this CPU (`_int8_matmul_faster`). Each way is timed `--repeats` times on
the first `--queries` test images with k=5; the fastest repeat is printed, with the time the
whole test set would take at that speed. Run it only when nothing else uses the CPU.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from cnnlib.data import duplicates as D  # noqa: E402
from cnnlib.data.cifar import load_cifar  # noqa: E402
from cnnlib.flags import Parser  # noqa: E402
from cnnlib.training.device import hardware  # noqa: E402


def main(argv=None) -> None:
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("--queries", type=int, default=1024, help="test images searched per repeat")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats; the fastest is shown")
    args = p.parse_args(argv)
    if not 1 <= args.queries <= 10_000 or args.repeats < 1:
        p.error("--queries takes 1..10000 and --repeats at least 1")
    data = load_cifar("cifar10")
    queries = data.test_images[:args.queries]
    print(f"{hardware('cpu')}; {args.queries} queries against {len(data.train_images):,} "
          f"training images, k=5; the probe picks {'int8' if D._int8_matmul_faster() else 'fp32'}")
    found = {}
    for name, faster in (("int8", True), ("fp32", False)):
        D._int8_matmul_faster = lambda faster=faster: faster  # this script's process only
        best = float("inf")
        for _ in range(args.repeats):
            start = time.perf_counter()
            found[name] = D.nearest_neighbours(queries, data.train_images, k=5)
            best = min(best, time.perf_counter() - start)
        print(f"{name}: {best:.2f} s ({best * 10_000 / args.queries:.0f} s for the 10,000 test "
              "images)")
    same = torch.equal(found["int8"].distance, found["fp32"].distance)
    print(f"same distances: {same}")
    if not same:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
