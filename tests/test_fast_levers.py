"""Speed levers of the fast recipe: the small-map filter gradient of fastnet's convs, torch's
CPU allocator on 2 MB pages (`import cnnlib` asks for them), and
the whitening bias that stops training after `whiten_epochs` (so backward stops early)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cnnlib.models.fastnet import DiracConv
from cnnlib.models.registry import create_model
from cnnlib.training.config import RunConfig, recipe
from cnnlib.training.loop import Trainer, make_optimizer


def _grads(conv, x, plain: bool, autocast: bool):
    x = x.detach().clone().requires_grad_()
    conv.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        y = torch.nn.Conv2d.forward(conv, x) if plain else conv(x)
    weights = torch.linspace(-1, 1, y.numel()).view_as(y)  # a loss that weighs every output
    (y.float() * weights).sum().backward()
    return y, x.grad, conv.weight.grad


@pytest.mark.parametrize("side", [3, 7])  # fastnet's last two map sizes
def test_the_small_map_conv_gives_the_library_convs_output_and_gradients(side):
    torch.manual_seed(0)
    conv = DiracConv(16, 8).to(memory_format=torch.channels_last)
    x = torch.randn(6, 16, side, side).to(memory_format=torch.channels_last)
    y, gx, gw = _grads(conv, x, plain=False, autocast=True)
    assert "SmallMapConv" in type(y.grad_fn).__name__  # the hand-written gradient ran
    y_ref, gx_ref, gw_ref = _grads(conv, x, plain=True, autocast=True)
    assert y.dtype == y_ref.dtype == torch.bfloat16
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(gx, gx_ref)
    assert gw.dtype == torch.float32 and gw.shape == conv.weight.shape
    # The filter gradient is the exact sum of the bf16 inputs' products, rounded to bf16 (an
    # fp32 sum in another order may land one bf16 step away). Not compared with the library's:
    # where oneDNN emulates bf16 (no AVX512-BF16 or AMX) its filter gradient strays from the
    # exact sum by more than the entry itself on entries near 0.
    out_grad = torch.linspace(-1, 1, y.numel()).view_as(y).bfloat16().double()
    exact = torch.nn.grad.conv2d_weight(x.bfloat16().double(), conv.weight.shape, out_grad,
                                        padding=1)
    torch.testing.assert_close(gw.double(), exact.bfloat16().double(), rtol=2**-7, atol=1e-4)
    assert torch.equal(gw, gw.bfloat16().float())  # rounded to bf16, as the library's is


def test_fp32_larger_maps_and_evaluation_keep_the_library_conv():
    conv = DiracConv(4, 4)
    assert "SmallMapConv" not in type(conv(torch.randn(2, 4, 3, 3)).grad_fn).__name__  # fp32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert "SmallMapConv" not in type(conv(torch.randn(2, 4, 15, 15)).grad_fn).__name__
        assert "SmallMapConv" not in type(conv(torch.randn(2, 4, 8, 8)).grad_fn).__name__
        with torch.no_grad():
            assert conv(torch.randn(2, 4, 3, 3)).grad_fn is None


def _whiten_trainer(synthetic_root, **changes):
    config = recipe("fastnet_muon", model_options={"widths": (8, 16, 16)}, batch_size=50,
                    val_size=100, epochs=3, tta=0, **changes)
    return Trainer(config, None, data_root=synthetic_root, progress=False)


def test_the_whitening_bias_trains_with_a_falling_lr_then_freezes(synthetic_root):
    trainer = _whiten_trainer(synthetic_root, whiten_epochs=1)
    bias = trainer.model.whiten.bias
    group = next(g for g in trainer.optimizer.param_groups if g.get("whiten"))
    assert group["params"] == [bias]
    assert group["base_lr"] == trainer.config.lr * trainer.config.norm_lr_scale  # as before
    start = bias.detach().clone()
    trainer.train_epoch()  # 18 steps: its lr fell from the group's to 1/18 of it
    assert group["lr"] == pytest.approx(group["base_lr"] / 18)
    after_one = bias.detach().clone()
    assert not torch.equal(after_one, start)
    others = [p for p in trainer.model.parameters() if p.requires_grad and p is not bias]
    before = [p.detach().clone() for p in others]
    trainer.train_epoch()
    assert group["lr"] == 0 and not bias.requires_grad and bias.grad is None
    assert torch.equal(bias.detach(), after_one)  # frozen, weight decay included
    assert all(not torch.equal(a, p.detach()) for a, p in zip(before, others, strict=True))


def test_whiten_epochs_leaves_earlier_keys_and_refuses_a_model_without_whitening():
    # fastnet_muon's key before whiten_epochs existed: 0 restores it, the recipe's 3 moves it
    assert recipe("fastnet_muon", whiten_epochs=0).key() == "791157c84a9bd5d9"
    assert recipe("fastnet_muon").key() != "791157c84a9bd5d9"
    assert RunConfig().key() == RunConfig(whiten_epochs=0).key() != RunConfig(whiten_epochs=3).key()
    with pytest.raises(ValueError) as e:
        RunConfig(whiten_epochs=-1)
    assert str(e.value).startswith("whiten_epochs:") and "\n" not in str(e.value)
    with pytest.raises(ValueError, match="^whiten_epochs: baseline has no trainable whitening"):
        make_optimizer(RunConfig(whiten_epochs=3), create_model("baseline", 10))


_FAULTS = """
import resource, sys
{setup}
from cnnlib.training.device import huge_page_allocs
start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
    torch.empty(1 << 26, dtype=torch.uint8).fill_(1)  # 64 MB, fresh each time
print(huge_page_allocs(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start)
"""


def _allocs_in_a_child(setup: str, **env) -> tuple[bool, int]:
    environ = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    out = subprocess.run([sys.executable, "-c", _FAULTS.format(setup=setup)], env={**environ, **env},
                         capture_output=True, text=True, check=True).stdout.split()
    return out[0] == "True", int(out[1])


def test_import_cnnlib_asks_for_huge_pages_unless_told_not_to_or_too_late():
    on, faults_on = _allocs_in_a_child("import cnnlib, torch")
    off, faults_off = _allocs_in_a_child("import cnnlib, torch", THP_MEM_ALLOC_ENABLE="0")
    late, _ = _allocs_in_a_child("import torch; torch.empty(1 << 22); import cnnlib")
    assert (on, off, late) == (True, False, False)
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    if not thp.is_file() or "[never]" in thp.read_text():
        pytest.skip("this kernel gives no transparent huge pages")
    # 256 MB of fresh pages: 65,536 faults of 4 kB without huge pages, some 128 with them
    assert faults_off > 60_000 and faults_on < faults_off / 8
