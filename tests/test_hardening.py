"""Hostile input: damaged files, a second writer, NaN/inf, unusable folders and bad flags.

Every case is a real file (torch zip checkpoints, CIFAR pickles, PNGs) damaged the way a
disk or a user would damage it; the CLI must answer with one line and exit code 2.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import re
import shutil
import stat
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from cifar_files import write_synthetic
from PIL import Image

from cnnlib import _fileio as fileio
from cnnlib import cli
from cnnlib.data import cifar as data
from cnnlib.data import obtain
from cnnlib.models.registry import create_model
from cnnlib.study import budget, executors, locations, pipeline, plan, records, table
from cnnlib.study import cache as runs
from cnnlib.training.checkpoint import load_model, load_safe, save_atomic
from cnnlib.training.config import RunConfig
from cnnlib.training.loop import train

TINY = dict(dataset="cifar10", model="baseline", model_options={"width": 8, "depth": 4},
            batch_size=50, val_size=100, train_subset=300, epochs=1, seed=0, device="cpu")
TINY_ARGS = ["--dataset", "cifar10", "--model", "baseline", "--opt", "width=8", "--opt", "depth=4",
             "--batch-size", "50", "--set", "val_size=100", "--train-subset", "300", "--epochs", "1",
             "--device", "cpu", "--quiet"]


def flip(path: Path, n: int = 4096) -> None:
    """Invert n bytes in the middle of a file (what a bad sector or a bad copy does)."""
    b = bytearray(path.read_bytes())
    m = len(b) // 2
    b[m:m + n] = bytes(x ^ 0xFF for x in b[m:m + n])
    path.write_bytes(bytes(b))


def one_line_error(capsys, *argv) -> str:
    """Run the CLI; it must fail with exit code 2 and exactly one line on stderr."""
    rc = cli.main([str(a) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert (rc, len(err)) == (2, 1), (rc, err)
    return err[0]


@pytest.fixture(scope="module")
def trained(synthetic_root, tmp_path_factory):
    """A finished tiny run: its folder holds last.pt and model.pt."""
    out = tmp_path_factory.mktemp("trained")
    train(RunConfig(**TINY), out, data_root=synthetic_root, progress=False)
    return out


@pytest.fixture()
def png(tmp_path) -> Path:
    path = tmp_path / "ok.png"
    Image.new("RGB", (40, 30), (200, 30, 30)).save(path)
    return path


# ----------------------------------------------------------------------------- checkpoints


def test_damaged_checkpoint_is_refused_naming_it(trained, tmp_path, png, capsys):
    path = tmp_path / "model.pt"
    shutil.copyfile(trained / "model.pt", path)
    load_model(path)  # intact: loads
    flip(path)
    with pytest.raises(fileio.DamagedFileError, match=f"{path} is damaged"):
        load_model(path)
    assert str(path) in one_line_error(capsys, "predict", path, png)
    assert "damaged" in one_line_error(capsys, "evaluate", path)


def test_truncated_checkpoint_is_refused(trained, tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes((trained / "model.pt").read_bytes()[:5000])
    with pytest.raises(fileio.DamagedFileError, match="damaged or not a torch zip file"):
        load_safe(path)


def test_non_finite_weights_are_refused(trained, tmp_path, png, capsys):
    ckpt = load_safe(trained / "model.pt")
    key = next(k for k, v in ckpt["state_dict"].items() if v.is_floating_point())
    ckpt["state_dict"][key] = torch.full_like(ckpt["state_dict"][key], math.nan)
    save_atomic(ckpt, tmp_path / "nan.pt")
    with pytest.raises(fileio.DamagedFileError, match=f"NaN or inf in state_dict.{key}"):
        load_model(tmp_path / "nan.pt")
    assert "NaN or inf" in one_line_error(capsys, "predict", tmp_path / "nan.pt", png)


def _negative_variance(ckpt):
    key = next(k for k in ckpt["state_dict"] if k.endswith("running_var"))
    ckpt["state_dict"][key].mul_(-1)


def _overflowing_gains(ckpt):
    """Every BatchNorm gain 1e30: each tensor finite, the activations overflow to inf."""
    for k, v in ckpt["state_dict"].items():
        if k.endswith(".weight") and v.dim() == 1:
            v.fill_(1e30)


@pytest.mark.parametrize("change, words", [
    (_negative_variance, "running_var holds -"),
    (lambda c: c["mean"].__setitem__(0, math.nan), "'mean' is [nan,"),
    (lambda c: c["std"].__setitem__(1, 0.0), "'std' is ["),
    (_overflowing_gains, "forward pass on a fixed probe batch gives NaN or inf logits"),
])
def test_checkpoints_with_non_finite_outputs_are_refused(trained, tmp_path, png, synthetic_root,
                                                         capsys, change, words):
    """Finite tensors can still compute NaN: a negative variance, NaN or zero in mean/std,
    weights that overflow. Every loader refuses them in one line, not NaN probabilities."""
    ckpt = load_safe(trained / "model.pt")
    change(ckpt)
    save_atomic(ckpt, tmp_path / "bad.pt")
    load_safe(tmp_path / "bad.pt")  # each tensor finite: the file itself passes
    with pytest.raises(fileio.DamagedFileError, match=re.escape(words)):
        load_model(tmp_path / "bad.pt")
    assert words in one_line_error(capsys, "predict", tmp_path / "bad.pt", png)
    assert words in one_line_error(capsys, "--data-root", synthetic_root, "evaluate",
                                   tmp_path / "bad.pt")


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_code_carrying_checkpoint_refused_without_torch_advice(tmp_path, capsys):
    _Evil.marker = str(tmp_path / "pwned")
    torch.save({"format": "cnnlib-checkpoint-v1", "payload": _Evil()}, tmp_path / "evil.pt")
    line = one_line_error(capsys, "evaluate", tmp_path / "evil.pt")
    assert "refusing" in line and "calls posix.system" in line and "weights_only" not in line
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("change, words", [
    (lambda c: c.pop("classes"), "missing 'classes'"),
    (lambda c: c.pop("state_dict"), "missing 'state_dict'"),
    (lambda c: c.update(classes=c["classes"][:5]), "5 class names for a model with 10 outputs"),
    (lambda c: c.update(kind="bogus"), "kind 'bogus'"),
    (lambda c: c.update(num_classes=100, classes=[f"c{i}" for i in range(100)]),
     "does not rebuild its fp32 model"),
])
def test_hand_made_checkpoints_get_one_line(trained, tmp_path, png, capsys, change, words):
    ckpt = load_safe(trained / "model.pt")
    change(ckpt)
    save_atomic(ckpt, tmp_path / "bad.pt")
    assert words in one_line_error(capsys, "predict", tmp_path / "bad.pt", png)


def test_checkpoint_of_another_dataset_is_refused_before_evaluating(trained, tmp_path,
                                                                    synthetic_root, capsys):
    ckpt = load_safe(trained / "model.pt")
    ckpt["config"]["dataset"] = "cifar100"
    save_atomic(ckpt, tmp_path / "as100.pt")
    line = one_line_error(capsys, "--data-root", synthetic_root, "evaluate", tmp_path / "as100.pt")
    assert "10 classes are not the 100 of cifar100" in line


def test_checkpoints_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        save_atomic({"w": torch.ones(2)}, tmp_path / "a.pt")
        os.umask(0o077)
        save_atomic({"w": torch.ones(2)}, tmp_path / "b.pt")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.pt").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "b.pt").stat().st_mode) == 0o600


def test_damaged_last_pt_is_set_aside_and_the_run_restarts(trained, synthetic_root, tmp_path,
                                                           capsys):
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    (out / "model.pt").unlink()
    flip(out / "last.pt")
    result = train(RunConfig(**TINY), out, data_root=synthetic_root, progress=False)
    assert "trains from scratch" in capsys.readouterr().err
    assert (out / "last.pt.damaged").exists()
    assert load_safe(out / "last.pt")["epoch"] == 1 and len(result.history) == 1
    load_model(out / "model.pt")


def test_json_content_hash(tmp_path):
    path = tmp_path / "result.json"
    fileio.write_json({"test": {"acc": 0.5}, "val": {"val_loss": math.nan}}, path)
    assert fileio.read_json(path)["test"] == {"acc": 0.5}
    obj = json.loads(path.read_text())
    obj["test"]["acc"] = 0.9  # valid JSON, wrong content
    path.write_text(json.dumps(obj))
    with pytest.raises(fileio.DamagedFileError, match="does not match its sha256"):
        fileio.read_json(path)


def test_run_cache_sets_a_damaged_result_aside_and_resumes(synthetic_root, tmp_path, capsys):
    config = RunConfig(**TINY)
    first = runs.run(config, root=tmp_path, data_root=synthetic_root, progress=False)
    done = first.path / "result.json"
    obj = json.loads(done.read_text())
    obj["test"]["acc"] = 1.0
    done.write_text(json.dumps(obj))
    again = runs.run(config, root=tmp_path, data_root=synthetic_root, progress=False)
    assert "[damaged]" in capsys.readouterr().err
    assert (first.path / "result.json.damaged").exists()
    assert again.history == first.history  # resumed from last.pt: no epoch trained again
    assert again.test_acc == first.test_acc != 1.0


# ----------------------------------------------------------------------------- one writer


HOLDER = """import sys
from cnnlib import _fileio as fileio
with fileio.hold_folder(sys.argv[1]):
    print("held", flush=True)
    sys.stdin.read()
