"""Batched, reproducible augmentation with the whole split kept on the training device.

The loader holds a split as one ``uint8`` tensor on the device (airbench style) and builds
every batch with batched tensor ops; no per-sample Python loop touches pixels for crop, flip,
jitter, cutout, MixUp or CutMix.  Per batch the pipeline runs in this fixed order::

    policy -> crop -> flip -> to float -> jitter -> normalize -> cutout -> mixup / cutmix

* crop: the split is padded once (``reflect`` or ``zeros``) and each image is cut out of its
  padded copy at a random offset, i.e. a pure translation by at most ``crop_padding`` pixels.
  The crop and the batch gather are one indexing op over a strided window view.
* flip, crop offsets, jitter factors and cutout positions are drawn per sample.
* altflip (the airbench paper's alternating flip) mirrors each image in every other epoch:
  a random half in even epochs, the other half in odd ones. Every pair of consecutive epochs
  then shows each image both ways, where independent flips repeat a view half the time.
* jitter (brightness, contrast, saturation, each factor uniform in
  ``[max(0, 1 - jitter), 1 + jitter]``) runs in that fixed order, unlike torchvision's
  random order.
* cutout zeroes, after normalization (so the square sits at the channel mean), a square that
  lies wholly inside the image.
* MixUp / CutMix mix the batch with a permutation of itself and yield soft targets; one draw of
  lambda (and one CutMix box) per batch.  With both enabled each batch picks one, p=0.5.
  ``mix_prob`` < 1 mixes a batch with that probability; the others keep their one-hot targets.
* policies (AutoAugment, RandAugment, TrivialAugmentWide, AugMix: ``policies.py``) draw per
  sample on uint8, before the crop.

Randomness comes only from ``torch.Generator`` objects seeded from ``(seed, epoch)`` (plus the
rank for augmentation draws), drawn on the CPU and moved to the device, so an epoch replays
exactly after a resume.  Iterating the same epoch twice yields the same batches: call
``set_epoch`` before each epoch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from cnnlib._checks import check_int
from cnnlib.data.policies import POLICIES, PolicyAugment

AUGMENTATIONS = ("none", "crop", "flip", "altflip", "jitter", "cutout", "mixup", "cutmix",
                 "autoaugment", "randaugment", "trivialaugment", "augmix")
PAD_MODES = ("reflect", "zeros")
_GRAY = (0.299, 0.587, 0.114)  # ITU-R 601 luma, as torchvision's rgb_to_grayscale


def parse_augment(spec: str) -> frozenset[str]:
    """``"crop+flip+cutout"`` -> ``{"crop", "flip", "cutout"}``; ``"none"`` or ``""`` -> empty."""
    if not isinstance(spec, str):
        raise ValueError(f"augment: expected a '+'-joined string, got {type(spec).__name__}")
    if not spec.strip():
        return frozenset()
    names = set()
    for part in spec.split("+"):
        name = part.strip().lower()
        if name not in AUGMENTATIONS:
            raise ValueError(f"augment: unknown {name!r}; allowed: {', '.join(AUGMENTATIONS)}")
        names.add(name)
    names.discard("none")
    if {"flip", "altflip"} <= names:
        raise ValueError("augment: flip and altflip are two ways to mirror; choose one")
    return frozenset(names)


@dataclass(frozen=True)
class AugmentOptions:
    """The augmentation strengths the loader reads: a view of the same-named ``RunConfig``
    fields (``RunConfig.augment_options()``), which hold their defaults, meaning and checks."""

    crop_padding: int
    pad_mode: str
    jitter: float
    cutout_size: int
    mixup_alpha: float
    cutmix_alpha: float
    mix_prob: float
    randaugment_ops: int
    randaugment_magnitude: int


# ----------------------------------------------------------------------------- normalization


def _affine(mean, std, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) with ``x_uint8 * scale + shift == (x / 255 - mean) / std``."""
    mean_t = torch.as_tensor(mean, dtype=torch.float64).flatten()
    std_t = torch.as_tensor(std, dtype=torch.float64).flatten()
    if mean_t.numel() != 3 or std_t.numel() != 3:
        raise ValueError(f"mean/std: expected 3 per-channel values each, got {mean!r} / {std!r}")
    if not bool((std_t > 0).all()):
        raise ValueError(f"std: must be > 0 per channel, got {std!r}")
    scale = (1.0 / (255.0 * std_t)).to(device=device, dtype=dtype).view(3, 1, 1)
    shift = (-mean_t / std_t).to(device=device, dtype=dtype).view(3, 1, 1)
    return scale, shift


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    if not dtype.is_floating_point:
        raise ValueError(f"dtype: must be a floating dtype, got {dtype}")
    # Half types lose integer precision above 256 and jitter accuracy: compute in float32.
    return torch.float64 if dtype == torch.float64 else torch.float32


