"""The Muon optimizer, its place in the trainer, the fastnet_muon recipe and alternating flips."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from cnnlib.data.augment import BatchLoader, parse_augment
from cnnlib.models.registry import create_model
from cnnlib.training.config import LATER_FIELDS, RunConfig, recipe
from cnnlib.training.loop import make_optimizer, train
from cnnlib.training.muon import Muon, orthogonalize


@pytest.mark.parametrize("shape", [(64, 576), (576, 64), (24, 24)])
def test_orthogonalize_pushes_every_singular_value_near_one(shape):
    torch.manual_seed(0)
    # An ill-conditioned matrix: singular values spread over two orders of magnitude.
    u, _ = torch.linalg.qr(torch.randn(shape[0], shape[0]))
    v, _ = torch.linalg.qr(torch.randn(shape[1], shape[1]))
    k = min(shape)
    g = u[:, :k] @ torch.diag(torch.logspace(0, -2, k)) @ v[:, :k].T
    after = torch.linalg.svdvals(orthogonalize(g, steps=5).float())
    # The quintic leaves singular values in a band around 1 (about 0.7 to 1.2), not at 1.
    assert after.min() > 0.6 and after.max() < 1.3, after
    # 3 steps (the recipe's) lift the smallest directions 15-fold, not all the way.
    three = torch.linalg.svdvals(orthogonalize(g, steps=3).float())
    assert three.min() > 0.1 and three.max() < 1.3, three
    assert orthogonalize(g).shape == g.shape and orthogonalize(g).dtype == torch.bfloat16


def test_orthogonalize_refuses_a_filter_bank_unflattened():
    with pytest.raises(ValueError, match="matrix"):
        orthogonalize(torch.randn(8, 3, 3, 3))


def test_the_sgd_groups_step_exactly_as_torch_sgd():
    torch.manual_seed(0)
    a = nn.Linear(5, 3)
    b = nn.Linear(5, 3)
    b.load_state_dict(a.state_dict())
    ours = Muon([dict(params=a.parameters())], lr=0.1, momentum=0.85, weight_decay=0.01)
    ref = torch.optim.SGD(b.parameters(), lr=0.1, momentum=0.85, nesterov=True, weight_decay=0.01)
    for step in range(4):
        x = torch.randn(7, 5, generator=torch.Generator().manual_seed(step))
        for model, opt in ((a, ours), (b, ref)):
            opt.zero_grad()
            model(x).square().sum().backward()
            opt.step()
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q)


def test_a_muon_step_renormalizes_the_filters_and_moves_them_by_lr():
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16, 3, bias=False)
    with torch.no_grad():
        conv.weight.mul_(7.0)  # far from the norm Muon keeps
    opt = Muon([dict(params=[conv.weight], orthogonalize=True)], lr=0.05, momentum=0.6)
    before = conv.weight.detach().clone()
    conv(torch.randn(4, 8, 10, 10)).square().mean().backward()
    grad = conv.weight.grad.clone()
    opt.step()
    # first step: buffer = g, Nesterov direction = g + 0.6 g; orthogonalization ignores scale
    normalized = before * math.sqrt(16) / before.norm()
    expected = normalized - 0.05 * orthogonalize(1.6 * grad.flatten(1)).float().view_as(grad)
    torch.testing.assert_close(conv.weight.detach(), expected, atol=1e-6, rtol=1e-5)
    step = normalized - conv.weight.detach()
    # every singular value of the step is about lr (the band of the 3-step quintic)
    sv = torch.linalg.svdvals(step.flatten(1))
    assert 0.05 * 0.3 < sv.min() and sv.max() < 0.05 * 1.3, sv


def test_muon_refuses_vectors_in_an_orthogonalized_group_and_bad_settings():
    with pytest.raises(ValueError, match="filter banks"):
        Muon([dict(params=[nn.Parameter(torch.ones(3))], orthogonalize=True)], lr=0.1)
    with pytest.raises(ValueError, match="momentum"):
        Muon([nn.Parameter(torch.ones(3, 3))], lr=0.1, momentum=1.0)


def test_make_optimizer_gives_filters_to_muon_and_biases_the_scaled_lr():
    # the whitening bias in the biases' group (its own group: tests/test_fast_levers.py)
    config = recipe("fastnet_muon", model_options={"widths": (8, 16, 16)}, whiten_epochs=0)
    model = create_model("fastnet", 10, widths=(8, 16, 16))
    opt = make_optimizer(config, model)
    assert isinstance(opt, Muon)
    by_role = {(g["orthogonalize"], g["lr"]): g["params"] for g in opt.param_groups}
    filters = by_role[(True, config.muon_lr)]
    biases = by_role[(False, config.lr * config.norm_lr_scale)]
    head = by_role[(False, config.lr)]
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert sorted(map(id, filters + biases + head)) == sorted(map(id, trainable))
    assert all(p.ndim == 4 for p in filters) and len(filters) == 6  # 3 groups x 2 convs
    assert all(p.ndim == 1 for p in biases) and model.whiten.bias in biases
    assert [p.shape for p in head] == [model.head.weight.shape]
    assert all(g["base_lr"] == g["lr"] for g in opt.param_groups)


def test_muon_trains_a_real_run_and_resumes_it(synthetic_root, tmp_path):
    config = recipe("fastnet_muon", model_options={"widths": (8, 16, 16)}, batch_size=50,
                    val_size=100, epochs=3, tta=0)
    result = train(config, tmp_path / "run", data_root=synthetic_root, progress=False)
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    # chance is 0.1; 3 short epochs reach 0.38-0.55 depending on the CPU and precision
    assert result.test["acc"] > 0.25, result.test
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert any("momentum_buffer" in s for s in state["optimizer"]["state"].values())
    # the learning rate falls linearly towards 0 from the first step (no warmup): the last
    # step's is 1/total of the first's
    lrs = [row["lr"] for row in result.history]
    assert lrs[0] > lrs[1] > lrs[2] and lrs[2] == pytest.approx(config.lr / (3 * 18))  # 900 / 50


def test_the_muon_fields_leave_every_earlier_key_unchanged():
    # Keys of configs written before the Muon fields existed (the study's records hold them).
    assert RunConfig().key() == "0e695a5dc4176fc8"
    assert recipe("fastnet").key() == "a8712963c4e27067"
    assert recipe("baseline").key() == "61f43c498bd61fe8"
    assert set(LATER_FIELDS) == {"muon_lr", "muon_momentum", "mix_prob", "early_stop_after",
                                 "whiten_epochs"}
    assert RunConfig(muon_lr=0.3).key() != RunConfig().key()
    assert RunConfig(muon_momentum=0.6).key() == RunConfig().key()  # 0.6 is the default


@pytest.mark.parametrize("changes, message", [
    (dict(muon_lr=0.0), "muon_lr"), (dict(muon_momentum=1.0), "muon_momentum"),
    (dict(augment="flip+altflip"), "augment: flip and altflip"),
])
def test_bad_muon_and_altflip_settings_are_one_line(changes, message):
    with pytest.raises(ValueError) as e:
        RunConfig(**changes)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_altflip_shows_each_image_both_ways_in_two_consecutive_epochs(synthetic_cifar10):
    images = synthetic_cifar10.train_images[:64]
    labels = synthetic_cifar10.train_labels[:64]
    config = RunConfig(augment="altflip")
    loader = BatchLoader(images, labels, batch_size=64, mean=(0.5,) * 3, std=(0.25,) * 3,
                         augment=config.augment, options=config.augment_options(), shuffle=False)
    assert parse_augment("crop+altflip") == {"crop", "altflip"}
    views = []
    for epoch in range(3):
        loader.set_epoch(epoch)
        views.append(next(iter(loader))[0])
    plain = views[0].clone()
    flipped_first = torch.stack([(views[0][i] != views[1][i]).any() for i in range(64)])
    for i in range(64):  # epoch 1 mirrors exactly the images epoch 0 left alone, and back
        torch.testing.assert_close(views[1][i], views[0][i].flip(-1))
        torch.testing.assert_close(views[2][i], plain[i])
    mirrored = sum(bool((views[0][i] != views[0][i].flip(-1)).any()) for i in range(64))
    assert mirrored == 64 and flipped_first.all()
    # about half of the images are mirrored in even epochs
    even = loader._even_flips.float().mean().item()
    assert 0.3 < even < 0.7
