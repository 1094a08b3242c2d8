"""Distributed data-parallel training: sharding, SyncBatchNorm, and real torchrun jobs.

The torchrun tests start 2 gloo worker processes on the CPU (one thread each) on the
synthetic CIFAR-10 files: three launches in all (an uninterrupted run, a run whose rank 1
fails, and its resume through ``train_or_launch``), which share module-scoped fixtures.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn

from cnnlib import _fileio as fileio
from cnnlib.data.augment import BatchLoader
from cnnlib.data.cifar import load_cifar
from cnnlib.models.registry import create_model
from cnnlib.training import distributed as cdist
from cnnlib.training import launch
from cnnlib.training.checkpoint import load_model, load_safe
from cnnlib.training.config import RunConfig
from cnnlib.training.evaluate import evaluate
from cnnlib.training.loop import Trainer, train

PROJECT = Path(__file__).resolve().parent.parent
ctrain = importlib.import_module("cnnlib.training.loop")  # the module, not the train() it exports

# The equivalence run. augment="none": augmentation draws are seeded per rank, so only an
# unaugmented run can match a single process step for step. channels_last=False: on the CPU,
# torch's channels-last BatchNorm kernel is less precise than the contiguous one (about 1e-5
# relative per call), which moves a single-process run as much as DDP does; the contiguous
# format isolates what DDP changes. So does fp32: under bf16 autocast (`auto` on a CPU with
# native bf16) the rounding of the sums moves the validation loss by 3e-3 on an AMX CPU.
CONFIG = dict(model="baseline", model_options={"width": 8, "depth": 4}, batch_size=50,
              val_size=200, epochs=2, lr=0.05, seed=0, augment="none", channels_last=False,
              sync_bn=True, precision="fp32")
FLAGS = ["--model", "baseline", "--opt", "width=8", "--opt", "depth=4", "--batch-size", "50",
         "--epochs", "2", "--lr", "0.05", "--seed", "0", "--set", "val_size=200",
         "--set", "augment=none", "--set", "channels_last=false", "--set", "precision=fp32",
         "--sync-bn", "--quiet"]
# Two processes with the global batch of one process, vs that one process (2 epochs, 32 steps):
# rounding differences (float sums in another order) only. Observed: train loss within 1e-4,
# val/test loss within 5e-4, equal accuracies.
LOSS_TOL = 2e-3
ACC_TOL = 0.01  # two of the 200 validation/test images

# A torchrun worker for the fault and sharding tests: the `cnnlib` CLI, with each rank's
# consumed sample indices logged per epoch, checkpoint writes logged, and rank 1 raising once
# rank 0 has checkpointed epoch FAIL_AT - 1.
WORKER = """
import importlib, json, os, sys, time
from pathlib import Path
from cnnlib import cli
ctrain = importlib.import_module("cnnlib.training.loop")

rank = int(os.environ["RANK"])
log = Path(os.environ["TEST_LOG"])
fail_at = int(os.environ.get("FAIL_AT", "0"))

indices = ctrain.BatchLoader.epoch_indices
def logged(self):
    idx = indices(self)
    used = idx[: len(self) * self.batch_size].tolist()
    with open(log / f"indices.rank{rank}", "a") as f:
        f.write(json.dumps({"epoch": self.epoch, "batch": self.batch_size, "used": used}) + "\\n")
    return idx
ctrain.BatchLoader.epoch_indices = logged

save = ctrain.save_atomic
def logged_save(obj, path):
    with open(log / f"saves.rank{rank}", "a") as f:
        f.write(str(path) + "\\n")
    return save(obj, path)
ctrain.save_atomic = logged_save

train_epoch = ctrain.Trainer.train_epoch
def failing(self):
    if rank == 1 and self.epoch + 1 == fail_at:
        while not (self.out_dir / "last.pt").exists():
            time.sleep(0.05)
        raise RuntimeError(f"injected failure in epoch {fail_at}")
    return train_epoch(self)
ctrain.Trainer.train_epoch = failing

sys.exit(cli.main())
"""


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", launch.NPROC_ENV)}
    env.update(OMP_NUM_THREADS="1", CNNLIB_DDP_TIMEOUT="120",
               PYTHONPATH=os.pathsep.join(filter(None, [str(PROJECT), env.get("PYTHONPATH")])))
    env.update(extra)
    return env


def torchrun(args: list[str], cwd: Path, timeout: float = 300, **env):
    """`torchrun --standalone --nproc_per_node=2 ARGS`; (completed process, seconds)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           *args]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=cwd, env=_env(**env), capture_output=True, text=True,
                          timeout=timeout)
    return proc, time.monotonic() - t0


