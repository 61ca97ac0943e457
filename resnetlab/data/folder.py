"""Image-folder data: one subfolder per class of JPEG/PNG files (the ImageNet layout).

Two ways to serve a folder:

* **Small images** (all the same size, at most 64x64, e.g. CIFAR exported as JPEGs) are
  decoded once with a process pool into a uint8 tensor that is cached under
  ``<cache>/folders/<hash>.pt``.  Re-decoding 50,000 JPEGs every run would dominate a short
  experiment; loading the cached tensor takes a fraction of a second.
* **Large images** are streamed by :class:`FolderDataset`, which decodes, crops and flips
  per sample (see :mod:`resnetlab.data.transforms`).

Unreadable files never crash anything: they are skipped (in-memory path) or replaced by
another sample (streaming path) and reported on stderr with a path and a count.
"""

from __future__ import annotations

import copy
import hashlib
import multiprocessing as mp
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from ..errors import UserError
from ..io import atomic_write
from . import transforms as T

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
SMALL_MAX_SIDE = 64
# Images to open (header only) before deciding whether a folder is "small"; every image
# is verified again while decoding, so this only has to be representative, not exhaustive.
PROBE_COUNT = 16
# Below this many files a process pool costs more to start than it saves.
POOL_MIN_FILES = 2000
# Bump when the cache file layout changes so old caches are ignored rather than misread.
CACHE_VERSION = "resnetlab-folder-cache-v1"