def normalize(images_uint8: torch.Tensor, mean, std, dtype=torch.float32) -> torch.Tensor:
    """uint8 ``[..., 3, H, W]`` -> ``(x / 255 - mean) / std``; the loader uses the same arithmetic."""
    if not isinstance(images_uint8, torch.Tensor) or images_uint8.dtype != torch.uint8:
        raise ValueError("images: expected a uint8 tensor [N, 3, H, W]")
    work = _work_dtype(dtype)
    scale, shift = _affine(mean, std, images_uint8.device, work)
    return images_uint8.to(work).mul_(scale).add_(shift).to(dtype)


# ----------------------------------------------------------------------------- pixel ops


def pad_images(images: torch.Tensor, padding: int, mode: str) -> torch.Tensor:
    """Pad H and W of a uint8 batch by ``padding`` on every side (reflect or zeros)."""
    if padding == 0:
        return images.contiguous()
    if mode == "reflect":
        return F.pad(images, (padding,) * 4, mode="reflect")
    return F.pad(images, (padding,) * 4, mode="constant", value=0)


def crop_windows(padded: torch.Tensor, rows: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor,
                 size: tuple[int, int]) -> torch.Tensor:
    """Crop ``padded[rows[i]]`` at offset ``(dy[i], dx[i])`` to ``size``, as one gather.

    A strided view enumerates every window of every image without copying; indexing it with
    (row, dy, dx) copies just the chosen windows.  The result keeps the source's memory
    format, so a channels-last source yields a channels-last batch.
    """
    n, c, hp, wp = padded.shape
    h, w = size
    s0, s1, s2, s3 = padded.stride()
    view = padded.as_strided((n, hp - h + 1, wp - w + 1, c, h, w), (s0, s2, s3, s1, s2, s3))
    return view[rows, dy, dx]


def flip_rows(x: torch.Tensor, which: torch.Tensor) -> torch.Tensor:
    """Mirror (along W) the images whose indices are in ``which``; in place."""
    if which.numel():
        x.index_copy_(0, which, x.index_select(0, which).flip(3))
    return x


