"""Fine-tuning a compressed model: a few hundred steps with its run's own recipe."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cnnlib.data.augment import BatchLoader
from cnnlib.training.config import RunConfig
from cnnlib.training.evaluate import model_device
from cnnlib.training.loop import lr_factor, make_optimizer, set_lr


def _num_classes(model: nn.Module) -> int:
    return [m for m in model.modules() if isinstance(m, nn.Linear)][-1].out_features


def fine_tune(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, mean, std, *,
              steps: int, config: dict | None = None, batch_size: int = 256,
              lr_scale: float = 0.1, seed: int = 0, progress: bool = False) -> nn.Module:
    """Train ``model`` for ``steps`` batches with its run's recipe, then leave it in eval mode.

    ``config`` is the run's config dict (``model.meta["config"]``; the baseline recipe
    when None): optimizer, weight decay, label smoothing and augmentation come from it.
    The learning rate is ``lr_scale`` times the run's peak rate (scaled to
    ``batch_size``), decayed to zero on a cosine. Pruning masks stay in force.
    """
    cfg = RunConfig.from_dict(config) if config else RunConfig()
    batch_size = min(batch_size, len(images))
    cfg = cfg.replace(batch_size=batch_size, lr=cfg.lr * lr_scale * batch_size / cfg.batch_size,
                      schedule="cosine", warmup=0.0, final_lr=0.0, lookahead=False)
    device = model_device(model)
    loader = BatchLoader(images, labels, batch_size=batch_size, mean=mean, std=std,
                         augment=cfg.augment, options=cfg.augment_options(),
                         num_classes=_num_classes(model), seed=seed, device=device)
    optimizer = make_optimizer(cfg, model)
    model.train()
    step, epoch, loss = 0, 0, torch.zeros(())
    while step < steps:
        loader.set_epoch(epoch)
        epoch += 1
        for x, y in loader:
            if step >= steps:
                break
            set_lr(optimizer, lr_factor(cfg, step, steps))
            loss = F.cross_entropy(model(x).float(), y, label_smoothing=cfg.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
    model.eval()
    if progress:
        print(f"  fine-tuned {steps} steps (batch {batch_size}); last loss {loss.item():.4f}",
              flush=True)
    return model