"""


def test_second_writer_stops_at_once_and_kill_leaves_no_stale_lock(synthetic_root, tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        second = subprocess.run(
            [sys.executable, "-m", "cnnlib", "--data-root", str(synthetic_root), "train",
             *TINY_ARGS, "--out", str(out)], capture_output=True, text=True, timeout=600)
        lines = second.stderr.strip().splitlines()
        assert (second.returncode, len(lines)) == (2, 1), second.stderr
        assert str(out) in lines[0] and f"in use by process {holder.pid}" in lines[0]
        assert not (out / "last.pt").exists()
    finally:
        holder.kill()  # SIGKILL: the OS drops the lock with the process
        holder.wait()
    with fileio.hold_folder(out):  # would raise FolderInUseError on a stale lock
        assert fileio.lock_holder(out) == str(os.getpid())


@pytest.mark.parametrize("kind", ["symlink", "fifo"])
def test_a_planted_lock_file_is_refused_and_what_it_points_at_is_untouched(kind, synthetic_root,
                                                                          tmp_path):
    """A `.lock` that is a link (or not a regular file) stops `cnnlib train` with one line and
    exit 2: opening it for writing would truncate a file outside the run folder."""
    out, precious = tmp_path / "run", tmp_path / "elsewhere" / "important"
    precious.parent.mkdir()
    precious.write_text("keep me\n")
    out.mkdir()
    if kind == "symlink":
        (out / fileio.LOCK_NAME).symlink_to(precious)
    else:
        os.mkfifo(out / fileio.LOCK_NAME)
    proc = subprocess.run(
        [sys.executable, "-m", "cnnlib", "--data-root", str(synthetic_root), "train",
         *TINY_ARGS, "--out", str(out)], capture_output=True, text=True, timeout=600)
    lines = proc.stderr.strip().splitlines()
    assert (proc.returncode, len(lines)) == (2, 1), proc.stderr
    assert str(out / fileio.LOCK_NAME) in lines[0] and "refused" in lines[0]
    assert precious.read_text() == "keep me\n"
    assert sorted(p.name for p in out.iterdir()) == [fileio.LOCK_NAME]  # nothing trained
    with pytest.raises(ValueError, match="refused"):
        with fileio.hold_folder(out):
            pass


def test_lock_passes_nested_calls_and_the_holders_children(tmp_path):
    """runs.run holds the lock, then train() takes it again, in-process or in torchrun workers."""
    child = "import sys; from cnnlib import _fileio as fileio\nwith fileio.hold_folder(sys.argv[1]): print('in')"
    with fileio.hold_folder(tmp_path / "a"), fileio.hold_folder(tmp_path / "a"):
        env = {**os.environ, **fileio.child_env(tmp_path / "a")}
        assert env[fileio.HELD_ENV].split(os.pathsep)[-1] == str((tmp_path / "a").resolve())
        started = subprocess.run([sys.executable, "-c", child, str(tmp_path / "a")], env=env,
                                 capture_output=True, text=True, timeout=300)
        assert started.stdout.strip() == "in", started.stderr
        # Any other process, even one this holder starts without child_env, meets the lock.
        other = subprocess.run([sys.executable, "-c", child, str(tmp_path / "a")],
                               capture_output=True, text=True, timeout=300)
    assert other.returncode == 1 and "FolderInUseError" in other.stderr
    with pytest.raises(RuntimeError, match="needs the folder held"):
        fileio.child_env(tmp_path / "a")


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("field, value", [
    ("norm_lr_scale", math.nan), ("jitter", math.inf), ("epochs", math.inf), ("lr", math.nan),
    ("seed", 10**23),
])
def test_config_refuses_nan_inf_and_huge_seeds(field, value):
    with pytest.raises(ValueError, match=f"^{field}: .* allowed: .*(finite|2\\*\\*63)"):
        RunConfig(**{**TINY, field: value})


@pytest.mark.parametrize("flags, words", [
    (["--set", "norm_lr_scale=nan"], "norm_lr_scale: nan is not allowed"),
    (["--set", "jitter=inf"], "jitter: inf is not allowed"),
    (["--epochs", "inf"], "epochs: inf is not allowed"),
    (["--seed", str(10**23)], "seed: "),
])
def test_cli_refuses_non_finite_config(tmp_path, capsys, flags, words):
    line = one_line_error(capsys, "--data-root", tmp_path / "nowhere", "train", *TINY_ARGS,
                          *flags, "--out", tmp_path / "run")
    assert words in line
    assert not (tmp_path / "run").exists()


def test_cli_diverged_run_says_so_scores_chance_and_exits_3(synthetic_root, tmp_path, capsys,
                                                            monkeypatch):
    """A diverged run is a result, not an error: it finishes, names the divergence, and its
    test accuracy is that of uniform probabilities; no epoch finished, so no last.pt. It is
    not a model either: exit status 3 and no model.pt."""
    ctrain = importlib.import_module("cnnlib.training.loop")  # the module, not the train() it exports
    def nan_in_training(*args, **kwargs):
        model = create_model(*args, **kwargs)
        model.register_forward_hook(lambda m, i, out: out * math.nan if m.training else out)
        return model

    monkeypatch.setattr(ctrain, "create_model", nan_in_training)
    rc = cli.main([str(a) for a in ("--data-root", synthetic_root, "train", *TINY_ARGS,
                                    "--out", tmp_path / "run")])
    out, err = capsys.readouterr()
    assert rc == 3, err
    assert err.count("\n") == 1 and "diverged: training loss became nan at epoch 1, step 0" in err
    assert "no model.pt written" in err
    labels = data.load_cifar("cifar10", root=synthetic_root).test_labels
    assert out.splitlines()[-1] == f"test_acc={float((labels == 0).double().mean()):.4f}"
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [fileio.LOCK_NAME]


def test_a_diverging_train_fails_a_shell_chain_and_leaves_no_model(synthetic_root, tmp_path):
    """`cnnlib train ... && deploy`: a real process at an absurd lr diverges; the chain stops."""
    out, deployed = tmp_path / "run", tmp_path / "deployed"
    train = " ".join([sys.executable, "-m", "cnnlib", "--data-root", str(synthetic_root), "train",
                      *TINY_ARGS, "--lr", "1e10", "--out", str(out)])
    proc = subprocess.run(["sh", "-c", f"{train} && touch {deployed}"], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 3, proc.stderr
    assert "diverged: training loss became" in proc.stderr.strip().splitlines()[-1]
    assert proc.stdout.strip().splitlines()[-1].startswith("test_acc=")
    assert not deployed.exists() and not (out / "model.pt").exists()
    # (that its unfinished epoch's time counts: tests/test_train.py, to the microsecond)


def test_cli_train_help_documents_the_exit_statuses():
    text = cli.build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    assert "3 diverged" in " ".join(text.split()) and "--force" in text


@pytest.mark.parametrize("plant, words", [
    ("another config", "holds a model of another config"),
    ("the user's own file", "is not a readable cnnlib model"),
])
def test_train_into_a_folder_holding_another_model_is_refused_unless_forced(
        plant, words, trained, synthetic_root, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    if plant == "another config":
        shutil.copyfile(trained / "model.pt", out / "model.pt")  # seed 0; this run is seed 1
    else:
        (out / "model.pt").write_text("my own notes\n")
    before = (out / "model.pt").read_bytes()
    argv = ("--data-root", synthetic_root, "train", *TINY_ARGS, "--seed", "1", "--out", out)
    line = one_line_error(capsys, *argv)
    assert str(out / "model.pt") in line and words in line and "--force" in line
    assert (out / "model.pt").read_bytes() == before
    assert [p.name for p in out.iterdir()] == ["model.pt"]  # not even the lock: no work started
    assert cli.main([str(a) for a in (*argv, "--force")]) == 0
    assert load_safe(out / "model.pt")["config"]["seed"] == 1


def test_train_into_a_finished_run_of_the_same_config_finishes_it_again(trained, synthetic_root,
                                                                        tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    assert cli.main([str(a) for a in ("--data-root", synthetic_root, "train", *TINY_ARGS,
                                      "--out", out)]) == 0
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    assert printed == f"test_acc={load_safe(out / 'model.pt')['metrics']['test_acc']:.4f}"
    assert load_safe(out / "last.pt")["epoch"] == 1  # resumed after its one epoch: none trained


# ----------------------------------------------------------------------------- records


def _snapshot(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture()
def cache(trained, tmp_path) -> Path:
    """A run cache holding one finished run (result.json, model.pt, last.pt)."""
    run = tmp_path / "cache" / "cifar10-baseline-0123456789abcdef"
    shutil.copytree(trained, run)
    fileio.write_json({"test": {"acc": 0.5}, "history": []}, run / "result.json")
    return run.parent


@pytest.mark.parametrize("dest, words", [
    (lambda c: c.parent / "link", "the run cache itself"),  # a symlink to it
    (lambda c: c / "cifar10-baseline-0123456789abcdef", "inside the run cache"),
    (lambda c: c.parent / "link" / "new" / "folder", "inside the run cache"),
])
def test_records_refuses_the_cache_under_another_path(cache, dest, words, capsys):
    (cache.parent / "link").symlink_to(cache)
    before = _snapshot(cache)
    line = one_line_error(capsys, "records", dest(cache), "--runs", cache)
    assert words in line and "by device and inode" in line
    assert _snapshot(cache) == before
    with pytest.raises(ValueError, match=words):
        records.save_record(cache / "cifar10-baseline-0123456789abcdef", dest(cache))
    assert _snapshot(cache) == before


def _can_bind_mount(tmp_path) -> bool:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    probe = subprocess.run(["unshare", "-rm", "mount", "--bind", tmp_path / "a", tmp_path / "b"],
                           capture_output=True) if shutil.which("unshare") else None
    return probe is not None and probe.returncode == 0


def test_records_refuses_the_cache_bind_mounted_elsewhere(cache, tmp_path, synthetic_root):
    """A bind mount is another path to the very same folder: no resolve() sees through it."""
    if not _can_bind_mount(tmp_path):
        pytest.skip("no bind mount here (needs unshare -rm: user and mount namespaces)")
    mount = tmp_path / "mnt"
    mount.mkdir()
    before = _snapshot(cache)
    records_cmd = [sys.executable, "-m", "cnnlib", "--data-root", str(synthetic_root), "records",
                   str(mount), "--runs", str(cache), "--profile", "smoke"]
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", 'mount --bind "$0" "$1" && shift && exec "$@"',
                           cache, mount, *records_cmd], capture_output=True, text=True, timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert (proc.returncode, len(lines)) == (2, 1), proc.stderr
    assert "the run cache itself" in lines[0] and str(mount) in lines[0]
    assert _snapshot(cache) == before


@pytest.mark.parametrize("make_out, words", [
    (lambda t: (t / "f").write_text("x") and t / "f", "cannot be used as a run folder"),
    (lambda t: (t / "f").write_text("x") and t / "f" / "sub", "cannot be used as a run folder"),
    (lambda t: "", "--out: empty"),
])
def test_unusable_out_is_found_before_anything_else(tmp_path, capsys, make_out, words):
    out = make_out(tmp_path)
    # The data root does not exist: reaching the data would give another error.
    line = one_line_error(capsys, "--data-root", tmp_path / "nowhere", "train", *TINY_ARGS,
                          "--out", out)
    assert words in line and (not out or str(out) in line)


def test_predict_input_errors_are_one_line(trained, tmp_path, png, capsys):
    noise = tmp_path / "noise.png"
    Image.effect_noise((128, 128), 60).convert("RGB").save(noise)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(noise.read_bytes()[: noise.stat().st_size // 2])
    bomb = tmp_path / "bomb.png"
    Image.new("1", (15000, 15000)).save(bomb)  # 225 M pixels in 27 kB
    model = trained / "model.pt"
    assert "is a folder" in one_line_error(capsys, "predict", model, tmp_path)
    assert "not a readable image" in one_line_error(capsys, "predict", model, truncated)
    assert "too large to decode" in one_line_error(capsys, "predict", model, bomb)
    assert "--top: -1" in one_line_error(capsys, "predict", model, png, "--top", "-1")


def test_lr_find_refuses_too_few_steps(tmp_path, capsys):
    line = one_line_error(capsys, "--data-root", tmp_path, "lr-find", *TINY_ARGS[:-1],
                          "--steps", "0")
    assert "steps: 0 is not allowed" in line


# ----------------------------------------------------------------------------- data


def test_missing_batch_file_is_named_without_a_download(synthetic_root, tmp_path, monkeypatch):
    monkeypatch.delenv(obtain.MIRROR_ENV, raising=False)
    monkeypatch.setattr(obtain, "_from_download", lambda *a: pytest.fail("download tried"))
    shutil.copytree(synthetic_root / "cifar10", tmp_path / "cifar10")
    (tmp_path / "cifar10" / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match=r"incomplete \(data_batch_3 missing\).*cnnlib data"):
        data.load_cifar("cifar10", root=tmp_path, download=True)


def test_official_size_copy_with_other_pixels_is_refused(tmp_path):
    folder = write_synthetic("cifar100", tmp_path, n_train=50000, n_test=10000, learnable=False)
    with pytest.raises(ValueError, match=r"^cifar100: the images or labels in .* differ from the "
                                         r"official dataset .*`cnnlib data`"):
        data.read_cifar(folder, "cifar100")


def _real_cifar10() -> Path | None:
    folder = obtain.data_root() / "cifar10" / "cifar-10-batches-py"
    return folder if obtain._complete(folder, "cifar10") else None


@pytest.mark.real_data
@pytest.mark.skipif(_real_cifar10() is None, reason="real CIFAR-10 not in data/cifar10")
def test_flipped_pixels_in_the_real_data_are_found(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    shutil.copytree(_real_cifar10(), folder)
    flip(folder / "data_batch_3")
    with pytest.raises(ValueError, match="cifar10: the images or labels .* differ"):
        data.read_cifar(folder, "cifar10")


# ----------------------------------------------------------------------------- command lines

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("argv, words", [
    (["-m", "cnnlib", "train", "--epochs", "two"],
     "cnnlib train: error: argument --epochs: invalid float value: 'two'"),
    (["-m", "cnnlib", "evaluate"], "cnnlib evaluate: error: the following arguments are required"),
    (["-m", "cnnlib.study", "collect", "--bogus"],
     "python -m cnnlib.study: error: unrecognized arguments: --bogus"),
    (["benchmarks/time_to_accuracy.py", "--seeds", "x"],
     "time_to_accuracy.py: error: argument --seeds: invalid int value: 'x'"),
    (["benchmarks/compression.py", "--folder", "no-such-folder"],
     "compression.py: error: --folder no-such-folder: no .pt or .onnx files there"),
    (["benchmarks/train_throughput.py", "--models", "vgg99"],
     "train_throughput.py: error: --models: unknown 'vgg99'; allowed: "),
    (["benchmarks/rerun_best.py", "--dataset", "mnist"],
     "rerun_best.py: error: argument --dataset: invalid choice: 'mnist'"),
])
def test_every_command_line_answers_a_bad_flag_with_one_line(argv, words, tmp_path):
    env = {**os.environ, "CNNLIB_OUTPUTS": str(tmp_path / "out"), "CNNLIB_RUNS": str(tmp_path / "runs")}
    proc = subprocess.run([sys.executable, *argv], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    [line] = proc.stderr.splitlines()  # no usage, no traceback
    assert line.startswith(words), line
    assert proc.stdout == "" and not (tmp_path / "out").exists() and not (tmp_path / "runs").exists()


# ----------------------------------------------------------------------------- the cache proves
# what it serves, and every failure is one line (a copied result, an edited table, a full or
# read-only disk, bad environment variables, garbage speeds, damaged .onnx, planted model.pt,
# 16-bit and non-regular images, a subset without every class, bad options found late)


@pytest.fixture(scope="module")
def two_cached(synthetic_root, tmp_path_factory):
    """A run cache holding two finished tiny runs (seeds 0 and 1): (root, run_a, run_b)."""
    root = tmp_path_factory.mktemp("runcache")
    a, b = (runs.run(RunConfig(**{**TINY, "seed": s}), root=root, data_root=synthetic_root,
                     progress=False) for s in (0, 1))
    return root, a, b


@pytest.fixture()
def tmpfs(tmp_path):
    """mount(name, size, read_only=False): a real tmpfs at tmp_path/name, unmounted after."""
    mounted = []

    def mount(name: str, size: str) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        proc = (subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                               capture_output=True, text=True) if shutil.which("mount") else None)
        if proc is None or proc.returncode:
            pytest.skip("no tmpfs here (mount -t tmpfs needs root): "
                        f"{proc.stderr.strip() if proc else 'no mount command'}")
        mounted.append(folder)
        return folder

    yield mount
    for folder in reversed(mounted):
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def _read_only(folder: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True, capture_output=True)


def test_a_result_copied_from_another_run_is_set_aside_and_the_run_trains(two_cached,
                                                                          synthetic_root,
                                                                          tmp_path, capsys):
    root = tmp_path / "runs"
    shutil.copytree(two_cached[0], root)
    a, b = two_cached[1].config, two_cached[2].config
    where = dict(root=root, data_root=synthetic_root)
    run_b = root / two_cached[2].path.name
    assert two_cached[1].result["run_key"] == two_cached[1].path.name  # it records its folder
    for name in ("result.json", "model.pt"):  # run a's files, copied over run b's
        shutil.copyfile(root / two_cached[1].path.name / name, run_b / name)
    assert runs.cached(b, **where) is None
    assert not runs.is_finished(run_b) and not runs.is_finished(run_b, b)
    again = runs.run(b, progress=False, **where)
    err = capsys.readouterr().err
    assert "[damaged]" in err and "not the run asked for" in err and f"run {run_b.name}" not in err
    assert (run_b / "result.json.damaged").exists() and (run_b / "model.pt.damaged").exists()
    assert again.result["config"]["seed"] == 1 and again.result["run_key"] == run_b.name
    assert again.test_acc == two_cached[2].test_acc  # resumed from its own last.pt
    # A file written before the key was recorded is checked by its config: another run's
    # (its hash recomputed) is refused, the run's own is still served.
    older = {k: v for k, v in fileio.read_json(root / two_cached[1].path.name / "result.json")
             .items() if k != "run_key"}
    fileio.write_json(older, run_b / "result.json")
    assert runs.cached(b, **where) is None
    fileio.write_json({k: v for k, v in again.result.items() if k != "run_key"},
                      run_b / "result.json")
    assert runs.cached(b, **where).test_acc == again.test_acc
    assert runs.cached(a, **where).result["config"]["seed"] == 0


def test_an_edited_study_table_never_reaches_results_csv(two_cached, tmp_path):
    out = tmp_path / "outputs"
    table.save_results(list(two_cached[1:]), "01_baseline", out)
    path = out / "results" / "01_baseline.csv"
    assert len(table.read_studies(out)) == 2
    if shutil.which("sha256sum"):  # the checksum is sha256sum's own format
        subprocess.run(["sha256sum", "-c", "01_baseline.csv.sha256"], cwd=path.parent, check=True,
                       capture_output=True)
    df = pd.read_csv(path)
    df.loc[0, "test_acc"] = 0.99  # a hand edit, saved as a spreadsheet would
    df.to_csv(path, index=False)
    with pytest.raises(fileio.DamagedFileError, match="changed since it was written"):
        table.read_studies(out)
    proc = subprocess.run([sys.executable, "-m", "cnnlib.study", "collect", "--out", str(out),
                           "--readme", ""], cwd=ROOT, capture_output=True, text=True, timeout=300)
    [line] = proc.stderr.splitlines()
    assert proc.returncode == 2 and str(path) in line and "--only 01_baseline --force" in line
    assert not (out / "results.csv").exists()
    (out / "results" / "01_baseline.csv.sha256").unlink()
    with pytest.raises(fileio.DamagedFileError, match="no readable checksum"):
        table.read_studies(out)
    table.save_results(list(two_cached[1:]), "01_baseline", out)  # rebuilt from the runs
    assert list(table.read_studies(out)["test_acc"]) == [r.test_acc for r in two_cached[1:]]


def test_a_full_disk_is_one_line_naming_the_folder_and_its_free_space(tmpfs, synthetic_root,
                                                                      capsys):
    full = tmpfs("full", "128k")
    save_atomic({"w": torch.ones(4)}, full / "model.pt")
    before = (full / "model.pt").read_bytes()
    # torch.save's own error here is a RuntimeError "unexpected pos"
    with pytest.raises(fileio.DiskFullError,
                       match=rf"^{re.escape(str(full))}: disk full while writing model\.pt "
                             r"\(\d+(\.\d)? (bytes|kB) free\)"):
        save_atomic({"w": torch.zeros(100_000)}, full / "model.pt")
    assert (full / "model.pt").read_bytes() == before  # the file it would replace is intact
    assert sorted(p.name for p in full.iterdir()) == ["model.pt"]  # no temporary file left
    with pytest.raises(fileio.DiskFullError, match="disk full while writing result.json"):
        fileio.write_json({"x": "y" * 300_000}, full / "result.json")
    out = full / "run"
    line = one_line_error(capsys, "--data-root", synthetic_root, "train", *TINY_ARGS,
                          "--opt", "width=64", "--out", out)
    assert line.startswith(f"cnnlib train: error: {out}: disk full while writing ") and " free)" in line


def test_the_pipeline_checks_its_environment_first_and_names_it(tmp_path):
    env = {**os.environ, "CNNLIB_THREADS": "-1", "CNNLIB_OUTPUTS": str(tmp_path / "out"),
           "CNNLIB_RUNS": str(tmp_path / "runs")}
    proc = subprocess.run([sys.executable, "-m", "cnnlib.study.pipeline", "--profile", "smoke"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stdout == ""  # no data step, no notebook
    assert proc.stderr.splitlines() == ["run_all: CNNLIB_THREADS: '-1' is not allowed; allowed: "
                                        "an integer >= 1"]


@pytest.mark.parametrize("env, flags, words", [
    ({"CNNLIB_JOBS": "abc"}, [], "CNNLIB_JOBS: 'abc' is not allowed"),
    ({"CNNLIB_JOBS": "4"}, ["--jobs", "abc"], "--jobs: 'abc' is not allowed"),
    ({"CNNLIB_NPROC": "x"}, [], "CNNLIB_NPROC: 'x' is not allowed"),
    ({"CNNLIB_EXECUTOR": "dask"}, [], "CNNLIB_EXECUTOR 'dask' is not allowed"),
    ({"CNNLIB_PROFILE": "huge"}, [], "CNNLIB_PROFILE 'huge' is not allowed"),
    ({"CNNLIB_JOBS": "2", "CNNLIB_NPROC": "2"}, [], "CNNLIB_JOBS 2 with CNNLIB_NPROC 2"),
])
def test_environment_variables_are_named_as_themselves(env, flags, words, monkeypatch, capsys):
    for name in ("CNNLIB_NPROC", "CNNLIB_JOBS", "CNNLIB_EXECUTOR", "CNNLIB_THREADS", "CNNLIB_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as stop:
        pipeline.parse_args(flags)
    assert stop.value.code == 2
    assert capsys.readouterr().err.startswith(f"run_all: {words}")


def test_a_garbage_speeds_file_is_set_aside_and_measured_again(tmp_path, monkeypatch, capsys):
    store = tmp_path / "speeds.json"
    store.write_bytes(b"\x00\x17 not json {")
    config = RunConfig(**TINY)
    speed = budget.images_per_second(config, store)
    assert speed > 0 and list(fileio.read_json(store).values()) == [speed]
    assert (tmp_path / "speeds.json.damaged").read_bytes() == b"\x00\x17 not json {"
    assert "[damaged]" in capsys.readouterr().err
    # The plan reads the same store: a damaged one is measured again there too.
    monkeypatch.setenv("CNNLIB_RUNS", str(tmp_path / "runs"))
    (tmp_path / "runs").mkdir()
    locations.speeds_path().write_text('{"cpu | x": "fast", "sha256": "0"}')
    monkeypatch.setattr(budget, "_measure", lambda *a: 1000.0)  # the timing is not the point
    lines = plan.plan_lines("smoke")
    assert lines[-1].startswith("total: ") and fileio.read_json(locations.speeds_path())
    assert (tmp_path / "runs" / "speeds.json.damaged").exists()


def test_a_read_only_run_cache_serves_its_runs_and_refuses_new_ones_in_one_line(
        tmpfs, two_cached, synthetic_root, tmp_path, capsys):
    ro = tmpfs("ro", "16m")
    run_a = two_cached[1]
    shutil.copytree(run_a.path, ro / run_a.path.name)
    (ro / run_a.path.name / runs.TEST_METRICS).unlink()  # derived: computed, cannot be saved
    _read_only(ro)
    served = runs.run(run_a.config, root=ro, data_root=synthetic_root, progress=False)
    assert served.test_acc == run_a.test_acc
    assert len(served.test_metrics(synthetic_root)["preds"]) == len(
        runs.test_split(run_a.config, synthetic_root).labels)
    assert "[not saved]" in capsys.readouterr().err
    new = RunConfig(**{**TINY, "seed": 7})
    with pytest.raises(ValueError, match="cannot be used as a run folder: Read-only file system"):
        runs.run(new, root=ro, data_root=synthetic_root, progress=False)
    with pytest.raises(ValueError, match=rf"run cache {re.escape(str(ro))}: cannot be written"):
        executors.run_all([("new", new)], root=ro, data_root=synthetic_root, progress=False)
    env = {**os.environ, "CNNLIB_RUNS": str(ro), "CNNLIB_OUTPUTS": str(tmp_path / "out")}
    proc = subprocess.run([sys.executable, "-m", "cnnlib.study.pipeline", "--profile", "smoke"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert (proc.returncode, proc.stdout) == (2, "")
    assert proc.stderr.splitlines() == [f"run_all: run cache {ro}: cannot be written "
                                        "(Read-only file system)"]


def test_a_damaged_onnx_file_is_one_line(png, tmp_path, capsys):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"\x08\x07\x12\x04junk" * 300)
    for argv in (("predict", bad, png), ("evaluate", bad)):
        assert f"onnx: {bad} is damaged or not an ONNX model" in one_line_error(capsys, *argv)


@pytest.mark.parametrize("plant", ["folder", "symlink loop"])
def test_a_model_pt_that_is_a_folder_or_a_link_loop_is_set_aside_and_the_run_resumes(
        plant, two_cached, synthetic_root, tmp_path, capsys):
    root = tmp_path / "runs"
    shutil.copytree(two_cached[0], root)
    first = two_cached[1]
    model = root / first.path.name / "model.pt"
    model.unlink()
    if plant == "folder":
        model.mkdir()
        (model / "data.pkl").write_text("not a checkpoint")
    else:
        model.symlink_to("model.pt")  # points at itself: ELOOP
    where = dict(root=root, data_root=synthetic_root)
    assert runs.cached(first.config, **where) is None  # not served, not even as a record
    again = runs.run(first.config, progress=False, **where)
    assert "[damaged]" in capsys.readouterr().err
    assert again.test_acc == first.test_acc  # resumed from last.pt, evaluated again
    assert model.is_file() and not model.is_symlink()
    load_model(again.model_file())
    aside = model.with_name("model.pt.damaged")
    assert aside.is_symlink() if plant == "symlink loop" else aside.is_dir()


def test_predict_scales_16_bit_grayscale_and_refuses_a_fifo(trained, tmp_path):
    ramp = (np.arange(48 * 48, dtype=np.uint32).reshape(48, 48) * 28).astype(np.uint16)
    gray16 = tmp_path / "gray16.png"
    Image.fromarray(ramp).save(gray16)
    assert Image.open(gray16).mode.startswith("I")  # what PIL makes of a 16-bit PNG
    image = cli.load_image(str(gray16), size=48).numpy()
    want = np.rint(ramp / 257.0).astype(np.uint8)  # 65535 -> 255, not clipped at 255
    assert (image == want[None]).all()
    mid = tmp_path / "mid.png"
    Image.fromarray(np.full((40, 40), 128 * 257, dtype=np.uint16)).save(mid)
    assert (cli.load_image(str(mid)) == 128).all()  # PIL's own conversion gives 255
    fifo = tmp_path / "image.png"
    os.mkfifo(fifo)
    proc = subprocess.run([sys.executable, "-m", "cnnlib", "predict", str(trained / "model.pt"),
                           str(fifo)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [f"cnnlib predict: error: image: {fifo} is not a regular "
                                        "file (a FIFO, device or socket); give image files"]


def test_a_training_subset_without_every_class_is_refused_before_any_work(
        tmp_path, capsys, synthetic_cifar10, synthetic_cifar100):
    out = tmp_path / "run"
    line = one_line_error(capsys, "--data-root", tmp_path / "nowhere", "train", *TINY_ARGS,
                          "--train-subset", "3", "--batch-size", "3", "--out", out)
    assert "--train-subset: 3 images cannot hold the 10 classes of cifar10" in line
    assert not out.exists() and not (tmp_path / "nowhere").exists()
    with pytest.warns(data.SubsetWarning, match="5 images hold 5 of the 10 classes"):
        data.train_split(synthetic_cifar10, subset=5)
    with warnings.catch_warnings():  # the smoke profile's subsets hold every class
        warnings.simplefilter("error", data.SubsetWarning)
        data.train_split(synthetic_cifar100, val_size=128, subset=256)


@pytest.mark.parametrize("flags, words", [
    (["--opt", "depth=-3"], "baseline: option 'depth': -3 is not allowed"),
    (["--opt", "wings=2"], "baseline: unknown option 'wings'"),
    (["--set", "val_size=5000"], "val_size: 5000 is not allowed"),  # 1000 training images
])
def test_bad_options_and_split_sizes_leave_no_run_folder(flags, words, synthetic_root, tmp_path,
                                                         capsys):
    out = tmp_path / "run"
    line = one_line_error(capsys, "--data-root", synthetic_root, "train", *TINY_ARGS, *flags,
                          "--out", out)
    assert words in line
    assert not out.exists()


HOLD_THEN_FAIL = """import sys
from cnnlib import _fileio as fileio
with fileio.hold_folder(sys.argv[1]):
    print("held", flush=True)
    sys.stdin.read()
    raise SystemExit("bad input found late")
"""


def test_a_waiter_locks_the_folder_its_failed_holder_removed(tmp_path):
    """The holder made the folder and fails before writing: it removes the folder. A second
    process waiting on that lock file must then hold the lock of a folder that exists."""
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_THEN_FAIL, str(out)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with fileio.hold_folder(out, wait=True, on_wait=lambda pid: holder.stdin.close()):
            assert holder.wait(timeout=300) == 1
            assert fileio.lock_holder(out) == str(os.getpid())
            (out / "kept").write_text("x")
    finally:
        holder.kill()
        holder.wait()
    assert sorted(p.name for p in out.iterdir()) == [fileio.LOCK_NAME, "kept"]
