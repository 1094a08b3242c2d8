"""Model compression: pruning, int8 quantization and ONNX export, with checkpoints for each.

One module per job:

- :mod:`.prune`: unstructured (global magnitude) and structured (channel) pruning;
- :mod:`.finetune`: a few hundred steps with the run's own recipe, after pruning or for QAT;
- :mod:`.quantize`: int8 in FX graph mode for the x86 backend (PTQ and QAT);
- :mod:`.export`: ONNX for onnxruntime, the metadata embedded;
- :mod:`.saving`: checkpoints of pruned and int8 models, and :func:`load_model`, which
  reads every kind (fp32, pruned, int8, ONNX);
- :mod:`.bench`: file sizes, CPU latency and throughput.

Notebook 05's study (which variants, per profile) is in :mod:`cnnlib.studies`, the code that
builds and measures them in :mod:`cnnlib.compression_study`, its figure in :mod:`cnnlib.plots`.
"""

from .bench import benchmark, file_size_mb, time_models, time_per_call, zipped_size_mb
from .export import OnnxModel, export_onnx, load_onnx
from .finetune import fine_tune
from .prune import (
    channel_widths,
    magnitude_prune,
    make_permanent,
    prunable_weights,
    prune_channels,
    sparsity,
)
from .quantize import QuantizedModel, quantize_int8, quantize_qat
from .saving import load_model, save_compressed

__all__ = [
    "OnnxModel",
    "QuantizedModel",
    "benchmark",
    "channel_widths",
    "export_onnx",
    "file_size_mb",
    "fine_tune",
    "load_model",
    "load_onnx",
    "magnitude_prune",
    "make_permanent",
    "prunable_weights",
    "prune_channels",
    "quantize_int8",
    "quantize_qat",
    "save_compressed",
    "sparsity",
    "time_models",
    "time_per_call",
    "zipped_size_mb",
]
