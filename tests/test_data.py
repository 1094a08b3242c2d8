"""cnnlib.data.cifar and cnnlib.data.obtain: official-layout reading and validation, obtaining, splits,
stats."""

from __future__ import annotations

import dataclasses
import os
import pickle
import re
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from cifar_files import (
    CIFAR10_CLASSES,
    CIFAR100_CLASSES,
    CIFAR100_FINE_TO_COARSE,
    CIFAR100_SUPERCLASSES,
    write_synthetic,
)

from cnnlib.data import obtain as cobtain
from cnnlib.data.cifar import (
    CifarData,
    Split,
    channel_stats,
    fingerprint,
    load_cifar,
    read_cifar,
    test_split,
    train_split,
)
from cnnlib.data.obtain import obtain

CIFAR10_FILES = [*(f"data_batch_{k}" for k in range(1, 6)), "test_batch", "batches.meta"]
CIFAR100_FILES = ["train", "test", "meta"]


@pytest.fixture
def clean_env(monkeypatch):
    """No data root or mirror from the caller's environment leaks into a test."""
    monkeypatch.delenv("CNNLIB_DATA_ROOT", raising=False)
    monkeypatch.delenv("CNNLIB_DATA_MIRROR", raising=False)


def copy_dataset(synthetic_root: Path, name: str, dest: Path) -> Path:
    """A private copy of one synthetic dataset (the shared fixture must stay intact)."""
    layout = cobtain._ARCHIVES[name].folder
    shutil.copytree(synthetic_root / name / layout, dest / name / layout)
    return dest / name / layout


def rewrite(path: Path, change) -> None:
    """Unpickle an official-format file, apply ``change`` to its dict and pickle it back."""
    with open(path, "rb") as f:
        batch = pickle.load(f, encoding="bytes")
    change(batch)
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=4)


# ----------------------------------------------------------------------------- reading


def test_synthetic_cifar10_reads_back(synthetic_root, synthetic_cifar10):
    d = synthetic_cifar10
    folder = synthetic_root / "cifar10" / "cifar-10-batches-py"
    assert sorted(p.name for p in folder.iterdir()) == sorted(CIFAR10_FILES)
    assert d.name == "cifar10" and d.num_classes == 10
    assert d.classes == list(CIFAR10_CLASSES)
    assert d.train_images.shape == (1000, 3, 32, 32) and d.train_images.dtype == torch.uint8
    assert d.test_images.shape == (200, 3, 32, 32) and d.test_images.dtype == torch.uint8
    assert d.train_labels.dtype == torch.int64 and d.train_labels.shape == (1000,)
    assert torch.bincount(d.train_labels).tolist() == [100] * 10
    assert torch.bincount(d.test_labels).tolist() == [20] * 10
    assert d.superclasses is None and d.train_coarse is None and d.fine_to_coarse is None


def test_synthetic_files_match_official_pickle_layout(synthetic_root, synthetic_cifar10):
    folder = synthetic_root / "cifar10" / "cifar-10-batches-py"
    with open(folder / "data_batch_2", "rb") as f:
        raw = pickle.load(f, encoding="bytes")
    assert set(raw) == {b"batch_label", b"labels", b"data", b"filenames"}
    assert raw[b"batch_label"] == b"training batch 2 of 5"
    assert raw[b"data"].dtype == np.uint8 and raw[b"data"].shape == (200, 3072)
    # Channel-planar rows: the first 1024 bytes are the red plane of image 200.
    assert np.array_equal(
        raw[b"data"][0, :1024], synthetic_cifar10.train_images[200, 0].numpy().ravel()
    )
    with open(folder / "batches.meta", "rb") as f:  # like the originals: latin1 -> str keys
        meta = pickle.load(f, encoding="latin1")
    assert meta["num_cases_per_batch"] == 200 and meta["num_vis"] == 3072
    assert meta["label_names"] == list(CIFAR10_CLASSES)


