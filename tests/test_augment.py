"""cnnlib.data.augment and cnnlib.data.policies: parsing, exact pixel semantics of each op, soft targets, reproducibility,
sharding and output format, on small random uint8 image sets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cnnlib.data.augment import BatchLoader, normalize, parse_augment
from cnnlib.data.policies import PolicyAugment
from cnnlib.training.config import RunConfig

MEAN = (0.49, 0.48, 0.45)
STD = (0.25, 0.24, 0.26)


def images(n: int = 48, size: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)


def opts(**changes):
    """Augmentation strengths: RunConfig's defaults with `changes`."""
    return RunConfig(**changes).augment_options()


def loader(x, augment="none", *, labels=None, batch_size=16, shuffle=False, options=None,
           **kw) -> BatchLoader:
    labels = torch.arange(len(x)) if labels is None else labels
    return BatchLoader(x, labels, batch_size=batch_size, mean=MEAN, std=STD, augment=augment,
                       shuffle=shuffle, options=options or opts(), **kw)


def collect(ld: BatchLoader) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*ld, strict=True)
    return torch.cat(xs), torch.cat(ys)


def reference_pad(img: torch.Tensor, pad: int, mode: str) -> torch.Tensor:
    """Padding computed with numpy, independent of the module's own padding."""
    np_mode = "reflect" if mode == "reflect" else "constant"
    return torch.from_numpy(np.pad(img.numpy(), ((0, 0), (pad, pad), (pad, pad)), mode=np_mode))


# ----------------------------------------------------------------------------- parsing


def test_parse_augment_sets_and_order():
    assert parse_augment("crop+flip+cutout") == {"crop", "flip", "cutout"}
    assert parse_augment("cutout+crop+flip") == parse_augment("crop+flip+cutout")
    assert parse_augment("none") == frozenset()
    assert parse_augment("") == frozenset()
    assert parse_augment(" Crop + FLIP ") == {"crop", "flip"}


@pytest.mark.parametrize("spec", ["xyz", "crop+xyz", "crop++flip"])
def test_parse_augment_unknown(spec):
    with pytest.raises(ValueError, match=r"^augment: unknown '.*'; allowed: none, crop, flip") as e:
        parse_augment(spec)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("changes, field", [
    (dict(pad_mode="edge"), "pad_mode"), (dict(crop_padding=-1), "crop_padding"),
    (dict(mixup_alpha=0.0), "mixup_alpha"), (dict(cutmix_alpha=-1.0), "cutmix_alpha"),
    (dict(randaugment_ops=1.5), "randaugment_ops"), (dict(randaugment_magnitude=31), "randaugment_magnitude"),
])
def test_augment_options_are_checked_by_the_config(changes, field):
    """One validator: a bad strength stops at RunConfig, before any data is loaded."""
    with pytest.raises(ValueError, match=f"^{field}: .* allowed: "):
        RunConfig(**changes)


def test_options_and_loader_validation():
    x = images(8)
    with pytest.raises(ValueError, match="options: expected AugmentOptions"):
        BatchLoader(x, torch.arange(8), batch_size=4, mean=MEAN, std=STD, options=RunConfig())
    with pytest.raises(ValueError, match="num_classes"):
        loader(x, "mixup")
    with pytest.raises(ValueError, match="images"):
        loader(x.float())
    with pytest.raises(ValueError, match="rank"):
        loader(x, rank=2, world_size=2)


# ----------------------------------------------------------------------------- pixel semantics


def test_none_is_exact_normalize_in_order():
    x = images(40)
    ld = loader(x, batch_size=16)
    assert len(ld) == 3  # eval default keeps the ragged last batch
    out, y = collect(ld)
    assert torch.equal(out, normalize(x, MEAN, STD))
    assert torch.equal(y, torch.arange(40))


def test_normalize_roundtrip():
    x = images(4)
    back = normalize(x, MEAN, STD) * torch.tensor(STD).view(3, 1, 1) + torch.tensor(MEAN).view(3, 1, 1)
    assert torch.allclose(back, x.float() / 255, atol=1e-6)


def test_flip_is_exact_mirror_and_both_occur():
    x = images(64)
    out, _ = collect(loader(x, "flip"))
    ref = normalize(x, MEAN, STD)
    same = (out == ref).flatten(1).all(1)
    mirrored = (out == ref.flip(3)).flatten(1).all(1)
    assert bool((same | mirrored).all())
    assert same.any() and mirrored.any()


