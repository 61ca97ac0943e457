"""Turn ``--data PATH_OR_NAME`` into train/validation datasets.

Accepted: the names ``cifar10`` / ``cifar100`` (cached under ``$RESNETLAB_DATA``, default
``~/.cache/resnetlab``, downloaded when missing), ``sample`` (the bundled CIFAR-10
sample), ``fashion-mnist`` (Debian's dataset-fashion-mnist package); a CIFAR python
archive or extracted folder; a folder of MNIST IDX files; an image folder with one
subfolder per class, optionally split into ``train/`` and ``val/`` or ``test/``.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..errors import UserError
from . import formats
from .folder import (
    FolderDataset,
    class_dirs,
    has_loose_images,
    load_small_tree,
    map_labels,
    probe_small_size,
    scan_tree,
)
from .transforms import IMAGENET_MEAN, IMAGENET_STD

SAMPLE_DIR = Path(__file__).resolve().parent / "sample" / "cifar10-sample"
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
DEFAULT_STREAM_SIZE = 224
# Folder names that mark a split layout (root/train/<class>/..., root/val/<class>/...).
EVAL_SPLIT_DIRS = ("val", "test")
NAMES_HELP = "cifar10, cifar100, sample, fashion-mnist"


@dataclass
class ArrayDataset:
    """Images held in memory: uint8 N x C x H x W, int64 labels, class names in label order."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])

    def subset(self, idx: torch.Tensor) -> "ArrayDataset":
        """A new dataset with the rows at ``idx`` (copied, contiguous)."""
        idx = torch.as_tensor(idx, dtype=torch.int64)
        # index_select is several times faster than fancy indexing for big uint8 batches.
        images = torch.index_select(self.images, 0, idx)
        return ArrayDataset(images, torch.index_select(self.labels, 0, idx), list(self.classes))


@dataclass
class DataBundle:
    """Everything training needs to know about the data; see :func:`open_data`."""

    train: ArrayDataset | FolderDataset
    val: ArrayDataset | FolderDataset | None
    val_name: str  # "val" (held out / val folder), "test" (official test split) or ""
    classes: list[str]
    in_chans: int
    image_size: int
    mean: tuple[float, ...] | list  # per channel, or a C x H x W mean image (see with_normalization)
    std: tuple[float, ...]
    in_memory: bool
    source: str


# ------------------------------------------------------------------------ resolution


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The data cache folder: ``cache_dir``, else ``$RESNETLAB_DATA``, else ~/.cache/resnetlab."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    env = os.environ.get("RESNETLAB_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "resnetlab"


def _name_key(spec: str) -> str:
    return spec.strip().lower().replace("-", "").replace("_", "")


@dataclass
class _Found:
    """A recognised data source before it is turned into datasets."""

    title: str
    location: str
    arrays: formats.ArraySplits | None = None  # array formats (CIFAR, IDX)
    folder_train: Path | None = None  # image folders
    folder_eval: Path | None = None
    folder_eval_name: str = ""


def _default_spec(cache: Path, log: Callable[[str], None]) -> str:
    spec = formats.CIFAR_SPECS["cifar10"]
    if formats.cifar_in_cache(spec, cache):
        log(f"data: CIFAR-10 from the cache at {cache} (no --data given)")
        return "cifar10"
    if formats.can_download(spec.url):
        log(f"data: CIFAR-10, downloading it to {cache} (no --data given)")
        return "cifar10"
    log(f"data: the bundled CIFAR-10 sample (no --data given; CIFAR-10 is not in {cache} and could not be downloaded)")
    return str(SAMPLE_DIR)


