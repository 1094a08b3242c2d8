"""cnnlib.data.duplicates: ciFAIR's lists obtained (data root, mirror, download), md5-checked,
read; the pixel nearest-neighbour search and how it meets ciFAIR's pairs."""

from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path

import pytest
import torch

from cnnlib.data import duplicates as D
from cnnlib.data import obtain as cobtain
from cnnlib.data.cifar import load_cifar

MIRROR = os.environ.get("CNNLIB_DATA_MIRROR", "")
needs_lists = pytest.mark.skipif(
    not all((Path(MIRROR) / "cifair" / f).is_file() for f in D.MD5) if MIRROR else True,
    reason="ciFAIR lists not available: set CNNLIB_DATA_MIRROR to a folder holding cifair/")


def _real(name: str) -> bool:
    folder = cobtain.data_root() / name / cobtain._ARCHIVES[name].folder
    return cobtain._complete(folder, name) or bool(MIRROR and Path(MIRROR).is_dir())


needs_real_data = pytest.mark.skipif(
    not (_real("cifar10") and _real("cifar100")),
    reason="real CIFAR-10/100 not available: set CNNLIB_DATA_MIRROR or put them in data/")


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """A base URL that refuses at once (nothing listens on port 9), unique to the test so
    that the failure another test remembered does not answer for it."""
    monkeypatch.delenv("CNNLIB_DATA_MIRROR", raising=False)
    return f"http://127.0.0.1:9/{tmp_path.name}/"


@pytest.fixture
def real_root(tmp_path, monkeypatch):
    """A data root of its own holding links to the real datasets: the lists land here, not
    in the project's data/."""
    for name in cobtain.DATASETS:
        load_cifar(name, download=False)  # in the data root (restored from the mirror if need be)
        (tmp_path / name).symlink_to(cobtain.data_root().resolve() / name)
    monkeypatch.setenv("CNNLIB_DATA_MIRROR", MIRROR)
    return tmp_path


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()


# ----------------------------------------------------------------------------- obtaining


@needs_lists
def test_the_mirror_gives_every_list_md5_checked_and_the_copy_serves_afterwards(
        tmp_path, offline, monkeypatch):
    monkeypatch.setenv("CNNLIB_DATA_MIRROR", MIRROR)
    paths = D.obtain_lists(tmp_path, base_url=offline)
    assert paths == [tmp_path / "cifair" / f for f in D.MD5]
    assert [_md5(p) for p in paths] == list(D.MD5.values())
    monkeypatch.delenv("CNNLIB_DATA_MIRROR")  # now the copy in the data root is enough
    assert D.obtain_lists(tmp_path, base_url=offline) == paths
    assert sorted(p.name for p in (tmp_path / "cifair").iterdir()) == sorted(D.MD5)  # no temp


@needs_lists
def test_a_damaged_copy_is_never_used_and_said_in_one_line(tmp_path, offline, monkeypatch,
                                                            caplog):
    bad = tmp_path / "cifair" / "duplicates_cifar10.csv"
    bad.parent.mkdir()
    bad.write_text("TestID,TrainID,Distance,Judgment\n0,0,0.0,0\n")
    with pytest.raises(D.DuplicatesUnavailable) as no_route:  # nothing can replace it
        D.list_path(bad.name, tmp_path, base_url=offline)
    message = str(no_route.value)
    assert "\n" not in message and f"{bad} fails its md5 check and is not used" in message
    monkeypatch.setenv("CNNLIB_DATA_MIRROR", MIRROR)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=D.__name__):
        ids = D.duplicate_test_ids("cifar10", tmp_path)
    assert len(ids) == 286 and _md5(bad) == D.MD5[bad.name]  # the mirror's copy replaced it
    [warning] = [r.getMessage() for r in caplog.records]
    assert warning.startswith(f"{bad} fails its md5 check and is not used: ")
    assert "\n" not in warning


