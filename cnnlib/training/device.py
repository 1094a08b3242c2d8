"""What the machine can do: native bf16 on the CPU, the precision `auto` picks, and the
one-line hardware description that every result row carries.

bf16 autocast pays on a CPU only where the matrix units run it natively (AMX-BF16 on
Intel Xeon, AVX512-BF16 on AMD EPYC / Intel); elsewhere oneDNN emulates it and it is
slower than fp32, so `auto` keeps fp32 there.
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch

NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # names as in torch.cpu and /proc/cpuinfo
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# Where `auto` resolves to each precision (`resolve_precision`), in words.
AUTO_MACHINES = {"bf16": "CUDA, or a CPU with native bf16: AVX512-BF16 or AMX-BF16",
                 "fp32": "a CPU without native bf16"}


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> set[str]:
    """The CPU's feature flags: torch's own detection where it exists, else `cpuinfo`."""
    get = getattr(torch.cpu, "get_capabilities", None)  # torch >= 2.7
    if get is not None:
        with contextlib.suppress(Exception):
            return {name for name, value in get().items() if value is True}
    with contextlib.suppress(OSError):
        for line in Path(cpuinfo).read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


@functools.lru_cache(maxsize=1)
def native_bf16_cpu() -> bool:
    """True when this CPU computes bf16 natively (AMX-BF16 or AVX512-BF16)."""
    flags = cpu_flags()
    return any(f in flags for f in NATIVE_BF16_FLAGS)


def bf16_reason() -> str:
    """Which flag made the CPU bf16-native, for the run's first line."""
    flags = cpu_flags()
    found = [f.upper().replace("_", "-") for f in NATIVE_BF16_FLAGS if f in flags]
    return found[0] if found else "no native bf16"


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """`auto` -> bf16 on CUDA and on a CPU with native bf16, fp32 elsewhere; others unchanged."""
    if precision != "auto":
        return precision
    kind = torch.device(device).type
    if kind == "cuda" or (kind == "cpu" and native_bf16_cpu()):
        return "bf16"
    return "fp32"


def precision_note(precision: str, resolved: str, device: torch.device | str) -> str:
    """One line saying which precision a run uses and why."""
    kind = torch.device(device).type
    if precision != "auto":
        return f"precision {resolved} (set)"
    why = "CUDA" if kind == "cuda" else f"CPU: {bf16_reason()}"
    return f"precision {resolved} (auto; {why})"


def cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU's model name, with its family and model numbers: a name such as "AMD EPYC"
    covers generations whose training speeds differ by half."""
    fields = {}
    with contextlib.suppress(OSError):
        for line in Path(cpuinfo).read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    name = fields.get("model name") or "CPU"
    if fields.get("cpu family") and fields.get("model"):
        name += f" family {fields['cpu family']} model {fields['model']}"
    return name


def cpu_isa() -> str:
    """The vector unit torch uses and the native bf16 units: 'AVX2', 'AVX512, AMX-BF16', ...
    (one CPU model name covers generations that differ exactly here)."""
    isa = getattr(torch.backends.cpu, "get_cpu_capability", lambda: "unknown")()
    flags = cpu_flags()
    return ", ".join([isa, *(f.upper().replace("_", "-") for f in NATIVE_BF16_FLAGS if f in flags)])


def huge_page_allocs() -> bool:
    """True when torch's CPU allocator asks for 2 MB pages (`THP_MEM_ALLOC_ENABLE`, which
    `import cnnlib` sets unless torch allocated before it). It then aligns blocks of 2 MB
    and more to a page; its plain path aligns to 64 bytes, and glibc serves a block of
    64 MB (untouched here) from its own mapping, 64 bytes past the page."""
    return torch.empty(1 << 26, dtype=torch.uint8).data_ptr() % 4096 == 0


def hardware(device: str = "cpu") -> str:
    """What a run trained on, for the results table: the GPU's name, or the CPU's model and
    the cores torch uses; with the torch version. ``device`` as results report it."""
    if device.startswith("cuda") and torch.cuda.is_available():
        n = device.split(" x")[1] if " x" in device else "1"
        what = f"{n}x {torch.cuda.get_device_name(0)}"
    else:
        what = f"{cpu_model()} ({cpu_isa()}), {torch.get_num_threads()} threads"
    return f"{what}, torch {torch.__version__.split('+')[0]}"