def _tail(proc, n=25) -> str:
    return "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-n:])


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory, synthetic_root):
    """`torchrun --nproc_per_node=2 -m cnnlib train ...`, uninterrupted."""
    work = tmp_path_factory.mktemp("ddp_run")
    proc, seconds = torchrun(["-m", "cnnlib", "--data-root", str(synthetic_root), "train",
                              *FLAGS, "--out", "out"], work)
    print(f"\n$ torchrun --standalone --nproc_per_node=2 -m cnnlib train ... ({seconds:.0f} s)\n"
          + _tail(proc))
    assert proc.returncode == 0, _tail(proc, 60)
    return work / "out", proc


@pytest.fixture(scope="module")
def failed_then_resumed(tmp_path_factory, synthetic_root):
    """A run whose rank 1 fails in epoch 2, then resumed by train_or_launch(nproc=2)."""
    work = tmp_path_factory.mktemp("ddp_fault")
    (work / "worker.py").write_text(WORKER)
    (work / "log").mkdir()
    failed, seconds = torchrun(["worker.py", "--data-root", str(synthetic_root), "train", *FLAGS,
                                "--out", "out"], work, timeout=400, TEST_LOG=str(work / "log"),
                               FAIL_AT="2", CNNLIB_DDP_TIMEOUT="900")
    print(f"\n$ torchrun ... (rank 1 fails in epoch 2; {seconds:.0f} s, exit "
          f"{failed.returncode})\n" + _tail(failed))
    assert (work / "out" / "last.pt").exists(), _tail(failed, 60)
    epoch_before = load_safe(work / "out" / "last.pt")["epoch"]
    old = os.environ.copy()
    os.environ.update(_env())
    try:
        resumed = launch.train_or_launch(RunConfig(**CONFIG), work / "out", nproc=2,
                                         data_root=synthetic_root, progress=True)
    finally:
        os.environ.clear()
        os.environ.update(old)
    return dict(work=work, failed=failed, seconds=seconds, epoch_before=epoch_before,
                resumed=resumed)


def _history(out: Path) -> list[dict]:
    return load_safe(out / "last.pt")["history"]


def test_two_processes_match_one_process(ddp_run, synthetic_root):
    out, proc = ddp_run
    config = RunConfig(**CONFIG)
    assert load_safe(out / "last.pt")["config"] == config.to_dict()
    torch.set_num_threads(1)
    try:
        one = train(config, data_root=synthetic_root, progress=False)
    finally:
        torch.set_num_threads(os.cpu_count() or 1)
    two = _history(out)
    metrics = load_safe(out / "model.pt")["metrics"]
    print("\nepoch  train_loss (1 proc / 2 procs)  train_acc  val_loss  val_acc")
    for a, b in zip(one.history, two, strict=True):
        print(f"{a['epoch']}  {a['train_loss']:.6f} / {b['train_loss']:.6f}  "
              f"{a['train_acc']:.4f} / {b['train_acc']:.4f}  {a['val_loss']:.6f} / "
              f"{b['val_loss']:.6f}  {a['val_acc']:.4f} / {b['val_acc']:.4f}")
        for k in ("train_loss", "val_loss"):
            assert abs(a[k] - b[k]) <= LOSS_TOL, (k, a, b)
        for k in ("train_acc", "val_acc"):
            assert abs(a[k] - b[k]) <= ACC_TOL, (k, a, b)
        assert a["lr"] == pytest.approx(b["lr"])
    print(f"test loss {one.test['loss']:.6f} / {metrics['test_loss']:.6f}  "
          f"test acc {one.test['acc']:.4f} / {metrics['test_acc']:.4f}  "
          f"(tolerance: loss {LOSS_TOL}, accuracy {ACC_TOL})")
    assert abs(one.test["loss"] - metrics["test_loss"]) <= LOSS_TOL
    assert abs(one.test["acc"] - metrics["test_acc"]) <= ACC_TOL
    assert one.test["acc"] > 0.5  # it learned (chance is 0.1)

    # Only rank 0 reports and writes; model.pt is a plain single-process checkpoint.
    assert proc.stdout.count("test_acc=") == 1
    assert sorted(p.name for p in out.iterdir()) == sorted([fileio.LOCK_NAME, "last.pt", "model.pt"])
    assert (out / fileio.LOCK_NAME).read_text() == ""  # the run-folder lock, released
    model = load_model(out / "model.pt")
    assert not any(isinstance(m, cdist.GlooSyncBatchNorm) for m in model.modules())
    d = load_cifar("cifar10", root=synthetic_root)
    m = evaluate(model, d.test_images, d.test_labels, model.meta["mean"], model.meta["std"])
    assert m["acc"] == pytest.approx(metrics["test_acc"])


