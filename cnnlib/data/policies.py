"""Policy augmentations (AutoAugment, RandAugment, TrivialAugment, AugMix) for the batch loader.

AutoAugment with the CIFAR-10 policy, RandAugment, TrivialAugmentWide and AugMix use
torchvision.transforms.v2 on uint8.  Every sample draws its own ops and magnitudes; samples
that drew the same op and magnitude are then transformed together, so a batch costs one call
per distinct draw instead of one per image (same distribution as per-sample calls).  Should
torchvision's internal op table be unavailable, each image is transformed on its own.
Measured on 2 idle CPU cores, batch 512: RandAugment(2, 9) ~34k img/s grouped vs ~4k
per-sample; AutoAugment ~37k vs ~7k; TrivialAugmentWide ~16k vs ~8k (its random magnitude
leaves fewer equal draws to group); AugMix ~5k vs ~1k (about 6 ops per image, in 3 chains).

AugMix keeps the paper's CIFAR settings (severity 3, 3 chains of 1-3 ops, alpha 1) and mixes
each image with its own chains by weights drawn per image.  Its ops leave out brightness,
colour, contrast and sharpness (``all_ops=False``), as the paper does to keep CIFAR-10-C's
corruptions unseen: the study measures robustness to those corruptions (``corruptions.py``).
It is AugMix augmentation without the paper's Jensen-Shannon consistency loss (not used
here: it would triple the forward passes).

``options`` is the loader's ``augment.AugmentOptions``; only RandAugment reads it
(``randaugment_ops``, ``randaugment_magnitude``).  Randomness comes only from the
``torch.Generator`` the loader passes in (AugMix's Dirichlet weights: a numpy generator
seeded from it).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch

POLICIES = ("autoaugment", "randaugment", "trivialaugment", "augmix")
# What the grouped path reads of torchvision's internals besides the op table, per policy.
_INTERNALS = {"autoaugment": ("_policies",),
              "augmix": ("_PARTIAL_AUGMENTATION_SPACE", "_PARAMETER_MAX")}


def _build_policy(name: str, options):
    from torchvision.transforms import v2  # ~1.5 s to import: only policy runs pay it

    if name == "autoaugment":
        return v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10)
    if name == "randaugment":
        return v2.RandAugment(num_ops=options.randaugment_ops,
                              magnitude=options.randaugment_magnitude)
    if name == "augmix":
        return v2.AugMix(all_ops=False)
    return v2.TrivialAugmentWide()


def _magnitude_table(space: dict, bins: int, h: int, w: int) -> list[list[float] | None]:
    out = []
    for fn, _signed in space.values():
        mags = fn(bins, h, w)
        out.append(None if mags is None else [float(m) for m in mags])
    return out


class PolicyAugment:
    """A torchvision v2 policy with an independent draw per sample, run in groups of equal draws.

    Each ``_plan_*`` mirrors the sampling of the torchvision class it stands for and returns,
    per step, one ``(op name or None, magnitude)`` per sample; ``None`` leaves the sample as is.
    AugMix plans each of its chains the same way (``_plan_augmix_chain``), then mixes them
    (``_augmix``).
    """

    def __init__(self, name: str, options):
        self.name = name
        self.transform = _build_policy(name, options)
        t = self.transform
        needed = ("_AUGMENTATION_SPACE", "_apply_image_or_video_transform", "_fill",
                  *_INTERNALS.get(name, ()))
        self.grouped = all(hasattr(t, a) for a in needed)

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        if not self.grouped:
            return self._per_sample(x, gen)
        if self.name == "augmix":
            return self._augmix(x, gen)
        h, w = x.shape[-2:]
        plan = getattr(self, f"_plan_{self.name}")(x.shape[0], h, w, gen)
        for names, mags in plan:
            x = self._apply_step(x, names, mags)
        return x

    def _per_sample(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        # v2 draws from the global RNG: seed a forked copy so the caller's stream is untouched.
        seed = int(torch.randint(0, 1 << 62, (), generator=gen))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return torch.stack([self.transform(img) for img in x])

    def _apply_step(self, x: torch.Tensor, names: list, mags: list) -> torch.Tensor:
        groups = defaultdict(list)
        for i, key in enumerate(zip(names, mags, strict=True)):
            if key[0] not in (None, "Identity"):
                groups[key].append(i)
        t = self.transform
        for (name, mag), members in groups.items():
            idx = torch.tensor(members, device=x.device)
            out = t._apply_image_or_video_transform(
                x.index_select(0, idx), name, mag, interpolation=t.interpolation, fill=t._fill)
            x.index_copy_(0, idx, out)
        return x

    def _signs(self, signed: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        # torchvision negates a signed magnitude when rand() <= 0.5
        neg = torch.rand(signed.shape, generator=gen) <= 0.5
        return torch.where(signed & neg, -1.0, 1.0)

    def _plan_randaugment(self, b, h, w, gen):
        t = self.transform
        space = t._AUGMENTATION_SPACE
        names = list(space)
        table = _magnitude_table(space, t.num_magnitude_bins, h, w)
        mag = torch.tensor([0.0 if m is None else m[t.magnitude] for m in table])
        signed = _signed(space, table)
        plan = []
        for _ in range(t.num_ops):
            op = torch.randint(len(names), (b,), generator=gen)
            values = mag[op] * self._signs(signed[op], gen)
            plan.append(([names[i] for i in op.tolist()], values.tolist()))
        return plan

    def _plan_trivialaugment(self, b, h, w, gen):
        t = self.transform
        space = t._AUGMENTATION_SPACE
        names = list(space)
        bins = t.num_magnitude_bins
        table = _magnitude_table(space, bins, h, w)
        mag = torch.tensor([[0.0] * bins if m is None else m for m in table])
        signed = _signed(space, table)
        op = torch.randint(len(names), (b,), generator=gen)
        level = torch.randint(bins, (b,), generator=gen)
        values = mag[op, level] * self._signs(signed[op], gen)
        return [([names[i] for i in op.tolist()], values.tolist())]

    def _augmix(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """``AugMix.forward`` with every sample's chains drawn on their own."""
        t = self.transform
        b = x.shape[0]
        rng = np.random.default_rng(int(torch.randint(0, 1 << 62, (), generator=gen)))
        m = torch.from_numpy(rng.dirichlet([t.alpha] * 2, b)).float()
        weights = torch.from_numpy(rng.dirichlet([t.alpha] * t.mixture_width, b)).float()
        weights = (weights * m[:, 1:]).to(x.device).view(b, -1, 1, 1, 1)
        mix = m[:, 0].to(x.device).view(b, 1, 1, 1) * x
        for i in range(t.mixture_width):
            aug = x.clone()  # _apply_step writes in place; every chain starts from x
            for names, mags in self._plan_augmix_chain(b, *x.shape[-2:], gen):
                aug = self._apply_step(aug, names, mags)
            mix.add_(weights[:, i] * aug)
        return mix.to(x.dtype)  # truncates, as torchvision does

    def _plan_augmix_chain(self, b, h, w, gen):
        t = self.transform
        space = t._AUGMENTATION_SPACE if t.all_ops else t._PARTIAL_AUGMENTATION_SPACE
        names = list(space)
        table = _magnitude_table(space, t._PARAMETER_MAX, h, w)
        mag = torch.tensor([[0.0] * t._PARAMETER_MAX if m is None else m for m in table])
        signed = _signed(space, table)
        if t.chain_depth > 0:
            depth = torch.full((b,), t.chain_depth)
        else:
            depth = torch.randint(1, 4, (b,), generator=gen)
        plan = []
        for step in range(int(depth.max())):
            op = torch.randint(len(names), (b,), generator=gen)
            level = torch.randint(t.severity, (b,), generator=gen)  # the lowest `severity` bins
            values = mag[op, level] * self._signs(signed[op], gen)
            plan.append(([names[i] if on else None for i, on in
                          zip(op.tolist(), (depth > step).tolist(), strict=True)],
                         values.tolist()))
        return plan

    def _plan_autoaugment(self, b, h, w, gen):
        t = self.transform
        space = t._AUGMENTATION_SPACE
        policies = t._policies
        chosen = torch.randint(len(policies), (b,), generator=gen).tolist()
        plan = []
        for step in range(max(len(p) for p in policies)):
            applied = (torch.rand(b, generator=gen) <= torch.tensor(
                [_prob(policies[c], step) for c in chosen])).tolist()
            neg = (torch.rand(b, generator=gen) <= 0.5).tolist()
            names, mags = [], []
            for c, on, sign in zip(chosen, applied, neg, strict=True):
                name, mag = _auto_op(space, policies[c], step, h, w, sign) if on else (None, 0.0)
                names.append(name)
                mags.append(mag)
            plan.append((names, mags))
        return plan


def _signed(space: dict, table: list) -> torch.Tensor:
    """Per op: does its magnitude take a random sign?"""
    return torch.tensor([s and m is not None
                         for (_, s), m in zip(space.values(), table, strict=True)])


def _prob(policy, step: int) -> float:
    return policy[step][1] if step < len(policy) else 0.0


def _auto_op(space: dict, policy, step: int, h: int, w: int, negate: bool) -> tuple[str, float]:
    name, _p, level = policy[step]
    fn, signed = space[name]
    mags = fn(10, h, w)  # AutoAugment's 10 magnitude bins
    if mags is None:
        return name, 0.0
    mag = float(mags[level])
    return name, -mag if (signed and negate) else mag