def warn(message: str) -> None:
    """Print a one-line warning to stderr (kept separate from the caller's ``log``)."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


def is_image_file(name: str) -> bool:
    """True for file names with a supported image extension (case-insensitive)."""
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


@dataclass
class ScannedTree:
    """The image files found under a class-folder tree, in a fixed (sorted) order."""

    root: Path
    classes: list[str]  # class folder names, sorted; only folders that contain images
    relpaths: list[str]  # "class/sub/file.jpg", sorted
    labels: list[int]  # index into ``classes`` for each file
    sizes: list[int]
    mtimes: list[int]

    def paths(self) -> list[str]:
        """Absolute file paths in the same order as ``relpaths``."""
        root = str(self.root)
        return [os.path.join(root, p) for p in self.relpaths]

    def cache_key(self, mode: str) -> str:
        """Hash of the file list, sizes and mtimes: any added/edited/removed file changes it."""
        h = hashlib.sha256(f"{CACHE_VERSION}\n{mode}\n".encode())
        for rel, size, mtime in zip(self.relpaths, self.sizes, self.mtimes):
            h.update(f"{rel}\0{size}\0{mtime}\n".encode())
        return h.hexdigest()[:32]


def _walk_images(folder: str) -> list[tuple[str, int, int]]:
    """Return (path relative to ``folder``, size, mtime_ns) for every image below it."""
    found: list[tuple[str, int, int]] = []
    stack = [("", folder)]
    while stack:
        rel, path = stack.pop()
        try:
            entries = list(os.scandir(path))
        except OSError as exc:
            warn(f"cannot list {path}: {exc.strerror or exc}")
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue  # .DS_Store, .ipynb_checkpoints and friends
            sub = f"{rel}{entry.name}"
            try:
                if entry.is_dir():
                    stack.append((sub + "/", entry.path))
                elif entry.is_file() and is_image_file(entry.name):
                    st = entry.stat()
                    found.append((sub, st.st_size, st.st_mtime_ns))
            except OSError:
                continue  # vanished or unreadable entry; nothing useful to add
    return found


def class_dirs(root: Path) -> list[str]:
    """Sorted names of the visible subfolders of ``root``."""
    try:
        return sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    except OSError as exc:
        raise UserError(f"cannot read data folder {root}: {exc.strerror or exc}") from None


def has_loose_images(root: Path) -> bool:
    """True when ``root`` itself holds image files (not inside class folders)."""
    try:
        return any(e.is_file() and is_image_file(e.name) for e in os.scandir(root))
    except OSError:
        return False


def scan_tree(root: str | os.PathLike) -> ScannedTree:
    """List the images of a class-folder tree; class names are the sorted subfolder names.

    Subfolders without any image are ignored (they would be classes with no examples).
    """
    root = Path(root)
    classes: list[str] = []
    relpaths: list[str] = []
    labels: list[int] = []
    sizes: list[int] = []
    mtimes: list[int] = []
    for name in class_dirs(root):
        files = sorted(_walk_images(str(root / name)))
        if not files:
            continue
        label = len(classes)
        classes.append(name)
        for rel, size, mtime in files:
            relpaths.append(f"{name}/{rel}")
            labels.append(label)
            sizes.append(size)
            mtimes.append(mtime)
    if not relpaths:
        if has_loose_images(root):
            raise UserError(
                f"{root} holds images directly; put them in one subfolder per class "
                f"(e.g. {root}/cat/1.jpg, {root}/dog/2.jpg)"
            )
        raise UserError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in the class folders of {root}")
    return ScannedTree(root, classes, relpaths, labels, sizes, mtimes)


def probe_small_size(tree: ScannedTree) -> tuple[int, int] | None:
    """Return (width, height) when a sample of the images says the folder is "small".

    Small = every probed image has the same size with both sides <= 64.  Reading a
    header does not decode pixels, so this is cheap even for huge photos.  A folder in
    which no image can be opened at all is a UserError.
    """
    paths = tree.paths()
    step = max(1, len(paths) // PROBE_COUNT)
    probes = paths[::step][:PROBE_COUNT]
    sizes = set()
    first_error: tuple[str, str] | None = None
    # Past the evenly spread probes, keep looking only until one image opens.
    for i, path in enumerate([*probes, *paths]):
        if i >= len(probes) and sizes:
            break
        try:
            with Image.open(path) as im:
                sizes.add(im.size)
        except Exception as exc:  # noqa: BLE001 - corrupt files are reported when decoding
            first_error = first_error or (path, f"{type(exc).__name__}: {exc}".splitlines()[0])
    if not sizes:
        assert first_error is not None
        raise UserError(
            f"none of the {len(paths):,} images under {tree.root} could be read, "
            f"e.g. {first_error[0]}: {first_error[1]}"
        )
    if len(sizes) != 1:
        return None
    ((w, h),) = sizes
    return (w, h) if max(w, h) <= SMALL_MAX_SIDE else None


def _decode_chunk(args: tuple[int, list[str], tuple[int, int]]):
    """Decode a list of images to CHW RGB bytes (runs in pool workers: Pillow/numpy only).

    Returns (chunk offset, pixel bytes of the good images concatenated, indices of the good
    images, [(index, reason)] of unreadable ones, [(index, (w, h))] of wrong-sized ones).
    """
    offset, paths, (w, h) = args
    out = np.empty((len(paths), 3, h, w), dtype=np.uint8)
    good: list[int] = []
    bad: list[tuple[int, str]] = []
    wrong: list[tuple[int, tuple[int, int]]] = []
    for i, path in enumerate(paths):
        try:
            with Image.open(path) as im:
                if im.size != (w, h):
                    wrong.append((i, im.size))
                    continue
                arr = np.asarray(T.to_rgb(im), dtype=np.uint8)
        except Exception as exc:  # noqa: BLE001 - any decoder failure means "unreadable"
            bad.append((i, f"{type(exc).__name__}: {exc}".splitlines()[0]))
            continue
        # HWC -> CHW here, in parallel, rather than as one big copy in the parent.
        out[len(good)] = arr.transpose(2, 0, 1)
        good.append(i)
    return offset, out[: len(good)].tobytes(), good, bad, wrong


def _worker_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def decode_small(
    paths: Sequence[str], size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor, list[tuple[str, str]], tuple[str, tuple[int, int]] | None]:
    """Decode equally-sized images into an N x 3 x H x W uint8 tensor.

    Returns (images, kept indices into ``paths``, [(path, reason)] for unreadable files,
    first (path, size) that did not match ``size`` or None).
    """
    w, h = size
    n = len(paths)
    images = np.empty((n, 3, h, w), dtype=np.uint8)
    kept: list[int] = []
    bad: list[tuple[str, str]] = []
    mismatch = None

    def collect(result) -> None:
        nonlocal mismatch
        offset, data, good, bad_i, wrong = result
        pos = len(kept)
        images[pos : pos + len(good)] = np.frombuffer(data, dtype=np.uint8).reshape(-1, 3, h, w)
        kept.extend(offset + i for i in good)
        bad.extend((paths[offset + i], reason) for i, reason in bad_i)
        if wrong and mismatch is None:
            i, got = wrong[0]
            mismatch = (paths[offset + i], got)

    workers = _worker_count()
    if n < POOL_MIN_FILES or workers == 1:
        collect(_decode_chunk((0, list(paths), size)))
    else:
        # A few chunks per worker keeps every core busy to the end without paying per-image
        # IPC overhead; imap (ordered) lets the parent copy results while workers decode.
        n_chunks = workers * 8
        bounds = [n * k // n_chunks for k in range(n_chunks + 1)]
        chunks = [(a, list(paths[a:b]), size) for a, b in zip(bounds, bounds[1:]) if b > a]
        # fork keeps start-up instant (spawn would re-import torch in every worker); the
        # workers only use Pillow and numpy, so forking a process that imported torch is safe.
        methods = mp.get_all_start_methods()
        ctx = mp.get_context("fork" if "fork" in methods else None)
        with ctx.Pool(min(workers, len(chunks))) as pool:
            for result in pool.imap(_decode_chunk, chunks, chunksize=1):
                collect(result)
    out = torch.from_numpy(images[: len(kept)])
    # Rows past len(kept) belong to skipped files; copy so that torch.save (which writes
    # whole storages) does not store them too.
    out = out.clone() if len(kept) < n else out
    return out, torch.tensor(kept, dtype=torch.int64), bad, mismatch


def report_unreadable(count: int, path: str, reason: str) -> None:
    """Warn once about skipped files: how many, with one of them as an example."""
    noun = "image" if count == 1 else "images"
    warn(f"skipped {count} unreadable {noun}, e.g. {path}: {reason}")


def load_small_tree(
    tree: ScannedTree,
    size: tuple[int, int],
    cache_dir: Path,
    log: Callable[[str], None] = print,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Return (images N x 3 x H x W uint8, labels int64) for a small-image tree.

    Uses ``<cache_dir>/folders/<hash>.pt`` when present, otherwise decodes and writes it.
    Returns None when decoding finds an image of another size: the caller then streams.
    """
    cache_file = cache_dir / "folders" / f"{tree.cache_key('RGB')}.pt"
    all_labels = torch.tensor(tree.labels, dtype=torch.int64)
    paths = tree.paths()
    if cache_file.is_file():
        try:
            blob = torch.load(cache_file, weights_only=True)
            images, kept = blob["images"], blob["kept"]
            if images.dtype == torch.uint8 and images.shape[0] == kept.shape[0]:
                skipped = len(paths) - len(kept)
                if skipped:
                    keep = set(kept.tolist())
                    first = next(i for i in range(len(paths)) if i not in keep)
                    report_unreadable(skipped, paths[first], "could not be decoded when the cache was built")
                log(f"loaded {len(kept):,} decoded images of {tree.root} from cache {cache_file}")
                return images, all_labels[kept]
        except Exception as exc:  # noqa: BLE001 - a damaged cache is rebuilt, not fatal
            warn(f"ignoring unreadable cache {cache_file}: {exc}")

    workers = _worker_count() if len(paths) >= POOL_MIN_FILES else 1
    log(
        f"decoding {len(paths):,} images of {tree.root} with {workers} process"
        f"{'es' if workers > 1 else ''} (first run; cached afterwards)"
    )
    start = time.perf_counter()
    images, kept, bad, mismatch = decode_small(paths, size)
    if mismatch is not None:
        path, (w, h) = mismatch
        log(
            f"{path} is {w}x{h} but other images are {size[0]}x{size[1]}; "
            "streaming the folder instead of caching it in memory"
        )
        return None
    if len(kept) == 0:
        path, reason = bad[0]
        raise UserError(f"none of the {len(paths):,} images under {tree.root} could be read, e.g. {path}: {reason}")
    if bad:
        report_unreadable(len(bad), *bad[0])
    elapsed = time.perf_counter() - start
    try:
        with atomic_write(cache_file) as tmp:  # a crash never leaves a half-written cache
            torch.save({"images": images, "kept": kept}, tmp)
        where = f"cached to {cache_file}"
    except OSError as exc:
        where = f"not cached ({exc.strerror or exc})"
    log(f"decoded {len(kept):,} images in {elapsed:.1f} s, {where}")
    return images, all_labels[kept]