def _find(spec: str, cache: Path, want: tuple[str, ...], log: Callable[[str], None]) -> _Found:
    """Recognise ``spec`` (a path or a name) and read array formats; UserError otherwise."""
    path = Path(spec).expanduser()
    if not path.exists():
        key = _name_key(spec)
        if key in formats.CIFAR_SPECS:
            cspec = formats.CIFAR_SPECS[key]
            folder = formats.ensure_cifar(cspec, cache, log=log)
            return _Found(cspec.title, str(folder), arrays=formats.load_cifar_folder(folder, cspec, want))
        if key in ("sample", "cifar10sample"):
            path = SAMPLE_DIR
        elif key == "fashionmnist":
            if not DEBIAN_FASHION_MNIST.is_dir():
                raise UserError(
                    f"fashion-mnist is not installed at {DEBIAN_FASHION_MNIST}; install Debian's "
                    "dataset-fashion-mnist package or pass --data FOLDER_WITH_IDX_FILES"
                )
            path = DEBIAN_FASHION_MNIST
        else:
            raise UserError(
                f"data path {spec} does not exist (give a folder, a CIFAR archive, or one of: {NAMES_HELP})"
            )

    if path.is_file():
        if formats.is_archive_name(path):
            arrays = formats.load_cifar_archive(path, want)
            return _Found(arrays.title, str(path), arrays=arrays)
        if "idx" in path.name.lower() and formats.has_idx_files(path.parent):
            path = path.parent
        else:
            raise UserError(
                f"unrecognised data file {path}: expected a CIFAR python archive (.tar.gz), "
                "an MNIST IDX file, or a folder"
            )
    if not path.is_dir():
        raise UserError(f"data path {path} is neither a file nor a folder")

    cspec = formats.detect_cifar_folder(path)
    if cspec is not None:
        return _Found(cspec.title, str(path), arrays=formats.load_cifar_folder(path, cspec, want))
    if formats.has_idx_files(path):
        arrays = formats.load_idx_folder(path, want)
        return _Found(arrays.title, str(path), arrays=arrays)
    # A download folder that holds the official folder or archive one level down.
    for cspec in formats.CIFAR_SPECS.values():
        inner = path / cspec.folder
        if inner.is_dir() and formats.detect_cifar_folder(inner) is cspec:
            return _Found(cspec.title, str(inner), arrays=formats.load_cifar_folder(inner, cspec, want))
        if (path / cspec.archive).is_file():
            arrays = formats.load_cifar_archive(path / cspec.archive, want)
            return _Found(arrays.title, str(path / cspec.archive), arrays=arrays)

    try:
        entries = [e for e in os.scandir(path) if not e.name.startswith(".")]
    except OSError as exc:
        raise UserError(f"cannot read data folder {path}: {exc.strerror or exc}") from None
    if not entries:
        raise UserError(f"data folder {path} is empty")
    dirs = class_dirs(path)
    if not dirs:
        if has_loose_images(path):
            raise UserError(f"{path} holds images directly; put them in one subfolder per class")
        raise UserError(
            f"unrecognised data in {path}: expected CIFAR python files, MNIST IDX files, "
            "or one subfolder per class of JPEG/PNG images"
        )
    title = "bundled CIFAR-10 sample" if path.resolve() == SAMPLE_DIR else "image folder"
    if "train" in dirs and set(dirs) <= {"train", *EVAL_SPLIT_DIRS} and class_dirs(path / "train"):
        eval_name = next((n for n in EVAL_SPLIT_DIRS if n in dirs and class_dirs(path / n)), "")
        return _Found(
            title, str(path), folder_train=path / "train",
            folder_eval=path / eval_name if eval_name else None, folder_eval_name=eval_name,
        )  # fmt: skip
    return _Found(title, str(path), folder_train=path)


# --------------------------------------------------------------------------- splitting


def _allocate(counts: list[int], n: int, caps: list[int]) -> list[int]:
    """Split ``n`` over classes proportionally to ``counts`` (largest remainder), within ``caps``."""
    total = sum(counts)
    quotas = [n * c / total for c in counts]
    alloc = [min(int(q), cap) for q, cap in zip(quotas, caps)]
    # Hand out what is left one at a time, biggest fractional remainder (then most room) first.
    order = sorted(range(len(counts)), key=lambda k: (-(quotas[k] - int(quotas[k])), -(caps[k] - alloc[k]), k))
    left = n - sum(alloc)
    while left > 0:
        progressed = False
        for k in order:
            if left and alloc[k] < caps[k]:
                alloc[k] += 1
                left -= 1
                progressed = True
        if not progressed:
            break
    return alloc