def test_failing_rank_fails_the_job_with_a_clear_error(failed_then_resumed):
    failed, seconds = failed_then_resumed["failed"], failed_then_resumed["seconds"]
    output = failed.stdout + failed.stderr
    assert failed.returncode != 0, output
    # Far below the 900 s collective timeout: torchrun stopped the waiting rank (typically
    # seconds after the failure; the bound leaves room for a loaded machine).
    assert seconds < 300, seconds
    assert "cnnlib train [rank 1 of 2]: error: injected failure in epoch 2" in output, output
    # Rank 0, blocked in a collective, either is stopped by torchrun first or notices the lost
    # peer first; then it says so, and is not taken for the cause.
    rank0 = re.findall(r"cnnlib train \[rank 0 of 2\]: error.*", output)
    assert all("(another rank failed first" in line for line in rank0), output
    root = output.split("Root Cause (first observed failure):", 1)[1]
    assert re.search(r"rank\s*: 1 \(local_rank: 1\)", root), output
    assert "RuntimeError: injected failure in epoch 2" in root, output
    log = failed_then_resumed["work"] / "log"
    assert not (log / "saves.rank1").exists()  # only rank 0 writes
    assert (log / "saves.rank0").read_text().split() == [str(Path("out") / "last.pt")]


def test_resume_under_ddp_continues_as_if_uninterrupted(failed_then_resumed, ddp_run):
    resumed = failed_then_resumed["resumed"]
    out = failed_then_resumed["work"] / "out"
    assert failed_then_resumed["epoch_before"] == 1
    whole = _history(ddp_run[0])
    assert [r["epoch"] for r in resumed.history] == [1, 2]
    for a, b in zip(resumed.history, whole, strict=True):
        for k in ("train_loss", "train_acc", "val_loss", "val_acc", "lr"):
            assert a[k] == pytest.approx(b[k], rel=1e-6, abs=1e-9), (k, a, b)
    assert resumed.test["acc"] == pytest.approx(load_safe(ddp_run[0] / "model.pt")["metrics"]
                                                ["test_acc"])
    assert resumed.device == "cpu x2" and resumed.model is None
    assert resumed.test_metrics["confusion"].shape == (10, 10)
    # No launch files; the run-folder lock is released.
    assert sorted(p.name for p in out.iterdir()) == sorted([fileio.LOCK_NAME, "last.pt", "model.pt"])
    assert (out / fileio.LOCK_NAME).read_text() == ""


def test_each_sample_once_per_epoch_across_ranks(failed_then_resumed, synthetic_root):
    """The indices the two ranks consumed in the real run's first epoch."""
    log = failed_then_resumed["work"] / "log"
    rows = {r: [json.loads(line) for line in (log / f"indices.rank{r}").read_text().splitlines()]
            for r in (0, 1)}
    first = [next(row for row in rows[r] if row["epoch"] == 0) for r in (0, 1)]
    assert [row["batch"] for row in first] == [25, 25]  # the global batch of 50, halved
    a, b = (row["used"] for row in first)
    assert not set(a) & set(b) and len(set(a)) == len(a) and len(set(b)) == len(b)
    single = Trainer(RunConfig(**CONFIG), data_root=synthetic_root, progress=False)
    single.loader.set_epoch(0)
    n, batch = len(single.train_split), 50
    expected = single.loader.epoch_indices()[: len(single.loader) * batch].tolist()
    assert sorted(a + b) == sorted(expected) and len(a + b) == n - n % batch
    for i in range(len(single.loader)):  # step i of 2 ranks = step i of 1 process
        assert sorted(a[i * 25:(i + 1) * 25] + b[i * 25:(i + 1) * 25]) == sorted(
            expected[i * batch:(i + 1) * batch])


# ----------------------------------------------------------------------------- in process


