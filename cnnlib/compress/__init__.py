"""Model compression: pruning, int8 quantization and ONNX export, with checkpoints for each.

One module per job:

- :mod:`.prune`: unstructured (global magnitude) and structured (channel) pruning;
- :mod:`.finetune`: a few hundred steps with the run's own recipe, after pruning or for QAT;
- :mod:`.quantize`: int8 in FX graph mode for the x86 backend (PTQ and QAT);
- :mod:`.export`: ONNX for onnxruntime, the metadata embedded;
- :mod:`.saving`: checkpoints of pruned and int8 models, and :func:`load_model`, which
  reads every kind (fp32, pruned, int8, ONNX);
- :mod:`.bench`: file sizes, CPU latency and throughput.

Notebook 05's study (which variants, per profile) is in :mod:`cnnlib.study.definitions`, the code that
builds and measures them in :mod:`cnnlib.study.compression`, its figure in :mod:`cnnlib.viz.charts`.
"""