def test_synthetic_cifar100_reads_back(synthetic_root, synthetic_cifar100):
    d = synthetic_cifar100
    folder = synthetic_root / "cifar100" / "cifar-100-python"
    assert sorted(p.name for p in folder.iterdir()) == sorted(CIFAR100_FILES)
    assert d.num_classes == 100 and d.classes == list(CIFAR100_CLASSES)
    assert d.superclasses == list(CIFAR100_SUPERCLASSES)
    assert d.train_images.shape == (1000, 3, 32, 32) and d.test_images.shape == (200, 3, 32, 32)
    assert torch.bincount(d.train_labels).tolist() == [10] * 100
    assert d.fine_to_coarse.dtype == torch.int64
    assert d.fine_to_coarse.tolist() == list(CIFAR100_FINE_TO_COARSE)
    assert torch.equal(d.train_coarse, d.fine_to_coarse[d.train_labels])
    assert torch.equal(d.test_coarse, d.fine_to_coarse[d.test_labels])
    assert torch.bincount(d.train_coarse).tolist() == [50] * 20


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread (extra threads only spin, worse under load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def nearest_mean_accuracy(d: CifarData, coarse: bool = False) -> float:
    train_y = d.train_coarse if coarse else d.train_labels
    test_y = d.test_coarse if coarse else d.test_labels
    x = d.train_images.flatten(1).float()
    means = torch.stack([x[train_y == c].mean(0) for c in range(int(train_y.max()) + 1)])
    pred = torch.cdist(d.test_images.flatten(1).float(), means).argmin(1)
    return (pred == test_y).float().mean().item()


def test_synthetic_classes_are_learnable(synthetic_cifar10, synthetic_cifar100, one_thread):
    assert nearest_mean_accuracy(synthetic_cifar10) > 0.9
    assert nearest_mean_accuracy(synthetic_cifar100) > 0.5
    assert nearest_mean_accuracy(synthetic_cifar100, coarse=True) > 0.8


def test_small_cnn_learns_synthetic_quickly(synthetic_cifar10, one_thread):
    torch.manual_seed(0)
    d = synthetic_cifar10
    nn = torch.nn
    net = nn.Sequential(
        *(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU()),
        *(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU()),
        *(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)),
    )
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    x, y = d.train_images.float() / 255 - 0.5, d.train_labels
    for step in range(30):  # three passes over 1000 images
        batch = slice(step * 100 % 1000, step * 100 % 1000 + 100)
        loss = torch.nn.functional.cross_entropy(net(x[batch]), y[batch])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        pred = net(d.test_images.float() / 255 - 0.5).argmax(1)
    assert (pred == d.test_labels).float().mean() > 0.5  # chance is 0.1


def test_unlearnable_synthetic_is_noise(tmp_path):
    write_synthetic("cifar10", tmp_path, n_train=200, n_test=50, learnable=False)
    d = read_cifar(tmp_path / "cifar10" / "cifar-10-batches-py", "cifar10")
    assert abs(d.train_images.float().mean().item() - 127.5) < 2


def test_fingerprint_follows_the_pixels_and_labels(tmp_path):
    """Equal data read twice hashes equal; one changed pixel or label changes the hash."""
    folder = write_synthetic("cifar100", tmp_path, n_train=300, n_test=100, seed=3)
    d = read_cifar(folder, "cifar100")
    assert fingerprint(read_cifar(folder, "cifar100")) == fingerprint(d)
    pixel = d.test_images.clone()
    pixel[7, 2, 31, 0] ^= 1
    label = d.train_labels.clone()
    label[0] = (label[0] + 1) % 100
    coarse = d.train_coarse.clone()
    coarse[-1] = (coarse[-1] + 1) % 20
    variants = [dataclasses.replace(d, test_images=pixel), dataclasses.replace(d, train_labels=label),
                dataclasses.replace(d, train_coarse=coarse), dataclasses.replace(d, name="cifar10")]
    hashes = {fingerprint(d)} | {fingerprint(v) for v in variants}
    assert len(hashes) == 1 + len(variants)


def test_uneven_cifar10_batches(tmp_path):
    folder = write_synthetic("cifar10", tmp_path, n_train=503, n_test=7)
    d = read_cifar(folder, "cifar10")
    assert len(d.train_labels) == 503 and len(d.test_labels) == 7


def test_load_cifar_caches_and_notices_rewrites(tmp_path, monkeypatch, clean_env):
    write_synthetic("cifar10", tmp_path, n_train=100, n_test=20, seed=1)
    first = load_cifar("cifar10", root=tmp_path, download=False)
    assert load_cifar("cifar10", root=tmp_path, download=False) is first
    monkeypatch.chdir(tmp_path)  # a relative root resolves to the same entry
    assert load_cifar("cifar10", root=".", download=False) is first
    write_synthetic("cifar10", tmp_path, n_train=100, n_test=20, seed=2)
    second = load_cifar("cifar10", root=tmp_path, download=False)
    assert fingerprint(second) != fingerprint(first)