def find_shift(out_img, img, pad, mode):
    padded = normalize(reference_pad(img, pad, mode), MEAN, STD)
    h, w = img.shape[-2:]
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            if torch.equal(out_img, padded[:, dy:dy + h, dx:dx + w]):
                return dy - pad, dx - pad
    return None


@pytest.mark.parametrize("mode", ["zeros", "reflect"])
def test_crop_is_pure_translation(mode):
    x = images(32)
    out, _ = collect(loader(x, "crop", options=opts(crop_padding=3, pad_mode=mode)))
    shifts = [find_shift(out[i], x[i], 3, mode) for i in range(len(x))]
    assert None not in shifts
    assert all(abs(dy) <= 3 and abs(dx) <= 3 for dy, dx in shifts)
    assert len(set(shifts)) > 5  # offsets really vary per sample


def test_crop_policy_path_is_translation():
    # With a policy the batch is padded per batch instead of once; same crop semantics.
    x = images(16)
    ld = loader(x, "crop+randaugment", options=opts(pad_mode="zeros", randaugment_ops=0))
    out, _ = collect(ld)
    assert all(find_shift(out[i], x[i], 4, "zeros") is not None for i in range(len(x)))


def test_cutout_zeroes_one_square_of_the_right_size():
    x = images(32)
    out, _ = collect(loader(x, "cutout", options=opts(cutout_size=6)))
    ref = normalize(x, MEAN, STD)
    changed = (out != ref).any(1)  # [N, H, W]
    for i in range(len(x)):
        ys, xs = changed[i].nonzero(as_tuple=True)
        assert len(ys) == 36
        assert int(ys.max() - ys.min()) == 5 and int(xs.max() - xs.min()) == 5
        assert bool((out[i][:, changed[i]] == 0).all())
    tops = {int(changed[i].nonzero()[:, 0].min()) for i in range(len(x))}
    assert len(tops) > 3


def test_jitter_per_sample_and_in_range():
    x = images(1).expand(16, -1, -1, -1).contiguous()
    out, _ = collect(loader(x, "jitter"))
    lo = normalize(torch.zeros(1, 3, 1, 1, dtype=torch.uint8), MEAN, STD)
    hi = normalize(torch.full((1, 3, 1, 1), 255, dtype=torch.uint8), MEAN, STD)
    assert bool((out >= lo - 1e-5).all() and (out <= hi + 1e-5).all())
    assert len({tuple(o.flatten()[:20].tolist()) for o in out}) == 16


# ----------------------------------------------------------------------------- soft targets


def check_soft_targets(y: torch.Tensor, labels: torch.Tensor):
    assert y.dtype == torch.float32
    assert torch.allclose(y.sum(1), torch.ones(len(y)), atol=1e-6)
    assert bool((y >= 0).all())
    assert bool(((y > 0).sum(1) <= 2).all())
    assert bool((y[torch.arange(len(y)), labels] > 0).all())


def test_mixup_targets_and_pixels_are_one_convex_pair():
    x = images(32)
    labels = torch.arange(32) % 10
    ld = loader(x, "mixup", labels=labels, num_classes=10, batch_size=32,
                options=opts(mixup_alpha=1.0))
    out, y = next(iter(ld))
    check_soft_targets(y, labels)
    ref = normalize(x, MEAN, STD)
    lam = float(y[torch.arange(32), labels].min())  # own-label weight, 1 if partner shares it
    weights = y[y > 0]
    assert all(min(abs(w - v) for v in (lam, 1 - lam, 1.0)) < 1e-6 for w in weights.tolist())
    for i in range(32):
        fits = [torch.allclose(out[i], a * ref[i] + (1 - a) * ref[j], atol=1e-4)
                for j in range(32) for a in (lam, 1 - lam)]
        assert any(fits)


def test_cutmix_box_matches_target_weights():
    x = images(32)
    labels = torch.arange(32)
    ld = loader(x, "cutmix", labels=labels, num_classes=32, batch_size=32)
    out, y = next(iter(ld))
    check_soft_targets(y, labels)
    ref = normalize(x, MEAN, STD)
    changed = (out != ref).any(1)
    for i in range(32):
        own = float(y[i, i])
        if own == 1.0:  # partner was the sample itself
            assert not bool(changed[i].any())
            continue
        ys, xs = changed[i].nonzero(as_tuple=True)
        box = (int(ys.max() - ys.min()) + 1) * (int(xs.max() - xs.min()) + 1)
        assert box == len(ys)  # one filled rectangle
        assert abs((1 - own) - box / (32 * 32)) < 1e-6


