"""Precision chosen by the hardware: bf16 autocast where the CPU runs it natively, fp32 elsewhere,
recorded in results and checkpoints, and reproduced by `cnnlib evaluate`."""

from __future__ import annotations

import pytest
import torch

from cnnlib import cli
from cnnlib.training import device
from cnnlib.training.checkpoint import load_model, load_safe, save_atomic
from cnnlib.training.config import RunConfig
from cnnlib.training.loop import train

TINY = dict(dataset="cifar10", model="baseline", model_options={"width": 8}, train_subset=300,
            test_subset=100, batch_size=50, val_size=100, epochs=1, lr=0.05, seed=0, device="cpu")


@pytest.fixture()
def cpu_with(monkeypatch):
    """Pretend the CPU reports exactly `flags` through torch's detection."""
    def set_flags(*flags):
        monkeypatch.setattr(torch.cpu, "get_capabilities",
                            lambda: {"avx2": True, "amx_bf16": False, "avx512_bf16": False,
                                     **{f: True for f in flags}}, raising=False)
        device.native_bf16_cpu.cache_clear()
    yield set_flags
    device.native_bf16_cpu.cache_clear()


@pytest.mark.parametrize("flags, native", [(("amx_bf16",), True), (("avx512_bf16",), True),
                                           ((), False)])
def test_native_bf16_detection(cpu_with, flags, native):
    cpu_with(*flags)
    assert device.native_bf16_cpu() is native
    assert device.resolve_precision("auto", "cpu") == ("bf16" if native else "fp32")
    assert device.resolve_precision("fp32", "cpu") == "fp32"  # an explicit choice always holds
    assert device.resolve_precision("auto", "cuda") == "bf16"


def test_cpuinfo_fallback_when_torch_cannot_tell(monkeypatch, tmp_path):
    monkeypatch.delattr(torch.cpu, "get_capabilities", raising=False)
    info = tmp_path / "cpuinfo"
    info.write_text("model name\t: Some Xeon\nflags\t\t: fpu sse2 avx2 amx_tile amx_bf16\n")
    assert "amx_bf16" in device.cpu_flags(str(info))
    info.write_text("flags\t\t: fpu sse2 avx2\n")
    assert not {"amx_bf16", "avx512_bf16"} & device.cpu_flags(str(info))


def test_the_cpu_model_names_its_family_and_model(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\ncpu family\t: 25\nmodel\t\t: 17\nmodel name\t: AMD EPYC\n"
                    "processor\t: 1\ncpu family\t: 25\nmodel\t\t: 17\nmodel name\t: AMD EPYC\n")
    assert device.cpu_model(str(info)) == "AMD EPYC family 25 model 17"
    info.write_text("model name\t: Some Xeon\n")
    assert device.cpu_model(str(info)) == "Some Xeon"
    assert device.cpu_model(str(tmp_path / "missing")) == "CPU"


@pytest.mark.parametrize("flags, expected", [(("amx_bf16",), "bf16"), ((), "fp32")])
def test_training_records_the_precision_it_used(cpu_with, synthetic_root, tmp_path, flags, expected):
    cpu_with(*flags)
    result = train(RunConfig(**TINY), tmp_path / "run", data_root=synthetic_root, progress=False)
    assert result.precision == expected
    assert result.summary()["precision"] == expected
    ckpt = load_safe(tmp_path / "run" / "model.pt")
    assert ckpt["evaluation"]["precision"] == expected
    # Forcing fp32 wins over the hardware.
    forced = train(RunConfig(**TINY, precision="fp32"), data_root=synthetic_root, progress=False)
    assert forced.precision == "fp32"


def test_cli_evaluate_reproduces_the_recorded_metric(synthetic_root, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CNNLIB_DATA_ROOT", str(synthetic_root))
    out = tmp_path / "run"
    assert cli.main(["train", "--dataset", "cifar10", "--model", "baseline", "--epochs", "1",
                     "--train-subset", "300", "--device", "cpu", "--out", str(out), "--quiet",
                     "--set", "batch_size=50", "--set", "val_size=100", "--set", "tta=2",
                     "--set", "precision=fp32", "--opt", "width=8"]) == 0
    trained = capsys.readouterr().out.strip().splitlines()[-1]
    ckpt = load_safe(out / "model.pt")
    assert ckpt["evaluation"] == {"tta": 2, "precision": "fp32", "channels_last": True}
    assert trained == f"test_acc={ckpt['metrics']['test_acc']:.4f}"

    assert cli.main(["evaluate", str(out / "model.pt")]) == 0  # the recorded TTA 2 by default
    lines = capsys.readouterr().out.strip().splitlines()
    assert "(tta 2, fp32)" in lines[-2] and lines[-1] == trained
    assert cli.main(["evaluate", str(out / "model.pt"), "--tta", "0"]) == 0
    assert "(tta 0, fp32)" in capsys.readouterr().out

    # A checkpoint written before the settings were recorded: its config's tta is what it used.
    del ckpt["evaluation"]
    save_atomic(ckpt, tmp_path / "old.pt")
    assert load_model(tmp_path / "old.pt").meta["evaluation"]["tta"] == 2
    assert cli.main(["evaluate", str(tmp_path / "old.pt")]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == trained
