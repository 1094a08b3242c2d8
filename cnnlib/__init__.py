"""cnnlib: CIFAR-10/100 data, batched augmentation, a model zoo, a trainer and evaluation.

The core (`data`, `models`, `training`, `compress`) knows nothing of the study; the study
layer (`study`, and `viz` for its figures) sits above it. This module is the public API of
the core, exported once here.
"""

import os

# PyTorch's CPU allocator asks Linux for 2 MB pages on allocations of 2 MB and more (madvise)
# when this is set before its first allocation: a fastnet_muon training step then faults
# 24k pages instead of 1,002k, and whole processes ran about 15% faster on 2 AMX cores
# (README, speed levers). THP_MEM_ALLOC_ENABLE=0 in the environment turns it off.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

from cnnlib.compress.saving import load_model  # every kind: fp32, pruned, int8, ONNX
from cnnlib.data.cifar import CifarData, channel_stats, load_cifar, test_split, train_split
from cnnlib.models.registry import count_parameters, create_model, list_models
from cnnlib.training.config import RECIPES, RunConfig, recipe
from cnnlib.training.evaluate import evaluate, predict_logits
from cnnlib.training.loop import TrainResult, lr_find, train

__version__ = "0.1.0"

__all__ = [
    "RECIPES", "CifarData", "RunConfig", "TrainResult", "channel_stats",
    "count_parameters", "create_model", "evaluate", "list_models", "load_cifar", "load_model",
    "lr_find", "predict_logits", "recipe", "test_split", "train", "train_split",
]