def test_mixup_and_cutmix_both_are_used():
    x = images(64)
    labels = torch.arange(64) % 10
    ld = loader(x, "mixup+cutmix", labels=labels, num_classes=10, batch_size=8)
    kinds = set()
    ref = normalize(x, MEAN, STD)
    for i, (out, y) in enumerate(ld):
        check_soft_targets(y, labels[i * 8:(i + 1) * 8])
        # CutMix changes one box shared by the batch; MixUp changes (nearly) every pixel.
        changed = (out != ref[i * 8:(i + 1) * 8]).any(1).any(0)
        ys, xs = changed.nonzero(as_tuple=True)
        box = (int(ys.max() - ys.min()) + 1) * (int(xs.max() - xs.min()) + 1)
        kinds.add("cutmix" if box == len(ys) and box < 32 * 32 else "mixup")
    assert kinds == {"mixup", "cutmix"}


@pytest.mark.parametrize("augment", ["mixup", "cutmix"])
def test_mix_prob_mixes_some_batches_and_leaves_the_others_untouched(augment):
    x, labels = images(128), torch.arange(128)  # a label per image: any mix shows in targets
    ref = normalize(x, MEAN, STD)

    def batches(**changes):
        return list(loader(x, augment, labels=labels, num_classes=128, batch_size=8,
                           options=opts(**changes)))

    half = batches(mix_prob=0.5)
    onehot = torch.nn.functional.one_hot(labels, 128).float()
    plain = [torch.equal(out, ref[i * 8:(i + 1) * 8]) for i, (out, _) in enumerate(half)]
    # An unmixed batch keeps its pixels and one-hot targets; a mixed one changes both.
    assert plain == [torch.equal(y, onehot[i * 8:(i + 1) * 8]) for i, (_, y) in enumerate(half)]
    assert 0 < sum(plain) < len(plain)  # 16 batches at p = 0.5: both kinds occur
    # p = 1 mixes every batch, with the same random stream as before the option existed.
    full, default = batches(mix_prob=1.0), batches()
    assert all(torch.equal(a[0], b[0]) for a, b in zip(full, default, strict=True))
    assert not any(torch.equal(out, ref[i * 8:(i + 1) * 8]) for i, (out, _) in enumerate(full))


def test_mix_prob_is_checked_and_keys_old_runs_unchanged():
    with pytest.raises(ValueError, match=r"^mix_prob: 1.5 is not allowed; allowed: a number in \[0, 1\]"):
        RunConfig(mix_prob=1.5)
    config = RunConfig(augment="crop+flip+cutmix")
    assert config.replace(mix_prob=1.0).key() == config.key()
    assert config.replace(mix_prob=0.5).key() != config.key()


# ----------------------------------------------------------------------------- reproducibility


FULL = "crop+flip+jitter+cutout+mixup"


def batches(ld):
    return [(x.clone(), y.clone()) for x, y in ld]


def same(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(x1, x2) and torch.equal(y1, y2)
                                    for (x1, y1), (x2, y2) in zip(a, b, strict=True))


def test_set_epoch_replays_and_epochs_differ():
    x = images(64)
    kw = dict(labels=torch.arange(64) % 10, num_classes=10, shuffle=True, seed=3)
    ld = loader(x, FULL, **kw)
    ld.set_epoch(2)
    first = batches(ld)
    assert same(first, batches(ld))
    resumed = loader(x, FULL, **kw)  # a fresh process after a resume
    resumed.set_epoch(2)
    assert same(first, batches(resumed))
    ld.set_epoch(3)
    assert not same(first, batches(ld))
    other_seed = loader(x, FULL, **{**kw, "seed": 4})
    other_seed.set_epoch(2)
    assert not same(first, batches(other_seed))


def test_global_rng_untouched():
    x = images(16)
    state = torch.get_rng_state()
    for aug in (FULL, "randaugment", "autoaugment", "trivialaugment", "augmix"):
        collect(loader(x, aug, num_classes=16, shuffle=True))
    assert torch.equal(state, torch.get_rng_state())


def test_every_sample_once_without_drop_last():
    x = images(50)
    ld = loader(x, "crop+flip", shuffle=True, drop_last=False, batch_size=16)
    assert len(ld) == 4
    _, y = collect(ld)
    assert sorted(y.tolist()) == list(range(50))
    assert y.tolist() != list(range(50))


def test_train_default_drops_ragged_batch():
    ld = loader(images(50), "flip", shuffle=True, batch_size=16)
    assert len(ld) == 3 and ld.num_samples == 50
    assert [len(y) for _, y in ld] == [16, 16, 16]  # 48 of the 50 images


