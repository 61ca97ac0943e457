"""Tests for resnetlab.data: format detection, loading, caching, splits and user errors.

All data is tiny and written to tmp_path; the network is never used (the download seam
``formats.fetch_url`` is replaced wherever a download could be attempted).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import tarfile
import urllib.error
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resnetlab.data import folder as folder_mod
from resnetlab.data import formats
from resnetlab.data import transforms as T
from resnetlab.data.folder import FolderDataset
from resnetlab.data.resolve import (
    SAMPLE_DIR,
    ArrayDataset,
    cache_root,
    load_eval_split,
    open_data,
    stratified_pick,
)
from resnetlab.errors import UserError

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.fixture(autouse=True)
def _no_network(monkeypatch, tmp_path):
    """Fail loudly if anything tries the network, and keep caches inside tmp_path."""

    def offline(url, timeout):
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(formats, "fetch_url", offline)
    monkeypatch.setenv("RESNETLAB_DATA", str(tmp_path / "envcache"))


def quiet(_line: str) -> None:
    """A ``log`` that drops lines."""


class Log(list):
    """A ``log`` that records lines."""

    def __call__(self, line: str) -> None:
        self.append(line)


# ----------------------------------------------------------------------------- writers


def cifar_batch(n: int, n_classes: int, seed: int, label_key: bytes = b"labels") -> dict:
    rng = np.random.default_rng(seed)
    return {
        b"batch_label": b"fake",
        b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
        label_key: [int(i % n_classes) for i in range(n)],
    }


def write_cifar10(root: Path, per_batch: int = 20) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i in range(1, 6):
        with open(folder / f"data_batch_{i}", "wb") as f:
            pickle.dump(cifar_batch(per_batch, 10, i), f, protocol=2)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump(cifar_batch(per_batch, 10, 99), f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [n.encode() for n in CIFAR10_NAMES], b"num_vis": 3072}, f)
    return folder


def write_cifar100(root: Path) -> Path:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for name, n in (("train", 300), ("test", 100)):
        batch = cifar_batch(n, 100, len(name), b"fine_labels")
        batch[b"coarse_labels"] = [i % 20 for i in range(n)]
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
    with open(folder / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": [f"c{i:02d}".encode() for i in range(100)]}, f)
    return folder


def tar_folder(folder: Path, archive: Path) -> Path:
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    return archive


def write_idx(path: Path, arr: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    data = header + arr.astype(np.uint8).tobytes()
    if path.name.endswith(".gz"):
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def write_mnist(folder: Path, gz: bool, n_train: int = 30, n_test: int = 10) -> Path:
    folder.mkdir(parents=True)
    ext = ".gz" if gz else ""
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte{ext}", rng.integers(0, 256, (n, 28, 28)))
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{ext}", np.arange(n) % 10)
    return folder


def save_image(
    path: Path, mode: str = "RGB", size: tuple[int, int] = (8, 8), seed: int = 0, fmt: str | None = None
) -> None:
    rng = np.random.default_rng(seed)
    rgb = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")
    if mode == "P":
        img = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    else:
        img = rgb.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format=fmt)


def write_image_tree(root: Path, classes: list[str], per_class: int, size=(8, 8), ext=".png") -> Path:
    for c, name in enumerate(classes):
        for i in range(per_class):
            save_image(root / name / f"{i:03d}{ext}", size=size, seed=c * 1000 + i)
    return root


# ------------------------------------------------------------------------------- CIFAR


def test_cifar10_folder_loads_with_test_split(tmp_path):
    folder = write_cifar10(tmp_path)
    b = open_data(str(folder), cache_dir=str(tmp_path / "c"), log=quiet)
    assert b.in_memory and b.in_chans == 3 and b.image_size == 32
    assert b.train.images.shape == (100, 3, 32, 32) and b.train.images.dtype == torch.uint8
    assert b.train.images.is_contiguous()
    assert b.train.labels.dtype == torch.int64 and b.train.labels[:10].tolist() == list(range(10))
    assert b.val is not None and len(b.val) == 20 and b.val_name == "test"
    assert b.classes == CIFAR10_NAMES == b.train.classes
    # Rows are the red plane, then green, then blue, each row-major 32x32.
    raw = cifar_batch(20, 10, 1)[b"data"][0]
    assert torch.equal(b.train.images[0, 1], torch.from_numpy(raw[1024:2048].reshape(32, 32)))
    x = b.train.images.to(torch.float64) / 255
    assert b.mean == pytest.approx(x.mean(dim=(0, 2, 3)).tolist(), abs=1e-9)
    assert b.std == pytest.approx(x.std(dim=(0, 2, 3), unbiased=False).tolist(), abs=1e-9)
    assert "CIFAR-10" in b.source and "100 train" in b.source


def test_cifar10_archive_and_parent_folder(tmp_path):
    folder = write_cifar10(tmp_path / "src")
    archive = tar_folder(folder, tmp_path / "cifar-10-python.tar.gz")
    b = open_data(str(archive), log=quiet)
    assert len(b.train) == 100 and len(b.val) == 20 and b.classes == CIFAR10_NAMES
    # The folder the archive sits in is recognised too.
    b2 = open_data(str(tmp_path), val_split=10, log=quiet)
    assert len(b2.train) == 90 and b2.val_name == "val"


def test_cifar100_folder_uses_fine_labels(tmp_path):
    folder = write_cifar100(tmp_path)
    b = open_data(str(folder), log=quiet)
    assert len(b.classes) == 100 and b.classes[7] == "c07"
    assert b.train.images.shape == (300, 3, 32, 32) and len(b.val) == 100
    assert int(b.train.labels.max()) == 99


def test_cifar_pickle_with_code_is_refused(tmp_path):
    folder = write_cifar10(tmp_path)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    with open(folder / "data_batch_1", "wb") as f:
        pickle.dump({b"data": Evil()}, f)
    with pytest.raises(UserError, match="refusing to load"):
        open_data(str(folder), log=quiet)


def test_truncated_archive_is_user_error(tmp_path):
    archive = tar_folder(write_cifar10(tmp_path / "src"), tmp_path / "cifar-10-python.tar.gz")
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="truncated or corrupt"):
        open_data(str(archive), log=quiet)


# ----------------------------------------------------------------------- download/cache


def fake_archive(tmp_path: Path) -> bytes:
    archive = tar_folder(write_cifar10(tmp_path / "fake-src"), tmp_path / "fake.tar.gz")
    return archive.read_bytes()


class FakeResponse(io.BytesIO):
    def __init__(self, data: bytes, length: int | None = None):
        super().__init__(data)
        self.headers = {"Content-Length": str(length if length is not None else len(data))}


def test_download_verifies_md5_and_loads(tmp_path, monkeypatch):
    data = fake_archive(tmp_path)
    spec = replace(formats.CIFAR_SPECS["cifar10"], md5=hashlib.md5(data).hexdigest())
    monkeypatch.setitem(formats.CIFAR_SPECS, "cifar10", spec)
    calls = []
    monkeypatch.setattr(formats, "fetch_url", lambda url, timeout: calls.append(url) or FakeResponse(data))
    cache = tmp_path / "cache"
    b = open_data("cifar10", cache_dir=str(cache), log=quiet)
    assert calls == [spec.url] and len(b.train) == 100 and len(b.val) == 20
    assert (cache / "cifar-10-python.tar.gz").is_file() and (cache / "cifar-10-batches-py" / "test_batch").is_file()
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]  # no temp files left
    open_data("CIFAR-10", cache_dir=str(cache), log=quiet)  # served from the cache
    assert len(calls) == 1


def test_download_md5_mismatch(tmp_path, monkeypatch):
    data = fake_archive(tmp_path)
    monkeypatch.setattr(formats, "fetch_url", lambda url, timeout: FakeResponse(data))
    cache = tmp_path / "cache"
    with pytest.raises(UserError, match="has MD5 .*expected c58f30108f718f92721af3b95e74349a"):
        open_data("cifar10", cache_dir=str(cache), log=quiet)
    assert list(cache.iterdir()) == []  # neither the archive nor a temp file is left


def test_download_truncated(tmp_path, monkeypatch):
    data = fake_archive(tmp_path)
    monkeypatch.setattr(formats, "fetch_url", lambda url, timeout: FakeResponse(data[:1000], length=len(data)))
    with pytest.raises(UserError, match="truncated"):
        open_data("cifar10", cache_dir=str(tmp_path / "cache"), log=quiet)


def test_offline_download_says_where_to_put_archive(tmp_path):
    cache = tmp_path / "cache"
    with pytest.raises(UserError) as err:
        open_data("cifar100", cache_dir=str(cache), log=quiet)
    msg = str(err.value)
    assert "\n" not in msg and "could not download CIFAR-100" in msg
    assert "cifar-100-python.tar.gz" in msg and str(cache) in msg


def test_cached_archive_with_wrong_md5(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "cifar-10-python.tar.gz").write_bytes(fake_archive(tmp_path))
    with pytest.raises(UserError, match="MD5 .*expected c58f30108f718f92721af3b95e74349a"):
        open_data("cifar10", cache_dir=str(cache), log=quiet)


def test_cached_archive_truncated_after_md5(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cache.mkdir()
    data = fake_archive(tmp_path)[:2000]
    (cache / "cifar-10-python.tar.gz").write_bytes(data)
    spec = replace(formats.CIFAR_SPECS["cifar10"], md5=hashlib.md5(data).hexdigest())
    monkeypatch.setitem(formats.CIFAR_SPECS, "cifar10", spec)
    with pytest.raises(UserError, match="truncated or corrupt"):
        open_data("cifar10", cache_dir=str(cache), log=quiet)


def evil_tar(path: Path, kind: str) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("cifar-10-batches-py/batches.meta")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
        if kind == "dotdot":
            info = tarfile.TarInfo("cifar-10-batches-py/../../escaped.txt")
        elif kind == "absolute":
            info = tarfile.TarInfo("/tmp/escaped.txt")
        elif kind == "symlink":
            info = tarfile.TarInfo("cifar-10-batches-py/link")
            info.type, info.linkname = tarfile.SYMTYPE, "../../outside"
        elif kind == "abs_symlink":
            info = tarfile.TarInfo("cifar-10-batches-py/link")
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        elif kind == "hardlink":
            info = tarfile.TarInfo("cifar-10-batches-py/hard")
            info.type, info.linkname = tarfile.LNKTYPE, "../outside"
        if info.type == tarfile.REGTYPE:
            info.size = 4
            tar.addfile(info, io.BytesIO(b"evil"))
        else:
            tar.addfile(info)
    return path


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink", "abs_symlink", "hardlink"])
def test_extraction_rejects_members_outside_target(tmp_path, kind):
    archive = evil_tar(tmp_path / "evil.tar.gz", kind)
    target = tmp_path / "a" / "b" / "target"
    with pytest.raises(UserError, match="refusing to extract"):
        formats.safe_extract(archive, target)
    assert not (tmp_path / "a" / "escaped.txt").exists() and not (target / "cifar-10-batches-py").exists()


def test_escaping_member_in_cached_archive(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cache.mkdir()
    data = evil_tar(cache / "cifar-10-python.tar.gz", "dotdot").read_bytes()
    spec = replace(formats.CIFAR_SPECS["cifar10"], md5=hashlib.md5(data).hexdigest())
    monkeypatch.setitem(formats.CIFAR_SPECS, "cifar10", spec)
    with pytest.raises(UserError, match="outside"):
        open_data("cifar10", cache_dir=str(cache), log=quiet)
    assert not (tmp_path / "escaped.txt").exists()


def test_default_data_prefers_cached_cifar_then_sample(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setattr(formats, "can_download", lambda url, timeout=3.0: False)
    log = Log()
    b = open_data(None, cache_dir=str(cache), log=log)
    assert "bundled CIFAR-10 sample" in log[0] and len(b.train) == 3000
    write_cifar10(cache)
    log = Log()
    b = open_data(None, cache_dir=str(cache), log=log)
    assert log[0].startswith("data: CIFAR-10 from the cache") and len(b.train) == 100


def test_default_data_downloads_when_reachable(tmp_path, monkeypatch):
    data = fake_archive(tmp_path)
    spec = replace(formats.CIFAR_SPECS["cifar10"], md5=hashlib.md5(data).hexdigest())
    monkeypatch.setitem(formats.CIFAR_SPECS, "cifar10", spec)
    monkeypatch.setattr(formats, "can_download", lambda url, timeout=3.0: True)
    monkeypatch.setattr(formats, "fetch_url", lambda url, timeout: FakeResponse(data))
    log = Log()
    b = open_data(None, cache_dir=str(tmp_path / "cache"), log=log)
    assert "downloading" in log[0] and len(b.train) == 100


def test_cache_root_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("RESNETLAB_DATA", str(tmp_path / "x"))
    assert cache_root() == tmp_path / "x" and cache_root(str(tmp_path / "y")) == tmp_path / "y"
    monkeypatch.delenv("RESNETLAB_DATA")
    assert cache_root() == Path.home() / ".cache" / "resnetlab"


# --------------------------------------------------------------------------------- IDX


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx(tmp_path, gz):
    folder = write_mnist(tmp_path / "mnist", gz)
    b = open_data(str(folder), log=quiet)
    assert b.in_chans == 1 and b.image_size == 28 and b.train.images.shape == (30, 1, 28, 28)
    assert b.classes == [str(i) for i in range(10)] and b.val_name == "test" and len(b.val) == 10
    assert b.train.labels[:12].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1] and len(b.mean) == 1


def test_fashion_mnist_names_and_single_file_path(tmp_path):
    folder = write_mnist(tmp_path / "fashion-mnist", gz=True)
    b = open_data(str(folder / "train-images-idx3-ubyte.gz"), log=quiet)
    assert b.classes[0] == "T-shirt/top" and b.classes[9] == "Ankle boot" and "Fashion-MNIST" in b.source


def test_idx_missing_labels_and_truncated(tmp_path):
    folder = write_mnist(tmp_path / "m", gz=False)
    (folder / "train-labels-idx1-ubyte").unlink()
    with pytest.raises(UserError, match="no matching labels file"):
        open_data(str(folder), log=quiet)
    folder = write_mnist(tmp_path / "m2", gz=False)
    img = folder / "train-images-idx3-ubyte"
    img.write_bytes(img.read_bytes()[:-100])
    with pytest.raises(UserError, match="truncated"):
        open_data(str(folder), log=quiet)


# ------------------------------------------------------------------------ image folders


def test_image_folder_modes_and_formats(tmp_path):
    root = tmp_path / "imgs"
    save_image(root / "b_cls" / "rgb.png")
    save_image(root / "b_cls" / "gray.png", mode="L")
    save_image(root / "a_cls" / "pal.png", mode="P")
    save_image(root / "a_cls" / "alpha.png", mode="RGBA")
    save_image(root / "a_cls" / "photo.JPG", fmt="JPEG")
    save_image(root / "a_cls" / "nested" / "deep.jpeg", mode="L")
    (root / "a_cls" / "notes.txt").write_text("not an image")
    (root / "empty_cls").mkdir()
    b = open_data(str(root), cache_dir=str(tmp_path / "c"), log=quiet)
    assert b.classes == ["a_cls", "b_cls"] and b.in_memory and b.in_chans == 3 and b.image_size == 8
    assert b.train.images.shape == (6, 3, 8, 8) and b.train.labels.tolist() == [0, 0, 0, 0, 1, 1]
    assert b.val is None and b.val_name == ""
    gray = b.train.images[4]  # b_cls/gray.png sorts before b_cls/rgb.png
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])


def test_image_folder_train_val_layouts(tmp_path):
    root = tmp_path / "ds"
    write_image_tree(root / "train", ["cat", "dog", "eel"], 4)
    write_image_tree(root / "val", ["dog", "cat"], 2)  # no "eel" images in val
    b = open_data(str(root), cache_dir=str(tmp_path / "c"), log=quiet)
    assert b.val_name == "val" and len(b.train) == 12 and len(b.val) == 4
    assert b.val.classes == ["cat", "dog", "eel"] and sorted(b.val.labels.tolist()) == [0, 0, 1, 1]
    (root / "val").rename(root / "test")
    b = open_data(str(root), cache_dir=str(tmp_path / "c"), log=quiet)
    assert b.val_name == "test" and len(b.val) == 4
    b = open_data(str(root), val_split=3, cache_dir=str(tmp_path / "c"), log=quiet)
    assert b.val_name == "val" and len(b.val) == 3 and len(b.train) == 9
    write_image_tree(root / "test", ["fox"], 1)
    with pytest.raises(UserError, match="'fox'"):
        open_data(str(root), cache_dir=str(tmp_path / "c"), log=quiet)


def test_folder_cache_written_and_reused(tmp_path, monkeypatch):
    root = write_image_tree(tmp_path / "imgs", ["x", "y"], 5)
    cache = tmp_path / "cache"
    first = open_data(str(root), cache_dir=str(cache), log=quiet)
    files = list((cache / "folders").glob("*.pt"))
    assert len(files) == 1
    blob = torch.load(files[0], weights_only=True)
    assert blob["images"].shape == (10, 3, 8, 8)

    def no_decode(*a, **k):
        raise AssertionError("decoded again despite the cache")

    monkeypatch.setattr(folder_mod, "decode_small", no_decode)
    log = Log()
    second = open_data(str(root), cache_dir=str(cache), log=log)
    assert torch.equal(first.train.images, second.train.images) and any("from cache" in line for line in log)
    # Any change to the file list invalidates the cache.
    save_image(root / "x" / "new.png", seed=7)
    with pytest.raises(AssertionError, match="decoded again"):
        open_data(str(root), cache_dir=str(cache), log=quiet)


def test_pool_decode_matches_serial(tmp_path, monkeypatch):
    root = write_image_tree(tmp_path / "imgs", ["x", "y", "z"], 6, ext=".jpg")
    serial = open_data(str(root), cache_dir=str(tmp_path / "c1"), log=quiet)
    monkeypatch.setattr(folder_mod, "POOL_MIN_FILES", 1)
    pooled = open_data(str(root), cache_dir=str(tmp_path / "c2"), log=quiet)
    assert torch.equal(serial.train.images, pooled.train.images)
    assert torch.equal(serial.train.labels, pooled.train.labels)


def test_corrupt_images_skipped_and_reported(tmp_path, capsys):
    root = write_image_tree(tmp_path / "imgs", ["x", "y"], 4)
    (root / "x" / "000.png").write_bytes(b"this is not a png")
    good = (root / "y" / "001.png").read_bytes()
    (root / "y" / "001.png").write_bytes(good[: len(good) // 2])
    b = open_data(str(root), cache_dir=str(tmp_path / "c"), log=quiet)
    assert len(b.train) == 6 and b.train.labels.tolist() == [0, 0, 0, 1, 1, 1]
    err = capsys.readouterr().err
    assert "skipped 2 unreadable images, e.g." in err and str(root / "x" / "000.png") in err
    open_data(str(root), cache_dir=str(tmp_path / "c"), log=quiet)  # from the cache: still reported
    assert "skipped 2 unreadable images" in capsys.readouterr().err


def test_all_images_unreadable(tmp_path):
    root = tmp_path / "imgs"
    (root / "x").mkdir(parents=True)
    (root / "x" / "a.jpg").write_bytes(b"garbage")
    with pytest.raises(UserError, match="none of the 1 images"):
        open_data(str(root), cache_dir=str(tmp_path / "c"), log=quiet)


def test_large_images_stream(tmp_path, capsys):
    root = write_image_tree(tmp_path / "big", ["a", "b"], 3, size=(96, 80), ext=".jpg")
    (root / "b" / "bad.jpg").write_bytes(b"broken")
    b = open_data(str(root), image_size=40, val_split=2, seed=1, log=quiet)
    assert not b.in_memory and isinstance(b.train, FolderDataset) and b.image_size == 40
    assert b.mean == T.IMAGENET_MEAN and b.std == T.IMAGENET_STD and b.in_chans == 3
    assert len(b.train) + len(b.val) == 7 and b.train.train and not b.val.train
    for ds in (b.train, b.val):
        for i in range(len(ds)):  # the corrupt file is replaced, never raised
            x, y = ds[i]
            assert x.shape == (3, 40, 40) and x.dtype == torch.uint8 and y in (0, 1)
    assert "unreadable image" in capsys.readouterr().err
    default = open_data(str(root), log=quiet)
    assert default.image_size == 224 and default.train[0][0].shape == (3, 224, 224)


def test_streaming_augmentation_is_seedable(tmp_path):
    root = write_image_tree(tmp_path / "big", ["a"], 2, size=(120, 90), ext=".jpg")
    ds = FolderDataset(root, train=True, image_size=32, seed=5)
    assert torch.equal(ds[0][0], ds[0][0])
    ds.set_epoch(1)
    other = ds[0][0]
    ds.set_epoch(0)
    assert not torch.equal(ds[0][0], other)
    ev = FolderDataset(root, train=False, image_size=32)
    assert torch.equal(ev[1][0], ev[1][0])


def test_size_mismatch_falls_back_to_streaming(tmp_path, monkeypatch):
    root = write_image_tree(tmp_path / "mixed", ["a", "b"], 2)
    save_image(root / "b" / "zz.png", size=(16, 16))
    monkeypatch.setattr(folder_mod, "PROBE_COUNT", 1)  # only the first image is probed
    log = Log()
    b = open_data(str(root), image_size=24, cache_dir=str(tmp_path / "c"), log=log)
    assert not b.in_memory and len(b.train) == 5 and any("zz.png is 16x16" in line for line in log)


# -------------------------------------------------------------------------- transforms


def test_transforms_shapes_and_determinism():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8))
    rrc = T.RandomResizedCrop(64)
    for s in range(20):
        left, top, right, bottom = rrc.params(400, 300, torch.Generator().manual_seed(s))
        w, h = right - left, bottom - top
        assert 0 <= left < right <= 400 and 0 <= top < bottom <= 300
        assert 0.08 * 120000 * 0.9 <= w * h and 3 / 4 * 0.9 <= w / h <= 4 / 3 * 1.1
    t = T.train_transform(64)
    a = T.pil_to_tensor(t(img, torch.Generator().manual_seed(3)))
    b = T.pil_to_tensor(t(img, torch.Generator().manual_seed(3)))
    assert a.shape == (3, 64, 64) and torch.equal(a, b)
    flip = T.RandomHorizontalFlip(p=1.0)(img)
    assert np.array_equal(np.asarray(flip), np.asarray(img)[:, ::-1])
    # Eval: shorter side to 64*256/224 = 73, centre 64x64 crop; a solid image stays solid.
    solid = Image.new("L", (500, 200), 77)
    out = T.pil_to_tensor(T.eval_transform(64)(solid))
    assert out.shape == (3, 64, 64) and int(out.min()) == int(out.max()) == 77


def test_jpeg_draft_decoding_keeps_output_size(tmp_path):
    path = tmp_path / "big.jpg"
    save_image(path, size=(1024, 768), fmt="JPEG")
    with Image.open(path) as im:
        out = T.eval_transform(64)(im)
        assert im.size[0] < 1024  # decoded at reduced scale
    assert out.size == (64, 64) and out.mode == "RGB"


# ------------------------------------------------------------------------------ splits


def test_stratified_val_split_sizes_and_seed(tmp_path):
    labels = torch.arange(200) % 10
    labels[:50] = 0  # class 0 is bigger: 65 images, the others 15
    a_val, a_train = stratified_pick(labels, 40, seed=1, keep_one=True)
    b_val, _ = stratified_pick(labels, 40, seed=1, keep_one=True)
    c_val, _ = stratified_pick(labels, 40, seed=2, keep_one=True)
    assert torch.equal(a_val, b_val) and not torch.equal(a_val, c_val)
    assert len(a_val) == 40 and len(a_train) == 160 and not set(a_val.tolist()) & set(a_train.tolist())
    per_class = torch.bincount(labels[a_val], minlength=10).tolist()
    assert per_class == [13] + [3] * 9  # 65 and 15 images: proportional shares of 40


def test_val_split_and_subset_on_cifar(tmp_path):
    folder = write_cifar10(tmp_path)
    b = open_data(str(folder), val_split=20, subset=30, seed=3, log=quiet)
    assert b.val_name == "val" and len(b.val) == 20 and len(b.train) == 30
    assert torch.bincount(b.val.labels, minlength=10).tolist() == [2] * 10
    assert torch.bincount(b.train.labels, minlength=10).tolist() == [3] * 10
    again = open_data(str(folder), val_split=20, subset=30, seed=3, log=quiet)
    assert torch.equal(b.val.images, again.val.images) and torch.equal(b.train.images, again.train.images)
    # Fewer held-out images than classes is fine: each comes from a different class.
    small = open_data(str(folder), val_split=3, log=quiet)
    assert len(small.val) == 3 and len(set(small.val.labels.tolist())) == 3
    assert len(open_data(str(folder), subset=1000, log=quiet).train) == 100


def test_val_split_too_large(tmp_path):
    folder = write_cifar10(tmp_path)
    with pytest.raises(UserError, match="val_split=100 must be smaller than the 100 training images"):
        open_data(str(folder), val_split=100, log=quiet)
    with pytest.raises(UserError, match="leave a class without training images"):
        open_data(str(folder), val_split=95, log=quiet)
    with pytest.raises(UserError, match=">= 0"):
        open_data(str(folder), val_split=-1, log=quiet)


def test_array_dataset_subset_and_items():
    ds = ArrayDataset(torch.arange(24, dtype=torch.uint8).view(6, 1, 2, 2), torch.arange(6) % 2, ["a", "b"])
    sub = ds.subset(torch.tensor([5, 1]))
    assert len(sub) == 2 and sub.labels.tolist() == [1, 1] and sub.images.is_contiguous()
    x, y = sub[0]
    assert x.tolist() == [[[20, 21], [22, 23]]] and y == 1 and sub.classes == ["a", "b"]


# ------------------------------------------------------------------------- user errors


def test_bad_inputs_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        open_data(str(tmp_path / "nope"), log=quiet)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="is empty"):
        open_data(str(tmp_path / "empty"), log=quiet)
    (tmp_path / "noimg" / "cls").mkdir(parents=True)
    (tmp_path / "noimg" / "cls" / "readme.txt").write_text("x")
    with pytest.raises(UserError, match="no images"):
        open_data(str(tmp_path / "noimg"), log=quiet)
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "data.csv").write_text("1,2")
    with pytest.raises(UserError, match="unrecognised data"):
        open_data(str(tmp_path / "odd"), log=quiet)
    (tmp_path / "file.zip").write_bytes(b"PK")
    with pytest.raises(UserError, match="unrecognised data file"):
        open_data(str(tmp_path / "file.zip"), log=quiet)
    save_image(tmp_path / "loose" / "a.png")
    with pytest.raises(UserError, match="one subfolder per class"):
        open_data(str(tmp_path / "loose"), log=quiet)
    (tmp_path / "notcifar.tar.gz").write_bytes(gzip.compress(b"not a tar"))
    with pytest.raises(UserError, match="truncated or corrupt"):
        open_data(str(tmp_path / "notcifar.tar.gz"), log=quiet)


# ----------------------------------------------------------------------- eval splits


def test_eval_split_maps_classes_by_name(tmp_path):
    root = tmp_path / "ds"
    write_image_tree(root / "train", ["cat", "dog"], 2)
    write_image_tree(root / "test", ["cat", "dog"], 3)
    ckpt_classes = ["dog", "cat", "bird"]  # another order, and a class the data lacks
    ds = load_eval_split(str(root), ckpt_classes, cache_dir=str(tmp_path / "c"), log=quiet)
    assert isinstance(ds, ArrayDataset) and len(ds) == 6 and ds.classes == ckpt_classes
    assert ds.labels.tolist() == [1, 1, 1, 0, 0, 0]  # cat/* first on disk, cat is index 1
    # A folder without splits is evaluated whole.
    ds = load_eval_split(str(root / "train"), ckpt_classes, cache_dir=str(tmp_path / "c"), log=quiet)
    assert len(ds) == 4
    with pytest.raises(UserError, match="'dog' .*not one of the 2 known classes"):
        load_eval_split(str(root), ["cat", "bird"], cache_dir=str(tmp_path / "c"), log=quiet)


def test_eval_split_cifar_and_streaming(tmp_path):
    folder = write_cifar10(tmp_path / "cifar")
    ds = load_eval_split(str(folder), list(reversed(CIFAR10_NAMES)), log=quiet)
    assert len(ds) == 20 and ds.labels[:3].tolist() == [9, 8, 7]
    big = write_image_tree(tmp_path / "big", ["b", "a"], 1, size=(100, 100), ext=".jpg")
    ds = load_eval_split(str(big), ["a", "b"], image_size=48, log=quiet)
    assert isinstance(ds, FolderDataset) and not ds.train and ds[0][0].shape == (3, 48, 48)
    assert ds.labels.tolist() == [0, 1]


# ------------------------------------------------------------------------------ sample


def test_bundled_sample_loads(tmp_path):
    b = open_data("sample", cache_dir=str(tmp_path / "c"), log=quiet)
    assert b.classes == CIFAR10_NAMES and b.in_memory and b.image_size == 32
    assert len(b.train) == 3000 and len(b.val) == 600 and b.val_name == "test"
    assert torch.bincount(b.train.labels).tolist() == [300] * 10
    train_names = {p.relative_to(SAMPLE_DIR / "train") for p in (SAMPLE_DIR / "train").rglob("*.jpg")}
    test_names = {p.relative_to(SAMPLE_DIR / "test") for p in (SAMPLE_DIR / "test").rglob("*.jpg")}
    assert not train_names & test_names