@pytest.mark.parametrize("keep", [0, 1, 100, 0.5, -1])
def test_truncated_batch_is_named(synthetic_root, tmp_path, keep):
    folder = copy_dataset(synthetic_root, "cifar10", tmp_path)
    path = folder / "data_batch_3"
    raw = path.read_bytes()
    size = int(len(raw) * keep) if isinstance(keep, float) else keep % len(raw)
    path.write_bytes(raw[:size])
    with pytest.raises(ValueError, match="data_batch_3"):
        read_cifar(folder, "cifar10")


@pytest.mark.parametrize("name, victim", [("cifar10", "test_batch"), ("cifar100", "train")])
def test_garbage_file_is_named(synthetic_root, tmp_path, name, victim):
    folder = copy_dataset(synthetic_root, name, tmp_path)
    rng = np.random.default_rng(0)
    (folder / victim).write_bytes(rng.integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(ValueError, match=victim):
        read_cifar(folder, name)


def test_pickle_cannot_run_code(synthetic_root, tmp_path):
    folder = copy_dataset(synthetic_root, "cifar10", tmp_path)
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": Payload()}))
    with pytest.raises(ValueError, match="batches.meta.*unexpected object"):
        read_cifar(folder, "cifar10")
    assert not marker.exists()


@pytest.mark.parametrize(
    "victim, change, message",
    [
        ("data_batch_1", lambda b: b.update({b"labels": b[b"labels"][:-1]}), "'labels' has shape"),
        ("data_batch_2", lambda b: b[b"labels"].__setitem__(0, 10), "outside 0..9"),
        ("data_batch_4", lambda b: b.update({b"data": b[b"data"][:, :3000]}), "3072"),
        ("data_batch_5", lambda b: b.update({b"data": b[b"data"].astype(np.int16)}), "uint8"),
        ("data_batch_3", lambda b: b.update({b"labels": [0.5] * 200}), "must hold integers"),
        ("test_batch", lambda b: b.pop(b"labels"), "missing key 'labels'"),
        ("batches.meta", lambda b: b[b"label_names"].pop(), "9 names, expected 10"),
        ("batches.meta", lambda b: b.update({b"num_cases_per_batch": 150}), "150 per batch"),
        ("batches.meta", lambda b: b.update({b"num_cases_per_batch": 0}),
         "num_cases_per_batch: 0 is not allowed; allowed: an integer >= 1"),
    ],
)
def test_cifar10_inconsistencies_are_named(synthetic_root, tmp_path, victim, change, message):
    folder = copy_dataset(synthetic_root, "cifar10", tmp_path)
    rewrite(folder / victim, change)
    with pytest.raises(ValueError, match=victim) as err:
        read_cifar(folder, "cifar10")
    assert message in str(err.value)


def test_official_counts_enforced_when_meta_says_official(synthetic_root, tmp_path):
    folder = copy_dataset(synthetic_root, "cifar10", tmp_path)
    rewrite(folder / "batches.meta", lambda b: b.update({b"num_cases_per_batch": 10000}))
    with pytest.raises(ValueError, match="data_batch_1: 200 images.*10000 per batch"):
        read_cifar(folder, "cifar10")


def test_cifar100_inconsistencies_are_named(synthetic_root, tmp_path):
    folder = copy_dataset(synthetic_root, "cifar100", tmp_path)
    rewrite(folder / "test", lambda b: b.update({b"coarse_labels": b[b"coarse_labels"][1:]}))
    with pytest.raises(ValueError, match="test: 'coarse_labels' has shape"):
        read_cifar(folder, "cifar100")

    def swap_coarse(batch):
        batch[b"coarse_labels"] = [(c + 1) % 20 for c in batch[b"coarse_labels"]]

    folder = copy_dataset(synthetic_root, "cifar100", tmp_path / "again")
    rewrite(folder / "test", swap_coarse)
    with pytest.raises(ValueError, match="two different coarse labels"):
        read_cifar(folder, "cifar100")


def test_missing_file_is_named(synthetic_root, tmp_path):
    folder = copy_dataset(synthetic_root, "cifar100", tmp_path)
    (folder / "meta").unlink()
    with pytest.raises(FileNotFoundError, match="meta"):
        read_cifar(folder, "cifar100")


@pytest.mark.parametrize(
    "call",
    [
        lambda root: load_cifar("mnist", root=root, download=False),
        lambda root: obtain("cifar1000", root=root, download=False),
        lambda root: read_cifar(root, "CIFAR10"),
    ],
)
def test_unknown_dataset_name(tmp_path, call):
    with pytest.raises(ValueError, match="allowed: cifar10, cifar100"):
        call(tmp_path)


# ----------------------------------------------------------------------------- splits


def indexed_data(labels) -> CifarData:
    """A dataset whose images carry their own index, so splits can be checked exactly."""
    n = len(labels)
    images = torch.zeros(n, 3, 32, 32, dtype=torch.uint8)
    images[:, 0, 0, 0] = torch.arange(n) % 256
    images[:, 0, 0, 1] = torch.arange(n) // 256
    y = torch.as_tensor(labels, dtype=torch.int64)
    return CifarData("cifar10", images, y, images[:1], y[:1], list(CIFAR10_CLASSES))


def indices(split: Split) -> list[int]:
    return (split.images[:, 0, 0, 0].long() + 256 * split.images[:, 0, 0, 1].long()).tolist()


def class_counts(split: Split, num: int = 10) -> list[int]:
    return torch.bincount(split.labels, minlength=num).tolist()


def uneven_labels() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.permutation(np.repeat(np.arange(10), [50, 60, 70, 80, 90, 100, 110, 120, 130, 143]))


def test_split_is_deterministic_and_disjoint():
    d = indexed_data(np.arange(1000) % 10)
    train, val = train_split(d, val_size=100, seed=7)
    train2, val2 = train_split(d, val_size=100, seed=7)
    assert indices(train) == indices(train2) and indices(val) == indices(val2)
    assert len(train) == 900 and len(val) == 100
    assert set(indices(train)).isdisjoint(indices(val))
    assert sorted(indices(train) + indices(val)) == list(range(1000))
    assert indices(train) == sorted(indices(train))  # original order kept
    assert torch.equal(train.labels, d.train_labels[indices(train)])
    assert class_counts(val) == [10] * 10 and class_counts(train) == [90] * 10
    _, other = train_split(d, val_size=100, seed=8)
    assert indices(other) != indices(val)


def test_split_indices_never_change():
    """Pinned: a refactor must not silently move images between train and validation."""
    _, val = train_split(indexed_data(np.arange(100) % 10), val_size=10, seed=0)
    assert indices(val) == PINNED_VAL


PINNED_VAL = [16, 27, 29, 40, 45, 48, 71, 82, 83, 94]


@pytest.mark.parametrize("val_size", [1, 7, 123, 900])
def test_split_is_stratified_for_uneven_classes(val_size):
    labels = uneven_labels()
    d = indexed_data(labels)
    train, val = train_split(d, val_size=val_size, seed=1)
    assert len(val) == val_size and len(train) == len(labels) - val_size
    share = np.bincount(labels) * val_size / len(labels)
    assert np.all(np.abs(np.array(class_counts(val)) - share) < 1)


def test_split_without_validation_is_the_whole_set(synthetic_cifar10):
    train, val = train_split(synthetic_cifar10)
    assert val is None
    assert train.images is synthetic_cifar10.train_images
    assert train.labels is synthetic_cifar10.train_labels


def test_subset_is_stratified_and_nested():
    d = indexed_data(np.arange(1000) % 10)
    full, val = train_split(d, val_size=100, seed=3)
    small, val_small = train_split(d, val_size=100, subset=205, seed=3)
    assert indices(val_small) == indices(val)  # the subset never changes the validation set
    assert len(small) == 205 and set(indices(small)) <= set(indices(full))
    assert max(class_counts(small)) - min(class_counts(small)) <= 1
    only, none = train_split(d, subset=50, seed=3)
    assert none is None and class_counts(only) == [5] * 10


def test_split_carries_coarse_labels(synthetic_cifar100):
    d = synthetic_cifar100
    train, val = train_split(d, val_size=200, subset=500)
    assert len(val) == 200 and len(train) == 500
    assert class_counts(val, 100) == [2] * 100
    for part in (train, val):
        assert torch.equal(part.coarse, d.fine_to_coarse[part.labels])
    test = test_split(d)
    assert test.images is d.test_images and torch.equal(test.coarse, d.test_coarse)


BAD_SIZES = [  # of 1000 images
    ({"val_size": -1}, "val_size: -1 is not allowed; allowed: an integer in [0, 999]"),
    ({"val_size": 1000}, "val_size: 1000 is not allowed; allowed: an integer in [0, 999]"),
    ({"val_size": 1.5}, "val_size: 1.5 is not allowed; allowed: an integer in [0, 999]"),
    ({"subset": 901, "val_size": 100}, "subset: 901 is not allowed; allowed: an integer in [0, 900]"),
    ({"subset": True}, "subset: True is not allowed; allowed: an integer in [0, 1000]"),
]


@pytest.mark.parametrize(("kwargs", "message"), BAD_SIZES)
def test_split_rejects_bad_sizes(kwargs, message):
    with pytest.raises(ValueError) as err:
        train_split(indexed_data(np.arange(1000) % 10), **kwargs)
    assert str(err.value) == message


# ----------------------------------------------------------------------------- stats, hash


def test_channel_stats_matches_torch(synthetic_cifar10):
    images = synthetic_cifar10.train_images
    x = images.double() / 255
    mean, std = channel_stats(images)
    assert np.allclose(mean, x.mean(dim=(0, 2, 3)).tolist(), rtol=0, atol=1e-12)
    assert np.allclose(std, x.std(dim=(0, 2, 3), unbiased=False).tolist(), rtol=0, atol=1e-12)
    assert channel_stats(images, chunk=7) == (mean, std)
    assert all(isinstance(v, float) for v in mean + std)


def test_channel_stats_rejects_non_uint8():
    with pytest.raises(ValueError, match="uint8"):
        channel_stats(torch.zeros(2, 3, 32, 32))
    with pytest.raises(ValueError, match="empty"):
        channel_stats(torch.zeros(0, 3, 32, 32, dtype=torch.uint8))


def test_fingerprint_is_stable_and_sensitive(synthetic_cifar10):
    d = synthetic_cifar10
    key = fingerprint(d)
    assert re.fullmatch(r"[0-9a-f]{16}", key) and fingerprint(d) == key
    labels = d.train_labels.clone()
    labels[0] = (labels[0] + 1) % 10
    assert fingerprint(dataclasses.replace(d, train_labels=labels)) != key
    images = d.test_images.clone()
    images[-1, 2, 31, 31] ^= 1
    assert fingerprint(dataclasses.replace(d, test_images=images)) != key


# ----------------------------------------------------------------------------- obtaining


def make_archive(tmp_path: Path, name: str, dest: Path) -> Path:
    """A small official-style archive (top folder + files) of synthetic data."""
    folder = write_synthetic(name, tmp_path / "src", n_train=50, n_test=10)
    dest.mkdir(parents=True, exist_ok=True)
    archive = dest / cobtain._ARCHIVES[name].filename
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    return archive


def expect_md5(monkeypatch, name: str, archive: Path) -> None:
    spec = cobtain._ARCHIVES[name]
    monkeypatch.setitem(cobtain._ARCHIVES, name, spec._replace(md5=cobtain._md5(archive)))


def test_data_root_precedence(monkeypatch, clean_env):
    assert cobtain.data_root() == Path("data")
    monkeypatch.setenv("CNNLIB_DATA_ROOT", "elsewhere")
    assert cobtain.data_root() == Path("elsewhere")
    assert cobtain.data_root("given") == Path("given")


def test_obtain_uses_extracted_folder(synthetic_root, clean_env):
    assert obtain("cifar10", root=synthetic_root, download=False) == (
        synthetic_root / "cifar10" / "cifar-10-batches-py"
    )


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_obtain_extracts_placed_archive(tmp_path, monkeypatch, clean_env, name):
    root = tmp_path / "root"
    archive = make_archive(tmp_path, name, root / name)
    expect_md5(monkeypatch, name, archive)
    folder = obtain(name, root=root, download=False)
    assert folder == root / name / cobtain._ARCHIVES[name].folder
    assert read_cifar(folder, name).train_images.shape == (50, 3, 32, 32)
    assert [p.name for p in (root / name).iterdir() if p.name.startswith(".")] == []


def test_obtain_repairs_incomplete_folder_from_archive(tmp_path, monkeypatch, clean_env):
    root = tmp_path / "root"
    expect_md5(monkeypatch, "cifar10", make_archive(tmp_path, "cifar10", root / "cifar10"))
    folder = obtain("cifar10", root=root, download=False)
    (folder / "data_batch_4").unlink()
    assert obtain("cifar10", root=root, download=False) == folder
    assert (folder / "data_batch_4").is_file()


def test_obtain_rejects_archive_with_wrong_md5(tmp_path, clean_env):
    root = tmp_path / "root"
    make_archive(tmp_path, "cifar10", root / "cifar10")  # real md5 expected: mismatch
    with pytest.raises(FileNotFoundError, match="fails its md5 check"):
        obtain("cifar10", root=root, download=False)


def test_obtain_uses_mirror(tmp_path, monkeypatch, clean_env):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "restore_cifar.py").write_text(
        "import sys\n"
        "from pathlib import Path\n"
        "from cifar_files import write_synthetic\n"
        "dest = Path(sys.argv[2])\n"
        "write_synthetic(sys.argv[1], dest.parent, n_train=40, n_test=10)\n"
    )
    monkeypatch.setenv("CNNLIB_DATA_MIRROR", str(mirror))
    package_parent = Path(cobtain.__file__).absolute().parents[1]  # the script imports cnnlib
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(package_parent), str(Path(__file__).parent)]))
    d = load_cifar("cifar100", root=tmp_path / "root", download=False)
    assert d.train_images.shape == (40, 3, 32, 32) and d.superclasses is not None