class FolderDataset(torch.utils.data.Dataset):
    """Streams images of a class-folder tree as (uint8 3 x S x S tensor, label).

    ``train=True`` applies RandomResizedCrop + horizontal flip, ``train=False`` the
    resize-and-centre-crop evaluation transform, both to ``image_size``.  Class names are
    the sorted subfolder names, or ``classes`` when given: folders are then mapped to those
    names (so a validation tree with a missing class keeps the training labels).

    Randomness: with ``seed=None`` the transform uses torch's global generator, which
    ``DataLoader`` seeds differently per worker from the main process' seed.  With an int
    ``seed`` each sample's randomness is derived from (seed, epoch, index), see
    :meth:`set_epoch`, which is reproducible regardless of workers.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        train: bool,
        image_size: int = 224,
        classes: list[str] | None = None,
        seed: int | None = None,
        tree: ScannedTree | None = None,
    ) -> None:
        tree = tree or scan_tree(root)
        self.root = Path(root)
        self.samples: list[str] = tree.paths()
        if classes is None:
            self.classes = list(tree.classes)
            self.labels = torch.tensor(tree.labels, dtype=torch.int64)
        else:
            self.classes = list(classes)
            self.labels = map_labels(tree.classes, tree.labels, classes, str(root))
        self.image_size = int(image_size)
        self.seed = seed
        self.epoch = 0
        self.train = train
        self._bad: dict[str, str] = {}

    @property
    def train(self) -> bool:
        """Whether the training (random) or evaluation (deterministic) transform is used."""
        return self._train

    @train.setter
    def train(self, value: bool) -> None:
        self._train = bool(value)
        size = self.image_size
        self.transform = T.train_transform(size) if self._train else T.eval_transform(size)

    def __len__(self) -> int:
        return len(self.samples)

    def set_epoch(self, epoch: int) -> None:
        """Change the augmentation stream when ``seed`` is set (no effect otherwise)."""
        self.epoch = int(epoch)

    def _generator(self, index: int) -> torch.Generator | None:
        if self.seed is None:
            return None
        g = torch.Generator()
        g.manual_seed((self.seed * 1_000_003 + self.epoch) * 1_000_000_007 + index)
        return g

    def load(self, index: int) -> torch.Tensor:
        """Decode and transform one image; raises on an unreadable file."""
        with Image.open(self.samples[index]) as im:
            return T.pil_to_tensor(self.transform(im, self._generator(index)))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        n = len(self.samples)
        # One corrupt file must not end an epoch: fall through to the next readable file.
        for k in range(min(n, 50)):
            i = (index + k) % n
            path = self.samples[i]
            if path in self._bad:
                continue
            try:
                return self.load(i), int(self.labels[i])
            except Exception as exc:  # noqa: BLE001 - any decoder failure means "unreadable"
                reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
                self._bad[path] = reason
                # Counts are per process (each DataLoader worker has its own copy).
                warn(
                    f"unreadable image {path}: {reason}; replaced by another sample "
                    f"({len(self._bad)} unreadable so far in this process)"
                )
        raise UserError(f"too many unreadable images in {self.root}; last: {path}")

    def seeded(self, seed: int) -> "FolderDataset":
        """A copy whose augmentation is derived from (``seed``, epoch, index) instead of the global generator."""
        out = copy.copy(self)
        out.seed = int(seed)
        return out

    def subset(self, idx: torch.Tensor, *, train: bool | None = None) -> "FolderDataset":
        """A copy holding only the samples at ``idx`` (optionally with the other transform)."""
        out = copy.copy(self)
        idx_list = idx.tolist()
        out.samples = [self.samples[i] for i in idx_list]
        out.labels = self.labels[idx].clone()
        out._bad = {}
        out.train = self.train if train is None else train
        return out


def map_labels(
    folder_classes: Sequence[str], labels: Sequence[int] | torch.Tensor, classes: Sequence[str], where: str
) -> torch.Tensor:
    """Translate labels indexing ``folder_classes`` to indices into ``classes``, by name."""
    index = {name: i for i, name in enumerate(classes)}
    unknown = [c for c in folder_classes if c not in index]
    if unknown:
        shown = ", ".join(repr(c) for c in unknown[:5])
        more = f" (+{len(unknown) - 5} more)" if len(unknown) > 5 else ""
        raise UserError(f"class {shown}{more} in {where} is not one of the {len(classes)} known classes")
    table = torch.tensor([index[c] for c in folder_classes], dtype=torch.int64)
    return table[torch.as_tensor(labels, dtype=torch.int64)]