def color_jitter(x: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Brightness, contrast, saturation on floats in [0, 255]; ``factors`` is ``[3, B]``; in place."""
    fb, fc, fs = (f.view(-1, 1, 1, 1) for f in factors.to(device=x.device, dtype=x.dtype))
    gray_w = torch.tensor(_GRAY, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    x.mul_(fb).clamp_(0, 255)
    mean = (x * gray_w).sum(1, keepdim=True).mean((2, 3), keepdim=True)
    x.mul_(fc).add_(mean * (1 - fc)).clamp_(0, 255)
    gray = (x * gray_w).sum(1, keepdim=True)
    return x.mul_(fs).add_(gray * (1 - fs)).clamp_(0, 255)


def fill_squares(x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, side: int,
                 value: float = 0.0) -> torch.Tensor:
    """Set a ``side`` x ``side`` square per sample (all channels) to ``value``; in place."""
    span = torch.arange(side, device=x.device)
    rows = (top[:, None] + span)[:, :, None]
    cols = (left[:, None] + span)[:, None, :]
    batch = torch.arange(len(x), device=x.device)[:, None, None]
    # Index only the squares' pixels: far cheaper than building and applying a full mask.
    x[batch, :, rows, cols] = value
    return x


def cutmix_box(lam: float, h: int, w: int, gen: torch.Generator) -> tuple[int, int, int, int]:
    """A box covering about ``1 - lam`` of the image, centred uniformly, clipped to the image."""
    ratio = math.sqrt(1.0 - lam)
    bh, bw = int(h * ratio), int(w * ratio)
    cy = int(torch.randint(0, h, (), generator=gen))
    cx = int(torch.randint(0, w, (), generator=gen))
    y1, x1 = max(cy - bh // 2, 0), max(cx - bw // 2, 0)
    y2, x2 = min(cy - bh // 2 + bh, h), min(cx - bw // 2 + bw, w)
    return y1, y2, x1, x2


# ----------------------------------------------------------------------------- the loader


def _seed(*parts: int) -> int:
    """A 64-bit seed from integers, stable across platforms and library versions."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1, np.uint64)[0])


def _generator(*parts: int) -> torch.Generator:
    return torch.Generator().manual_seed(_seed(*parts))


def _check_images(images, labels) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.as_tensor(images)
    labels = torch.as_tensor(labels)
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images: expected uint8 [N, 3, H, W], got {images.dtype} "
                         f"{list(images.shape)}")
    if len(images) == 0:
        raise ValueError("images: the split is empty")
    if labels.ndim != 1 or len(labels) != len(images) or labels.is_floating_point():
        raise ValueError(f"labels: expected integer [N] with N={len(images)}, got {labels.dtype} "
                         f"{list(labels.shape)}")
    return images, labels.long()