def _loader(n, rank, world, batch, drop_last=None):
    images = torch.zeros(n, 3, 4, 4, dtype=torch.uint8)
    return BatchLoader(images, torch.arange(n), batch_size=batch, mean=(0.5,) * 3,
                       std=(0.25,) * 3, options=RunConfig().augment_options(), shuffle=True,
                       drop_last=drop_last, seed=3, rank=rank, world_size=world)


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("n", [101, 120])
def test_loader_sharding_sees_each_sample_once(world, n):
    """Training loaders (drop_last): ranks split each epoch's single-process batches."""
    batch = 4 * world  # the global batch
    single = _loader(n, 0, 1, batch)
    ranks = [_loader(n, r, world, batch // world) for r in range(world)]
    for epoch in (0, 1, 7):
        for ld in (single, *ranks):
            ld.set_epoch(epoch)
        one = [y for _, y in single]
        per = [[y for _, y in ld] for ld in ranks]
        assert all(len(p) == len(one) == len(ld) for p, ld in zip(per, ranks, strict=True))
        seen = torch.cat([y for p in per for y in p]).tolist()
        assert len(set(seen)) == len(seen) == n - n % batch  # once each; the tail dropped
        for i, y in enumerate(one):
            assert sorted(torch.cat([p[i] for p in per]).tolist()) == sorted(y.tolist())


@pytest.mark.parametrize("world", [2, 3])
def test_loader_sharding_without_drop_last_covers_everything(world):
    """Evaluation-style loaders pad the permutation: all seen, under `world` seen twice."""
    n = 101
    seen = []
    for r in range(world):
        ld = _loader(n, r, world, 8, drop_last=False)
        seen += torch.cat([y for _, y in ld]).tolist()
    assert set(seen) == set(range(n))
    assert len(seen) - n == (-n) % world < world


def test_per_rank_batch():
    assert cdist.per_rank_batch(1024, 8) == 128
    assert cdist.per_rank_batch(50, 1) == 50
    with pytest.raises(ValueError, match="batch_size: 100 does not split evenly over 3"):
        cdist.per_rank_batch(100, 3)


def test_env_info(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    assert cdist.env_info() == cdist.DistInfo() and cdist.is_main() and launch.rank_tag() == ""
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert not cdist.env_info().enabled
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(ValueError, match="RANK"):
        cdist.env_info()
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    info = cdist.env_info()
    assert (info.rank, info.world_size, info.local_rank, info.enabled, info.is_main) == (
        3, 4, 1, True, False)
    assert launch.rank_tag() == " [rank 3 of 4]" and not cdist.is_main()
    monkeypatch.setenv(cdist.TIMEOUT_ENV, "soon")
    with pytest.raises(ValueError, match=cdist.TIMEOUT_ENV):
        cdist.timeout()
    monkeypatch.setenv(launch.NPROC_ENV, "0")
    with pytest.raises(ValueError, match=launch.NPROC_ENV):
        launch.nproc_from_env()


def test_single_process_takes_no_distributed_path(synthetic_root, monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    t = Trainer(RunConfig(**{**CONFIG, "epochs": 1}), data_root=synthetic_root, progress=False)
    assert not t.dist.enabled and t.forward is t.model and t.loader.batch_size == 50
    assert not dist.is_initialized()
    assert not any(isinstance(m, cdist.GlooSyncBatchNorm) for m in t.model.modules())
    monkeypatch.setenv(launch.NPROC_ENV, "1")  # the run cache's hook then trains in-process
    monkeypatch.setattr(launch, "train", lambda *a, **k: "trained here")
    assert launch.train_or_launch(t.config, None) == "trained here"


def test_sync_bn_is_part_of_the_config_identity():
    base = RunConfig(**{**CONFIG, "sync_bn": False})
    assert base.to_dict()["sync_bn"] is False
    synced = base.replace(sync_bn=True)
    assert synced.key() != base.key() and synced.to_dict()["sync_bn"] is True
    assert RunConfig.from_dict(synced.to_dict()) == synced
    assert RunConfig.from_dict(base.to_dict()) == base


@pytest.fixture()
def one_rank_group():
    """A gloo process group of one rank in this process."""
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_gloo_sync_batchnorm_equals_batchnorm(one_rank_group):
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(6, momentum=0.4)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.normal_()
    sync = cdist.convert_sync_batchnorm(nn.Sequential(create_model("baseline", 10)),
                                        torch.device("cpu"))  # conversion of a real model
    assert any(isinstance(m, cdist.GlooSyncBatchNorm) for m in sync.modules())
    twin = cdist.convert_sync_batchnorm(
        nn.Sequential(nn.BatchNorm2d(6, momentum=0.4)), torch.device("cpu"))[0]
    twin.load_state_dict(bn.state_dict())
    x = (torch.randn(8, 6, 5, 5) * 3 + 1).contiguous(memory_format=torch.channels_last)
    g = torch.randn(8, 6, 5, 5)
    for _ in range(3):
        xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        bn.zero_grad()
        twin.zero_grad()
        ya, yb = bn(xa), twin(xb)
        (ya * g).sum().backward()
        (yb * g).sum().backward()
        assert torch.allclose(ya, yb, atol=1e-5)
        assert torch.allclose(xa.grad, xb.grad, atol=1e-5)
        assert torch.allclose(bn.weight.grad, twin.weight.grad, atol=1e-4)
        assert torch.allclose(bn.bias.grad, twin.bias.grad, atol=1e-4)
    for k, v in bn.state_dict().items():
        assert torch.allclose(v.float(), twin.state_dict()[k].float(), atol=1e-5), k
    bn.eval()
    twin.eval()
    assert torch.allclose(bn(x), twin(x), atol=1e-5)


def test_sync_bn_conversion_keeps_names_and_frozen_weights():
    model = create_model("fastnet", 10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen  # fastnet's BatchNorm weights
    model = cdist.convert_sync_batchnorm(model, torch.device("cpu"))
    assert list(model.state_dict()) == list(before)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert {n for n, p in model.named_parameters() if not p.requires_grad} == frozen
