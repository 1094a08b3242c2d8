"""cnnlib: CIFAR-10/100 data, batched augmentation, a model zoo, a trainer and evaluation."""

from .compress import load_model  # every kind: fp32, pruned, int8, ONNX
from .data import CifarData, channel_stats, load_cifar, test_split, train_split
from .evaluate import evaluate, predict_logits
from .models import count_parameters, create_model, list_models
from .train import RECIPES, RunConfig, TrainResult, lr_find, recipe, train

__version__ = "0.1.0"

__all__ = [
    "RECIPES", "CifarData", "RunConfig", "TrainResult", "channel_stats",
    "count_parameters", "create_model", "evaluate", "list_models", "load_cifar", "load_model",
    "lr_find", "predict_logits", "recipe", "test_split", "train", "train_split",
]