class BatchLoader:
    """Yields ``(x, y)`` batches of a split held on ``device``; see the module docstring.

    ``x`` is normalized ``[B, 3, H, W]`` in ``dtype`` (channels-last memory if asked);
    ``y`` is int64 ``[B]``, or float32 soft targets ``[B, num_classes]`` with mixup/cutmix.
    ``len(loader)`` is batches per epoch for this rank; ``num_samples`` is the split size.
    With ``world_size > 1`` each epoch's permutation (shared by all ranks) is dealt round
    robin, so ranks see disjoint samples and equal batch counts; with ``drop_last`` the few
    samples that do not divide evenly are dropped, otherwise the permutation is padded by
    repeating its start (a handful of samples then appear twice in that epoch).
    ``options`` are the strengths (``RunConfig.augment_options()``).
    """

    def __init__(self, images, labels, *, batch_size, mean, std, augment="none",
                 options: AugmentOptions, num_classes=None, shuffle=True, drop_last=None,
                 seed=0, device="cpu", channels_last=False, dtype=torch.float32,
                 rank=0, world_size=1):
        images, labels = _check_images(images, labels)
        if not isinstance(augment, str):  # an already parsed collection of names
            augment = "+".join(sorted(augment))
        self.augmentations = parse_augment(augment)
        if not isinstance(options, AugmentOptions):
            raise ValueError(f"options: expected AugmentOptions (RunConfig.augment_options()), "
                             f"got {type(options).__name__}")
        batch_size = check_int("batch_size", batch_size, 1)
        seed = check_int("seed", seed, 0)
        world_size = check_int("world_size", world_size, 1)
        rank = check_int("rank", rank, 0, world_size - 1)
        self.options = options
        self.batch_size = batch_size
        self.shuffle = bool(shuffle)
        self.drop_last = self.shuffle if drop_last is None else bool(drop_last)
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.device = torch.device(device)
        self.channels_last = bool(channels_last)
        self.dtype = dtype
        self._work = _work_dtype(dtype)
        self._scale, self._shift = _affine(mean, std, self.device, self._work)
        self.num_classes = self._check_classes(num_classes, labels)
        self._size = tuple(images.shape[-2:])
        self._policies = [PolicyAugment(p, options) for p in POLICIES if p in self.augmentations]
        self._pad = self._check_padding()
        self._labels = labels.to(self.device)
        self._store = self._prepare_store(images)
        self._n = len(images)
        self.epoch = 0
        # altflip: whether each image is mirrored in even epochs (odd epochs: the opposite)
        self._even_flips = (torch.rand(self._n, generator=_generator(self.seed, 2)) < 0.5
                            if "altflip" in self.augmentations else None)

    # -- setup ---------------------------------------------------------------
    def _check_classes(self, num_classes, labels: torch.Tensor) -> int | None:
        mixing = {"mixup", "cutmix"} & self.augmentations
        if num_classes is None:
            if mixing:
                raise ValueError(f"num_classes: required with {'+'.join(sorted(mixing))}")
            return None
        check_int("num_classes", num_classes, 1)
        if bool((labels < 0).any()) or bool((labels >= num_classes).any()):
            raise ValueError(f"labels: must lie in [0, {num_classes - 1}] for "
                             f"num_classes={num_classes}")
        return num_classes

    def _check_padding(self) -> int:
        pad = self.options.crop_padding if "crop" in self.augmentations else 0
        if self.options.pad_mode == "reflect" and pad >= min(self._size):
            raise ValueError(f"crop_padding: reflect padding needs < {min(self._size)} pixels, "
                             f"got {pad}; use pad_mode='zeros' or a smaller padding")
        return pad

    def _prepare_store(self, images: torch.Tensor) -> torch.Tensor:
        store = images.to(self.device).contiguous()
        if self._policies:
            return store  # policies see unpadded images; padding then happens per batch
        # Pad once: the crop then reads its window straight out of the stored split.
        store = pad_images(store, self._pad, self.options.pad_mode)
        if self.channels_last:
            store = store.contiguous(memory_format=torch.channels_last)
        return store

    # -- public --------------------------------------------------------------
    @property
    def num_samples(self) -> int:
        """Images in the split (all ranks together)."""
        return self._n

    def set_epoch(self, epoch: int) -> None:
        check_int("epoch", epoch, 0)
        self.epoch = epoch

    def __len__(self) -> int:
        per_rank = self._per_rank()
        if self.drop_last:
            return per_rank // self.batch_size
        return math.ceil(per_rank / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self.epoch_indices()
        gen = _generator(self.seed, self.epoch, 1, self.rank)
        beta_rng = np.random.default_rng(int(torch.randint(0, 1 << 62, (), generator=gen)))
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            yield self._batch(idx, gen, beta_rng)

    def epoch_indices(self) -> torch.Tensor:
        """This rank's sample indices for the current epoch, in yield order (CPU int64)."""
        if self.shuffle:
            perm = torch.randperm(self._n, generator=_generator(self.seed, self.epoch, 0))
        else:
            perm = torch.arange(self._n)
        total = self._per_rank() * self.world_size
        if total > self._n:
            perm = perm.repeat(math.ceil(total / self._n))
        return perm[:total][self.rank::self.world_size]

    def _per_rank(self) -> int:
        if self.drop_last:
            return self._n // self.world_size
        return math.ceil(self._n / self.world_size)

    # -- one batch -----------------------------------------------------------
    def _batch(self, idx: torch.Tensor, gen: torch.Generator, beta_rng) -> tuple:
        idx_dev = idx.to(self.device, non_blocking=True)
        x = self._pixels(idx_dev, gen)
        if "flip" in self.augmentations:
            flips = (torch.rand(len(idx), generator=gen) < 0.5).nonzero().squeeze(1)
            flip_rows(x, flips.to(self.device, non_blocking=True))
        elif "altflip" in self.augmentations:
            flips = (self._even_flips[idx] ^ bool(self.epoch % 2)).nonzero().squeeze(1)
            flip_rows(x, flips.to(self.device, non_blocking=True))
        x = x.to(self._work)
        if "jitter" in self.augmentations:
            x = color_jitter(x, self._jitter_factors(len(idx), gen))
        x = x.mul_(self._scale).add_(self._shift)
        if "cutout" in self.augmentations:
            x = self._cutout(x, gen)
        y = self._labels.index_select(0, idx_dev)
        if {"mixup", "cutmix"} & self.augmentations:
            x, y = self._mix(x, y, gen, beta_rng)
        return x.to(self.dtype), y

    def _pixels(self, idx_dev: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """uint8 batch after policy and crop, in the requested memory format."""
        n = len(idx_dev)
        if self._policies:
            x = self._store.index_select(0, idx_dev)
            for policy in self._policies:
                x = policy(x, gen)
            if "crop" not in self.augmentations:
                return self._to_format(x)
            source, rows = pad_images(x, self._pad, self.options.pad_mode), None
        elif "crop" in self.augmentations:
            source, rows = self._store, idx_dev
        elif self.channels_last:
            # A zero-offset window gather keeps the store's channels-last layout.
            zero = torch.zeros(n, dtype=torch.long, device=self.device)
            return crop_windows(self._store, idx_dev, zero, zero, self._size)
        else:
            return self._store.index_select(0, idx_dev)
        shifts = torch.randint(0, 2 * self._pad + 1, (2, n), generator=gen).to(self.device)
        if rows is None:
            rows = torch.arange(n, device=self.device)
        return self._to_format(crop_windows(source, rows, shifts[0], shifts[1], self._size))

    def _to_format(self, x: torch.Tensor) -> torch.Tensor:
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        return x.contiguous(memory_format=fmt)

    def _jitter_factors(self, n: int, gen: torch.Generator) -> torch.Tensor:
        s = self.options.jitter
        low = max(0.0, 1.0 - s)
        return torch.rand(3, n, generator=gen) * (1.0 + s - low) + low

    def _cutout(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        h, w = self._size
        side = min(self.options.cutout_size, h, w)
        if side == 0:
            return x
        top = torch.randint(0, h - side + 1, (len(x),), generator=gen).to(self.device)
        left = torch.randint(0, w - side + 1, (len(x),), generator=gen).to(self.device)
        return fill_squares(x, top, left, side)

    def _mix(self, x, y, gen, beta_rng) -> tuple[torch.Tensor, torch.Tensor]:
        # Drawn only below 1, so that runs mixing every batch replay their old random streams.
        p = self.options.mix_prob
        if p < 1 and not bool(torch.rand((), generator=gen) < p):
            return x, F.one_hot(y, self.num_classes).float()
        both = {"mixup", "cutmix"} <= self.augmentations
        use_mixup = "mixup" in self.augmentations
        if both:
            use_mixup = bool(torch.rand((), generator=gen) < 0.5)
        perm = torch.randperm(len(x), generator=gen).to(self.device)
        if use_mixup:
            lam = float(beta_rng.beta(self.options.mixup_alpha, self.options.mixup_alpha))
            x = x.lerp_(x.index_select(0, perm), 1.0 - lam)
        else:
            lam = float(beta_rng.beta(self.options.cutmix_alpha, self.options.cutmix_alpha))
            y1, y2, x1, x2 = cutmix_box(lam, *self._size, gen)
            x[:, :, y1:y2, x1:x2] = x[:, :, y1:y2, x1:x2].index_select(0, perm)
            lam = 1.0 - (y2 - y1) * (x2 - x1) / (self._size[0] * self._size[1])
        onehot = F.one_hot(y, self.num_classes).float()
        partner = onehot.index_select(0, perm)
        return x, onehot.mul_(lam).add_(partner, alpha=1.0 - lam)