def test_obtain_reports_broken_mirror(tmp_path, monkeypatch, clean_env):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    monkeypatch.setenv("CNNLIB_DATA_MIRROR", str(mirror))
    with pytest.raises(FileNotFoundError, match="holds no restore_cifar.py"):
        obtain("cifar10", root=tmp_path, download=False)
    (mirror / "restore_cifar.py").write_text("raise SystemExit('cifar10: no copy kept here')\n")
    with pytest.raises(FileNotFoundError, match="mirror restore failed: cifar10: no copy kept"):
        obtain("cifar10", root=tmp_path, download=False)


def test_obtain_without_any_source_says_what_to_do(tmp_path, clean_env):
    with pytest.raises(FileNotFoundError) as err:
        obtain("cifar100", root=tmp_path, download=False)
    message = str(err.value)
    assert "\n" not in message
    hints = ("cifar-100-python.tar.gz", str(tmp_path / "cifar100"), "CNNLIB_DATA_MIRROR")
    for hint in (*hints, "download=True"):
        assert hint in message


def test_obtain_downloads_with_md5(tmp_path, monkeypatch, clean_env):
    archive = make_archive(tmp_path, "cifar10", tmp_path / "server")
    expect_md5(monkeypatch, "cifar10", archive)
    calls = []

    def fake_download(url, root, filename, md5):
        calls.append((url, md5))
        shutil.copy(archive, Path(root) / filename)

    monkeypatch.setattr("torchvision.datasets.utils.download_url", fake_download)
    folder = obtain("cifar10", root=tmp_path / "root", download=True)
    assert calls == [(cobtain._ARCHIVES["cifar10"].url, cobtain._md5(archive))]
    assert read_cifar(folder, "cifar10").test_images.shape == (10, 3, 32, 32)