def stratified_pick(labels: torch.Tensor, n: int, seed: int, keep_one: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick ``n`` indices stratified by label, seeded; return (picked, rest), both sorted.

    With ``keep_one`` every class keeps at least one image in ``rest`` (so a held-out
    validation set never removes a class from training).  Classes get a share of ``n``
    proportional to their size, so ``n`` smaller than the number of classes is fine.
    """
    labels = labels.to(torch.int64)
    counts = [c for c in torch.bincount(labels).tolist() if c]
    # A stable sort groups each class's indices, in their original order, contiguously.
    members = list(torch.split(torch.argsort(labels, stable=True), counts))
    caps = [c - 1 if keep_one else c for c in counts]
    alloc = _allocate(counts, n, caps)
    g = torch.Generator().manual_seed(int(seed))
    picked, rest = [], []
    for idx, k in zip(members, alloc):
        perm = idx[torch.randperm(len(idx), generator=g)]
        picked.append(perm[:k])
        rest.append(perm[k:])
    return torch.sort(torch.cat(picked)).values, torch.sort(torch.cat(rest)).values


def _take(ds: ArrayDataset | FolderDataset, idx: torch.Tensor, *, train: bool | None = None):
    if isinstance(ds, FolderDataset):
        return ds.subset(idx, train=train)
    return ds.subset(idx)


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 N x C x H x W images on the 0..1 scale."""
    # A 256-bin histogram per channel gives exact sums without a float copy of the data
    # (which for CIFAR would be 600 MB) and is an order of magnitude faster.
    values = torch.arange(256, dtype=torch.float64)
    means, stds = [], []
    for c in range(images.shape[1]):
        hist = torch.bincount(images[:, c].reshape(-1), minlength=256).to(torch.float64)
        n = hist.sum()
        mean = (hist * values).sum() / n
        var = (hist * (values - mean) ** 2).sum() / n
        means.append(float(mean) / 255)
        stds.append(float(var.sqrt()) / 255)
    return tuple(means), tuple(stds)


def pixel_mean(images: torch.Tensor, chunk: int = 4096) -> list[list[list[float]]]:
    """The mean image (C x H x W, 0..1 scale) of uint8 N x C x H x W images, as nested lists.

    He et al. 2015, Sec. 4.2 (CIFAR-10): "The network inputs are 32x32 images, with the
    per-pixel mean subtracted." Summed in float64 chunks so no float copy of the data is made.
    """
    total = torch.zeros(images.shape[1:], dtype=torch.float64)
    for start in range(0, images.shape[0], chunk):
        total += images[start:start + chunk].to(torch.float64).sum(0)
    return (total / (255.0 * images.shape[0])).tolist()


def with_normalization(data: DataBundle, kind: str) -> DataBundle:
    """``data`` normalised per channel (mean/std, the default) or by its per-pixel mean image (``"pixel-mean"``).

    The per-pixel mean is the 2015 paper's CIFAR preprocessing (Sec. 4.2): subtract the mean
    image of the training images, no division; it needs images held in memory at one size.
    """
    if kind == "channel":
        return data
    if kind != "pixel-mean":
        raise UserError(f"normalize must be 'channel' or 'pixel-mean', got {kind!r}")
    if not data.in_memory:
        raise UserError("normalize='pixel-mean' needs images held in memory at one size (CIFAR-size data); "
                        "use --normalize channel for streamed image folders")
    assert isinstance(data.train, ArrayDataset)
    mean = pixel_mean(data.train.images)
    return dataclasses.replace(data, mean=mean, std=tuple(1.0 for _ in range(data.in_chans)))


# ------------------------------------------------------------------------- folder data


def _folder_datasets(
    found: _Found, cache: Path, use_eval: bool, image_size: int | None, log: Callable[[str], None]
) -> tuple[ArrayDataset | FolderDataset, ArrayDataset | FolderDataset | None, bool]:
    """Build (train, eval-or-None, in_memory) for an image-folder source."""
    assert found.folder_train is not None
    train_tree = scan_tree(found.folder_train)
    eval_tree = scan_tree(found.folder_eval) if use_eval and found.folder_eval else None
    classes = train_tree.classes
    if eval_tree is not None:
        # Fail early (before decoding anything) on a val class that training never saw.
        map_labels(eval_tree.classes, [], classes, str(found.folder_eval))
    size = probe_small_size(train_tree)
    if size is not None:
        train = load_small_tree(train_tree, size, cache, log)
        ev = load_small_tree(eval_tree, size, cache, log) if train is not None and eval_tree else None
        if train is not None and (eval_tree is None or ev is not None):
            train_ds = ArrayDataset(train[0], train[1], list(classes))
            ev_ds = None
            if ev is not None:
                ev_labels = map_labels(eval_tree.classes, ev[1], classes, str(found.folder_eval))
                ev_ds = ArrayDataset(ev[0], ev_labels, list(classes))
            if image_size and image_size != size[1]:
                log(f"note: image_size={image_size} ignored; these {size[0]}x{size[1]} images are used at native size")
            return train_ds, ev_ds, True
    crop = image_size or DEFAULT_STREAM_SIZE
    train_ds = FolderDataset(found.folder_train, train=True, image_size=crop, tree=train_tree)
    ev_ds = None
    if eval_tree is not None:
        ev_ds = FolderDataset(found.folder_eval, train=False, image_size=crop, classes=classes, tree=eval_tree)
    return train_ds, ev_ds, False


# ---------------------------------------------------------------------------- public


def open_data(
    spec: str | None,
    *,
    val_split: int = 0,
    subset: int = 0,
    seed: int = 0,
    image_size: int | None = None,
    cache_dir: str | None = None,
    log: Callable[[str], None] = print,
) -> DataBundle:
    """Load the data named by ``spec`` (see the module docstring) for training.

    ``val_split=N`` holds out N training images (stratified by class, seeded) as ``val``;
    otherwise an official test split, or an image folder's ``val/``/``test/`` folder, is
    ``val``.  ``subset=N`` then keeps N of the training images (stratified, seeded).
    ``image_size`` is the crop size of streamed (large-image) folders, default 224.
    """
    if val_split < 0 or subset < 0:
        raise UserError(f"val_split and subset must be >= 0 (got val_split={val_split}, subset={subset})")
    cache = cache_root(cache_dir)
    if spec is None or not str(spec).strip():
        spec = _default_spec(cache, log)
    want = ("train",) if val_split else ("train", "test")
    found = _find(str(spec), cache, want, log)

    if found.arrays is not None:
        arrays = found.arrays
        train: ArrayDataset | FolderDataset = ArrayDataset(*arrays.splits["train"], list(arrays.classes))
        val = (
            ArrayDataset(*arrays.splits["test"], list(arrays.classes))
            if "test" in arrays.splits and not val_split
            else None
        )
        val_name = "test" if val is not None else ""
        in_memory = True
    else:
        train, val, in_memory = _folder_datasets(found, cache, not val_split, image_size, log)
        val_name = found.folder_eval_name if val is not None else ""
    classes = list(train.classes)

    n_train = len(train)
    if val_split:
        n_classes = int((torch.bincount(train.labels) > 0).sum())
        if val_split >= n_train:
            raise UserError(
                f"val_split={val_split} must be smaller than the {n_train:,} training images of {found.location}"
            )
        if val_split > n_train - n_classes:
            raise UserError(
                f"val_split={val_split} would leave a class without training images "
                f"({n_train:,} images in {n_classes} classes; use at most {n_train - n_classes:,})"
            )
        val_idx, train_idx = stratified_pick(train.labels, val_split, seed, keep_one=True)
        val = _take(train, val_idx, train=False)
        train = _take(train, train_idx)
        val_name = "val"
    if subset:
        if subset >= len(train):
            log(f"note: subset={subset} is not smaller than the {len(train):,} training images; using all of them")
        else:
            keep, _ = stratified_pick(train.labels, subset, seed, keep_one=False)
            train = _take(train, keep)

    if in_memory:
        assert isinstance(train, ArrayDataset)
        in_chans, height = train.images.shape[1], train.images.shape[2]
        mean, std = channel_stats(train.images)
        size = int(height)
        if image_size and image_size != size and found.arrays is not None:
            log(f"note: image_size={image_size} ignored; {found.title} images are used at their native {size}x{size}")
    else:
        in_chans, size = 3, int(train.image_size)
        mean, std = IMAGENET_MEAN, IMAGENET_STD

    parts = [f"{len(train):,} train"]
    if val is not None:
        if val_split:
            how = f"held out, seed {seed}"
        else:
            how = "official test split" if found.arrays is not None else f"{val_name}/ folder"
        parts.append(f"{len(val):,} {val_name} ({how})")
    if subset and subset < n_train:
        parts[0] += f" (subset, seed {seed})"
    mode = f"in memory, {in_chans}x{size}x{size}" if in_memory else f"streamed, {size}x{size} crops"
    source = f"{found.title} at {found.location}: {' / '.join(parts)}, {len(classes)} classes, {mode}"
    return DataBundle(
        train=train, val=val, val_name=val_name, classes=classes, in_chans=int(in_chans), image_size=size,
        mean=tuple(float(m) for m in mean), std=tuple(float(s) for s in std), in_memory=in_memory, source=source,
    )  # fmt: skip


def load_eval_split(
    spec: str,
    classes: list[str],
    *,
    image_size: int | None = None,
    cache_dir: str | None = None,
    log: Callable[[str], None] = print,
) -> ArrayDataset | FolderDataset:
    """Load the evaluation images of ``spec`` with labels indexing ``classes`` (by name).

    Uses the source's test split (or an image folder's ``val/``/``test/``) when it has one,
    else all of it.  A class of the data that ``classes`` lacks is a UserError naming it.
    ``image_size`` is the crop size for streamed folders (pass the training size).
    """
    cache = cache_root(cache_dir)
    found = _find(spec, cache, ("test",), log)
    if found.arrays is not None:
        arrays = found.arrays
        if "test" not in arrays.splits:
            arrays = _find(spec, cache, ("train",), log).arrays
            assert arrays is not None
        split = "test" if "test" in arrays.splits else "train"
        images, labels = arrays.splits[split]
        mapped = map_labels(arrays.classes, labels, classes, found.location)
        log(f"evaluating on {found.title} {split} split at {found.location}: {len(mapped):,} images")
        return ArrayDataset(images, mapped, list(classes))

    folder = found.folder_eval or found.folder_train
    assert folder is not None
    tree = scan_tree(folder)
    map_labels(tree.classes, [], classes, str(folder))  # unknown class: fail before decoding
    size = probe_small_size(tree)
    if size is not None:
        loaded = load_small_tree(tree, size, cache, log)
        if loaded is not None:
            log(f"evaluating on {folder}: {len(loaded[1]):,} images")
            return ArrayDataset(loaded[0], map_labels(tree.classes, loaded[1], classes, str(folder)), list(classes))
    crop = image_size or DEFAULT_STREAM_SIZE
    log(f"evaluating on {folder}: {len(tree.relpaths):,} images, streamed at {crop}x{crop}")
    return FolderDataset(folder, train=False, image_size=crop, classes=list(classes), tree=tree)