@pytest.mark.parametrize("n,drop_last", [(50, False), (50, True), (51, True)])
def test_rank_sharding_disjoint_and_complete(n, drop_last):
    x = images(n)
    shards = []
    for rank in range(2):
        ld = loader(x, "crop+flip", shuffle=True, drop_last=drop_last, batch_size=8,
                    rank=rank, world_size=2, seed=1)
        ld.set_epoch(5)
        shards.append(collect(ld)[1].tolist())
        assert len(ld) == len(loader(x, shuffle=True, drop_last=drop_last, batch_size=8,
                                     rank=1 - rank, world_size=2))
    assert not set(shards[0]) & set(shards[1])
    union = sorted(shards[0] + shards[1])
    if drop_last:
        assert len(union) == 2 * ((n // 2) // 8) * 8
    else:
        assert union == list(range(n))


def test_rank_padding_repeats_when_uneven():
    x = images(51)
    idx = [loader(x, shuffle=True, drop_last=False, rank=r, world_size=2).epoch_indices()
           for r in range(2)]
    assert len(idx[0]) == len(idx[1]) == 26
    assert set(torch.cat(idx).tolist()) == set(range(51))


# ----------------------------------------------------------------------------- policies


@pytest.mark.parametrize("policy", ["autoaugment", "randaugment", "trivialaugment", "augmix"])
@pytest.mark.parametrize("grouped", [True, False])
def test_policies_per_sample_shape_dtype(policy, grouped, monkeypatch):
    x = images(1).expand(24, -1, -1, -1).contiguous()  # identical images
    ld = loader(x, policy, batch_size=24)
    if grouped and not ld._policies[0].grouped:
        pytest.skip("this torchvision lacks the op table; only the per-sample path runs")
    if not grouped:
        monkeypatch.setattr(ld._policies[0], "grouped", False)
    out, _ = collect(ld)
    assert out.shape == (24, 3, 32, 32) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    # Independent draws per sample: identical inputs must not all come out alike.
    assert len({o.flatten()[::7].numpy().tobytes() for o in out}) > 4
    assert torch.equal(out, collect(ld)[0])  # reproducible


def test_policy_uint8_step_keeps_dtype():
    x = images(8)
    pol = PolicyAugment("randaugment", opts())
    out = pol(x.clone(), torch.Generator().manual_seed(0))
    assert out.dtype == torch.uint8 and out.shape == x.shape


@pytest.mark.parametrize("grouped", [True, False])
def test_augmix_on_a_uint8_batch(grouped):
    x = images(32)
    pol = PolicyAugment("augmix", opts())
    pol.grouped = grouped and pol.grouped

    def run(seed):
        return pol(x.clone(), torch.Generator().manual_seed(seed))

    out = run(0)
    assert out.dtype == torch.uint8 and out.shape == x.shape
    assert torch.equal(out, run(0))  # the caller's generator decides every draw
    assert not torch.equal(out, run(1))
    changed = (out != x).flatten(1).any(1)
    assert changed.float().mean() > 0.9  # a mix with the chains moves nearly every image


# ----------------------------------------------------------------------------- output format


@pytest.mark.parametrize("aug", ["none", "crop+flip", "crop+flip+jitter+cutout",
                                 "randaugment+crop+flip", "cutmix"])
def test_channels_last_flag(aug):
    x = images(32)
    kw = dict(num_classes=32, shuffle=True, seed=7)
    plain, cl = loader(x, aug, **kw), loader(x, aug, channels_last=True, **kw)
    for (a, ya), (b, yb) in zip(plain, cl, strict=True):
        assert a.is_contiguous()
        assert b.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(a, b) and torch.equal(ya, yb)


def test_dtype_flag():
    x = images(16)
    out, _ = next(iter(loader(x, "crop+flip", dtype=torch.bfloat16)))
    assert out.dtype == torch.bfloat16
    ref, _ = next(iter(loader(x, "crop+flip")))
    assert torch.equal(out, ref.to(torch.bfloat16))


def test_non_square_and_small_images():
    x = torch.randint(0, 256, (10, 3, 12, 20), dtype=torch.uint8)
    ld = loader(x, "crop+flip+cutout", labels=torch.zeros(10, dtype=torch.long),
                options=opts(crop_padding=2, cutout_size=4), batch_size=4)
    out, _ = collect(ld)
    assert out.shape == (10, 3, 12, 20)
