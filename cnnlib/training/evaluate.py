"""Evaluation: predictions (with optional test-time augmentation) and metrics.

Everything here takes uint8 images and normalization statistics, so the same
functions serve the trainer, the CLI, the notebooks and compressed models.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cnnlib.data.augment import normalize

TTA_LEVELS = (0, 1, 2)  # 0: none, 1: + horizontal mirror, 2: + mirror of 1-pixel translations


def _mirror(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (model(x) + model(x.flip(-1)))


def tta_logits(model: nn.Module, x: torch.Tensor, level: int = 0) -> torch.Tensor:
    """Logits of a normalized batch, averaged over the views of a TTA level.

    Level 2 is airbench's: the mirror average, blended with the mirror average of
    the batch shifted one pixel up-left and down-right (reflect padding).
    """
    if level not in TTA_LEVELS:
        raise ValueError(f"tta: {level!r} is not allowed; allowed: 0 (none), 1 (flip), 2 (flip+shift)")
    if level == 0:
        return model(x)
    logits = _mirror(model, x)
    if level == 1:
        return logits
    h, w = x.shape[-2:]
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    shifted = [padded[..., :h, :w], padded[..., 2 : h + 2, 2 : w + 2]]
    shifted_logits = torch.stack([_mirror(model, s) for s in shifted]).mean(0)
    return 0.5 * logits + 0.5 * shifted_logits


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    images: torch.Tensor,
    mean,
    std,
    *,
    batch_size: int = 1000,
    tta: int = 0,
    device=None,
    channels_last: bool = False,
    autocast_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Float32 logits [N, C] on the CPU for uint8 images [N, 3, H, W]."""
    device = torch.device(device) if device is not None else model_device(model)
    was_training = model.training
    model.eval()
    out = []
    try:
        for start in range(0, len(images), batch_size):
            x = normalize(images[start : start + batch_size].to(device), mean, std)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                out.append(tta_logits(model, x, tta).float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.empty(0)


def model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def confusion_matrix(preds: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Counts [true, predicted] as int64."""
    idx = labels.long() * num_classes + preds.long()
    return torch.bincount(idx, minlength=num_classes**2).view(num_classes, num_classes)


def per_class_accuracy(confusion: torch.Tensor) -> torch.Tensor:
    return confusion.diag().double() / confusion.sum(1).clamp_min(1).double()


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    k = min(k, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    return (top == labels.view(-1, 1)).any(1).double().mean().item()


def superclass_accuracy(preds: torch.Tensor, coarse: torch.Tensor, fine_to_coarse: torch.Tensor) -> float:
    """Accuracy when a fine prediction counts as right if it lies in the true superclass."""
    return (fine_to_coarse[preds] == coarse).double().mean().item()


def most_confused_pairs(confusion: torch.Tensor, classes: list[str], top: int = 10) -> list[dict]:
    """The largest off-diagonal cells of a confusion matrix, as rows for a table. Ties keep
    the matrix's order (true class, then predicted class), so every table and sentence built
    from the same matrix lists the same pairs in the same order."""
    off = confusion.clone()
    off.fill_diagonal_(0)
    flat = torch.argsort(off.flatten(), descending=True, stable=True)[:top]
    counts = off.flatten()[flat]
    n = confusion.shape[0]
    rows = []
    for c, i in zip(counts.tolist(), flat.tolist(), strict=True):
        if c == 0:
            break
        t, p = divmod(i, n)
        rows.append({"true": classes[t], "predicted": classes[p], "count": c,
                     "share_of_true": c / max(1, int(confusion[t].sum()))})
    return rows


def metrics_from_logits(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    coarse: torch.Tensor | None = None,
    fine_to_coarse: torch.Tensor | None = None,
) -> dict:
    """Loss, accuracy, top-5, confusion matrix, per-class and (CIFAR-100) superclass accuracy."""
    labels = labels.long()
    num_classes = logits.shape[1]
    preds = logits.argmax(1)
    confusion = confusion_matrix(preds, labels, num_classes)
    out = {
        "loss": F.cross_entropy(logits, labels).item(),
        "acc": (preds == labels).double().mean().item(),
        "top5": topk_accuracy(logits, labels, 5),
        "per_class_acc": per_class_accuracy(confusion),
        "confusion": confusion,
        "preds": preds,
        "probs": logits.softmax(1),
    }
    if coarse is not None and fine_to_coarse is not None:
        out["superclass_acc"] = superclass_accuracy(preds, coarse, fine_to_coarse)
    return out


def evaluate(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    mean,
    std,
    *,
    coarse: torch.Tensor | None = None,
    fine_to_coarse: torch.Tensor | None = None,
    **predict_kwargs,
) -> dict:
    """Metrics of `model` on uint8 `images`; see `metrics_from_logits` for the keys."""
    logits = predict_logits(model, images, mean, std, **predict_kwargs)
    return metrics_from_logits(logits, labels, coarse=coarse, fine_to_coarse=fine_to_coarse)


def scalar_metrics(metrics: dict, prefix: str = "") -> dict:
    """The float entries of a metrics dict (what goes into histories and tables)."""
    return {prefix + k: v for k, v in metrics.items() if isinstance(v, float)}