def test_no_route_raises_one_line_naming_the_file_the_url_and_the_mirror_variable(
        tmp_path, offline):
    start = time.perf_counter()
    with pytest.raises(D.DuplicatesUnavailable) as first:
        D.list_path("duplicates_cifar100.csv", tmp_path, base_url=offline)
    message = str(first.value)
    assert isinstance(first.value, OSError) and "\n" not in message
    assert message.startswith("ciFAIR list duplicates_cifar100.csv not available: place it in "
                              f"{tmp_path / 'cifair'} (from {offline}duplicates_cifar100.csv), "
                              "or set CNNLIB_DATA_MIRROR to a folder holding cifair/")
    assert f"download of {offline}duplicates_cifar100.csv failed: URLError" in message
    # The failure is remembered: the next list (the next run of a study) does not ask again.
    with pytest.raises(D.DuplicatesUnavailable, match=f"download from {offline} not retried"):
        D.list_path("duplicates_cifar10.csv", tmp_path, base_url=offline)
    assert time.perf_counter() - start < 5
    assert not (tmp_path / "cifair").exists() or not any((tmp_path / "cifair").iterdir())


def test_a_mirror_without_the_lists_is_named(tmp_path, offline, monkeypatch):
    monkeypatch.setenv("CNNLIB_DATA_MIRROR", str(tmp_path / "mirror"))
    with pytest.raises(D.DuplicatesUnavailable,
                       match=f"CNNLIB_DATA_MIRROR={tmp_path / 'mirror'} holds no "
                             "cifair/duplicates_cifar10.csv"):
        D.list_path("duplicates_cifar10.csv", tmp_path / "root", base_url=offline)


def test_bad_names_are_one_line_value_errors(tmp_path):
    with pytest.raises(ValueError, match=r"^unknown dataset 'mnist'; allowed: cifar10, cifar100$"):
        D.duplicate_test_ids("mnist", tmp_path)
    with pytest.raises(ValueError, match=r"^within: 'val' is not allowed; allowed: train, test$"):
        D.duplicate_pairs("cifar10", tmp_path, within="val")
    with pytest.raises(ValueError, match=r"^unknown ciFAIR list 'x.csv'; allowed: "):
        D.list_path("x.csv", tmp_path)


# ----------------------------------------------------------------------------- the lists


