"""Model registry and the CIFAR model families of the study.

Every model takes normalized ``float32`` images ``[B, 3, 32, 32]`` and returns
logits ``[B, num_classes]``. Each one exposes ``features`` (an ``nn.Sequential``
ending at the last spatial feature map, a natural Grad-CAM target) and ``head``
(the final ``nn.Linear``), so interpretation and compression code can treat all
families alike.

Factories are thin, timm-style: ``name(num_classes=10, **kwargs)`` registered with
:func:`register_model`, returning their class (named by the return annotation) built
with the architecture's fixed arguments plus ``kwargs``. The class holds the options:
its keyword-only arguments, their defaults (:func:`model_options`) and their checks,
so docs and CLI stay in step with the code.
"""

from __future__ import annotations

# Importing a family registers its factories (the registry's functions: `models.registry`).
from cnnlib.models import baseline, densenet, fastnet, resnet, wrn  # noqa: F401
