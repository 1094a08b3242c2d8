"""Policy augmentations (AutoAugment, RandAugment, TrivialAugment) for the batch loader.

AutoAugment with the CIFAR-10 policy, RandAugment and TrivialAugmentWide use
torchvision.transforms.v2 on uint8.  Every sample draws its own ops and magnitudes; samples
that drew the same op and magnitude are then transformed together, so a batch costs one call
per distinct draw instead of one per image (same distribution as per-sample calls).  Should
torchvision's internal op table be unavailable, each image is transformed on its own.
Measured on 2 idle CPU cores, batch 512: RandAugment(2, 9) ~34k img/s grouped vs ~4k
per-sample; AutoAugment ~37k vs ~7k; TrivialAugmentWide ~16k vs ~8k (its random magnitude
leaves fewer equal draws to group).

``options`` is the loader's ``augment.AugmentOptions``; only RandAugment reads it
(``randaugment_ops``, ``randaugment_magnitude``).  Randomness comes only from the
``torch.Generator`` the loader passes in.
"""

from __future__ import annotations

from collections import defaultdict

import torch

POLICIES = ("autoaugment", "randaugment", "trivialaugment")


def _build_policy(name: str, options):
    from torchvision.transforms import v2  # ~1.5 s to import: only policy runs pay it

    if name == "autoaugment":
        return v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10)
    if name == "randaugment":
        return v2.RandAugment(num_ops=options.randaugment_ops,
                              magnitude=options.randaugment_magnitude)
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
    """

    def __init__(self, name: str, options):
        self.name = name
        self.transform = _build_policy(name, options)
        t = self.transform
        needed = ("_AUGMENTATION_SPACE", "_apply_image_or_video_transform", "_fill")
        self.grouped = all(hasattr(t, a) for a in needed) and (
            name != "autoaugment" or hasattr(t, "_policies"))

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        if not self.grouped:
            return self._per_sample(x, gen)
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