@needs_lists
def test_the_lists_count_what_cifair_publishes(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNLIB_DATA_MIRROR", MIRROR)
    expected = {"cifar10": (286, {1: 249, 2: 37}, 39),  # unique test ids, judgments, test pairs
                "cifar100": (891, {0: 39, 1: 582, 2: 270}, 104)}
    for name, (unique, judgments, within_test) in expected.items():
        ids = D.duplicate_test_ids(name, tmp_path)
        assert ids.dtype == torch.int64 and len(ids) == unique
        assert torch.equal(ids, torch.unique(ids)) and 0 <= ids.min() and ids.max() < 10000
        pairs = D.duplicate_pairs(name, tmp_path)
        assert len(pairs.test_id) == unique  # one training image per listed test image
        values, counts = pairs.judgment.unique(return_counts=True)
        assert dict(zip(values.tolist(), counts.tolist(), strict=True)) == judgments
        assert int(pairs.train_id.max()) < 50000
        assert len(D.duplicate_pairs(name, tmp_path, within="test").test_id) == within_test


# ----------------------------------------------------------------------------- nearest neighbours


def _brute(queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    q, k = queries.reshape(len(queries), -1).double(), keys.reshape(len(keys), -1).double()
    return torch.cdist(q, k).pow(2).round()  # exact squared distances of small integers


@pytest.mark.parametrize("int_mm", [True, False])
def test_nearest_neighbours_are_the_exact_ones(int_mm, monkeypatch):
    # int8 products where they are faster, fp32 slices elsewhere: the same exact numbers
    monkeypatch.setattr(D, "_int8_matmul_faster", lambda: int_mm)
    g = torch.Generator().manual_seed(0)
    keys = torch.randint(0, 256, (300, 3, 32, 32), dtype=torch.uint8, generator=g)
    queries = torch.randint(0, 256, (50, 3, 32, 32), dtype=torch.uint8, generator=g)
    queries[:5] = keys[[7, 299, 0, 150, 42]]  # exact copies: distance 0 at that index
    found = D.nearest_neighbours(queries, keys, k=3, chunk=64)  # chunks that end mid-way
    want, order = _brute(queries, keys).sort(dim=1)
    assert torch.equal(found.distance.pow(2).round(), want[:, :3])
    assert torch.equal(found.index[:5, 0], torch.tensor([7, 299, 0, 150, 42]))
    assert torch.equal(found.index[5:], order[5:, :3])  # random images: no ties
    assert found.index.dtype == torch.int64 and found.distance.dtype == torch.float64


def test_the_fp32_products_stay_exact_at_the_extremes(monkeypatch):
    """Centred pixels of 0 and 255 (-128 and 127): sums of 3072 products of 2**14 pass 2**24,
    where fp32 stops holding every integer; the slices keep each sum below it."""
    rows = torch.tensor([-128, 127, 1, 0], dtype=torch.int8)[:, None].expand(4, 3072).clone()
    rows[2, ::2] = -128  # mixed signs
    want = (rows.double() @ rows.double().T).to(torch.int32)
    assert want[0, 0] == 3072 * 2**14 > 2**24
    assert torch.equal(D._float_dots(rows, rows), want)
    monkeypatch.delattr(torch, "_int_mm")  # a torch without int8 matrix products: fp32
    D._int8_matmul_faster.cache_clear()
    try:
        assert D._int8_matmul_faster() is False and torch.equal(D._dots(rows, rows), want)
    finally:
        D._int8_matmul_faster.cache_clear()


def test_nearest_neighbours_refuses_bad_input_in_one_line():
    images = torch.zeros(4, 3, 32, 32, dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"^queries: expected a non-empty uint8 \[N, \.\.\.\] "
                                         r"tensor, got torch.float32 \(4, 3, 32, 32\)$"):
        D.nearest_neighbours(images.float(), images)
    with pytest.raises(ValueError, match="differ in image shape"):
        D.nearest_neighbours(images, images[:, :1])
    with pytest.raises(ValueError, match=r"^k: 5 is not allowed; allowed: an integer in \[1, 4\]$"):
        D.nearest_neighbours(images, images, k=5)


@pytest.mark.real_data
@needs_lists
@needs_real_data
def test_the_pixel_nearest_neighbour_meets_cifair_on_cifar10(real_root):
    agreement = D.cifair_agreement("cifar10", real_root, k=5)
    assert (agreement.pairs, agreement.nearest, agreement.among_k) == (
        {0: 0, 1: 249, 2: 37}, {0: 0, 1: 187, 2: 18}, {0: 0, 1: 215, 2: 25})
    assert (agreement.flagged, agreement.flagged_in_cifair) == (0, 0)  # no copies in CIFAR-10
    assert agreement.seconds > 0  # searched here (its speed: benchmarks/duplicates_search.py)


@pytest.mark.real_data
@needs_lists
@needs_real_data
def test_cifar100s_exact_duplicates_are_the_pixel_nearest_neighbours(real_root):
    """ciFAIR's 39 exact duplicates of CIFAR-100 against the whole training set (a slice of
    the test set, cheap): the listed training image is the nearest for 38 and among the 5
    nearest for all; the 17 within THRESHOLD are all among them."""
    pairs = D.duplicate_pairs("cifar100", real_root)
    exact = pairs.judgment == 0
    data = load_cifar("cifar100", real_root)
    found = D.nearest_neighbours(data.test_images[pairs.test_id[exact]], data.train_images, k=5)
    listed = pairs.train_id[exact]
    assert int((found.index[:, 0] == listed).sum()) == 38
    assert bool((found.index == listed[:, None]).any(1).all())
    assert int((found.distance[:, 0] <= D.THRESHOLD).sum()) == 17
    with pytest.raises(ValueError, match="ciFAIR's lists index the official 50,000 training"):
        D.cifair_agreement("cifar100", real_root, nearest=found)  # a slice is not the test set


@needs_lists
@needs_real_data
def test_the_pipeline_setup_obtains_the_lists_and_survives_without_them(real_root, monkeypatch,
                                                                        capsys):
    from cnnlib.study import pipeline  # the study layer: only this test needs it

    monkeypatch.setenv("CNNLIB_DATA_ROOT", str(real_root))
    pipeline.obtain_data()  # the mirror gives them
    assert capsys.readouterr().out.splitlines() == ["[setup] obtaining CIFAR-10 and CIFAR-100"]
    assert sorted(p.name for p in (real_root / "cifair").iterdir()) == sorted(D.MD5)
    (real_root / "cifair" / "duplicates_cifar10.csv").unlink()
    monkeypatch.delenv("CNNLIB_DATA_MIRROR")
    monkeypatch.setitem(D._FAILED, D.BASE_URL, "offline (this test)")  # no real download
    pipeline.obtain_data()  # no route: said in one line, setup goes on
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and out[1].startswith(
        "[setup] ciFAIR lists not obtained, their metrics stay empty: ciFAIR list "
        "duplicates_cifar10.csv not available: ")
