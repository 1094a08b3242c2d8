"""Hostile input: damaged files, a second writer, NaN/inf, unusable folders and bad flags.

Every case is a real file (torch zip checkpoints, CIFAR pickles, PNGs) damaged the way a
disk or a user would damage it; the CLI must answer with one line and exit code 2.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cifar_files import write_synthetic
from PIL import Image

from cnnlib import _fileio as fileio
from cnnlib import cli
from cnnlib.data import cifar as data
from cnnlib.data import obtain
from cnnlib.models.registry import create_model
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


def test_cli_diverged_run_says_so_and_scores_chance(synthetic_root, tmp_path, capsys,
                                                     monkeypatch):
    """A diverged run is a result, not an error: it finishes, names the divergence, and its
    test accuracy is that of uniform probabilities; no epoch finished, so no last.pt."""
    ctrain = importlib.import_module("cnnlib.training.loop")  # the module, not the train() it exports
    def nan_in_training(*args, **kwargs):
        model = create_model(*args, **kwargs)
        model.register_forward_hook(lambda m, i, out: out * math.nan if m.training else out)
        return model

    monkeypatch.setattr(ctrain, "create_model", nan_in_training)
    rc = cli.main([str(a) for a in ("--data-root", synthetic_root, "train", *TINY_ARGS,
                                    "--out", tmp_path / "run")])
    out = capsys.readouterr().out
    assert rc == 0 and "diverged: training loss became nan at epoch 1, step 0" in out
    labels = data.load_cifar("cifar10", root=synthetic_root).test_labels
    assert out.splitlines()[-1] == f"test_acc={float((labels == 0).double().mean()):.4f}"
    assert not (tmp_path / "run" / "last.pt").exists() and (tmp_path / "run" / "model.pt").exists()


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