def test_obtain_reports_failed_download(tmp_path, monkeypatch, clean_env):
    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr("torchvision.datasets.utils.download_url", offline)
    with pytest.raises(FileNotFoundError, match="download failed: OSError: network is unreach"):
        obtain("cifar10", root=tmp_path, download=True)


# ----------------------------------------------------------------------------- real data


def real_cifar10_available() -> bool:
    folder = cobtain.data_root() / "cifar10" / "cifar-10-batches-py"
    mirror = os.environ.get("CNNLIB_DATA_MIRROR")
    return cobtain._complete(folder, "cifar10") or bool(mirror and Path(mirror).is_dir())


@pytest.mark.real_data
@pytest.mark.skipif(
    not real_cifar10_available(),
    reason="real CIFAR-10 not available: set CNNLIB_DATA_MIRROR or put it in data/cifar10",
)
def test_real_cifar10():
    d = load_cifar("cifar10", download=False)
    assert d.train_images.shape == (50000, 3, 32, 32) and d.test_images.shape == (10000, 3, 32, 32)
    assert d.train_labels[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]
    assert torch.bincount(d.train_labels).tolist() == [5000] * 10
    mean, std = channel_stats(d.train_images)
    assert np.allclose(mean, (0.4914, 0.4822, 0.4465), atol=1e-4)
    assert np.allclose(std, (0.2470, 0.2435, 0.2616), atol=1e-4)
