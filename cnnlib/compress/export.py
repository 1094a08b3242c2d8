"""ONNX: the fp32 model for onnxruntime, with the checkpoint metadata embedded.

The metadata (classes, mean, std, config, metrics) travels inside the file, so that
``cnnlib evaluate`` and ``cnnlib predict`` can use it alone.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
from pathlib import Path

import torch
from torch import nn

from cnnlib._fileio import DamagedFileError, atomic_write, first_line
from cnnlib.compress.prune import make_permanent

ONNX_META_KEY = "cnnlib"


def export_onnx(model: nn.Module, path, *, meta: dict | None = None) -> Path:
    """Export an fp32 model (dynamic batch) to ONNX, with its metadata embedded as JSON.

    ``meta`` (default ``model.meta``) lets ``load_onnx`` and the CLI use the file alone.
    """
    model = make_permanent(copy.deepcopy(model)).cpu().eval()
    meta = meta if meta is not None else getattr(model, "meta", {})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(2, 3, 32, 32)
    with contextlib.redirect_stdout(io.StringIO()):  # the exporter narrates each step
        program = torch.onnx.export(
            model, (example,), dynamo=True, input_names=["images"], output_names=["logits"],
            dynamic_shapes={"x": {0: torch.export.Dim("batch")}}, verbose=False)
    proto = program.model_proto
    entry = proto.metadata_props.add()
    entry.key, entry.value = ONNX_META_KEY, json.dumps(_json_meta(meta))
    # the serialized proto is the .onnx file (onnx.save would want the file's name)
    return atomic_write(path, lambda f: f.write(proto.SerializeToString()))


def _json_meta(meta: dict) -> dict:
    return json.loads(json.dumps({k: meta[k] for k in ("classes", "mean", "std", "config",
                                                       "metrics") if k in meta},
                                 default=float))


class OnnxModel(nn.Module):
    """An onnxruntime session behind the ``nn.Module`` call, so ``evaluate`` and ``predict`` work.

    It uses as many threads as torch does, so timings compare like for like.
    """

    def __init__(self, path, threads: int | None = None):
        super().__init__()
        import onnxruntime as ort  # optional: only .onnx models need it

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(path), options,
                                                providers=["CPUExecutionProvider"])
            self.input_name = self.session.get_inputs()[0].name
            custom = self.session.get_modelmeta().custom_metadata_map
            meta = json.loads(custom.get(ONNX_META_KEY, "{}"))
        except Exception as e:  # noqa: BLE001 - onnxruntime's errors share no base class
            raise DamagedFileError(f"onnx: {path} is damaged or not an ONNX model "
                                   f"({type(e).__name__}: {first_line(e)})") from None
        if not isinstance(meta, dict):
            raise DamagedFileError(f"onnx: {path}: its {ONNX_META_KEY!r} metadata is not a "
                                   "JSON object")
        self.meta = {**meta, "kind": "onnx"}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach().float().contiguous().cpu().numpy()
        return torch.from_numpy(self.session.run(None, {self.input_name: x})[0])


def load_onnx(path, threads: int | None = None) -> OnnxModel:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"onnx: {path} does not exist")
    return OnnxModel(path, threads).eval()
