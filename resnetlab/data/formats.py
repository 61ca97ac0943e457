"""Readers for the array-shaped data formats: CIFAR-10/100 (python version) and MNIST IDX.

Also the CIFAR download (urllib, temp file + rename, MD5 check) and a safe tar extraction.
Everything a user can get wrong ends in a one-line :class:`~resnetlab.errors.UserError`.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib
import io
import os
import pickle
import re
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable

import numpy as np
import torch

from ..errors import UserError
from ..io import atomic_write

# --------------------------------------------------------------------------- CIFAR


@dataclass(frozen=True)
class CifarSpec:
    """Where a CIFAR variant comes from and how its python-format files are laid out."""

    name: str  # the --data name, e.g. "cifar10"
    title: str  # for messages, e.g. "CIFAR-10"
    archive: str  # official archive file name
    folder: str  # folder the archive extracts to
    url: str
    md5: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    label_key: bytes
    names_key: bytes

    def files(self) -> tuple[str, ...]:
        """Every file that a complete extracted folder holds."""
        return (*self.train_files, *self.test_files, self.meta_file)


CIFAR_SPECS: dict[str, CifarSpec] = {
    "cifar10": CifarSpec(
        name="cifar10",
        title="CIFAR-10",
        archive="cifar-10-python.tar.gz",
        folder="cifar-10-batches-py",
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test_files=("test_batch",),
        meta_file="batches.meta",
        label_key=b"labels",
        names_key=b"label_names",
    ),
    "cifar100": CifarSpec(
        name="cifar100",
        title="CIFAR-100",
        archive="cifar-100-python.tar.gz",
        folder="cifar-100-python",
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85",
        train_files=("train",),
        test_files=("test",),
        meta_file="meta",
        label_key=b"fine_labels",
        names_key=b"fine_label_names",
    ),
}

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")


@dataclass
class ArraySplits:
    """What a format reader returns: uint8 N x C x H x W images and int64 labels per split."""

    title: str
    classes: list[str]
    splits: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    location: str = ""


class _CifarUnpickler(pickle.Unpickler):
    """Unpickler that only builds the objects CIFAR batches consist of.

    The batches are pickles (the official format), and pickle can run arbitrary code; a
    file in a folder a user points at should not be able to.  CIFAR batches need nothing
    but dicts, lists, bytes and numpy arrays, so every other global is refused.
    """

    _ALLOWED = {
        ("_codecs", "encode"),  # how Python 3 protocol-2 pickles spell bytes
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("multiarray", "_reconstruct"),
        ("multiarray", "scalar"),
        ("numeric", "_frombuffer"),  # numpy arrays pickled with protocol 5
    }

    def find_class(self, module: str, name: str):  # noqa: D102 - pickle API
        short = module.rsplit(".", 1)[-1]
        if module.startswith(("numpy.core.", "numpy._core.")) and (short, name) in self._ALLOWED:
            # numpy 2 moved numpy.core to numpy._core; old pickles still name numpy.core.
            for prefix in ("numpy._core.", "numpy.core."):
                try:
                    return getattr(importlib.import_module(prefix + short), name)
                except (ImportError, AttributeError):
                    continue
        elif (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch")


def _unpickle(f: BinaryIO, where: str) -> dict:
    try:
        obj = _CifarUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise UserError(f"{where} is not a valid CIFAR python batch ({exc})") from None
    except (OSError, zlib.error, tarfile.TarError) as exc:
        raise UserError(f"{where} is truncated or corrupt ({exc})") from None
    if not isinstance(obj, dict):
        raise UserError(f"{where} is not a valid CIFAR python batch (not a dict)")
    return obj


def _batch_arrays(obj: dict, spec: CifarSpec, where: str, n_classes: int):
    data, labels = obj.get(b"data"), obj.get(spec.label_key)
    if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != 3072 or labels is None:
        raise UserError(f"{where} is not a valid {spec.title} batch (expected b'data' N x 3072 and {spec.label_key!r})")
    labels = np.asarray(labels, dtype=np.int64)
    if labels.shape != (data.shape[0],):
        raise UserError(f"{where} has {data.shape[0]} images but {labels.size} labels")
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise UserError(f"{where} has labels outside 0..{n_classes - 1}")
    # Rows are 1024 red, 1024 green, 1024 blue values of a row-major 32x32 image.
    images = torch.from_numpy(np.ascontiguousarray(data, dtype=np.uint8).reshape(-1, 3, 32, 32).copy())
    return images, torch.from_numpy(labels)


def _class_names(obj: dict, spec: CifarSpec, where: str) -> list[str]:
    names = obj.get(spec.names_key)
    if not isinstance(names, list) or not names:
        raise UserError(f"{where} has no {spec.names_key!r} list of class names")
    return [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names]


def detect_cifar_folder(folder: Path) -> CifarSpec | None:
    """The CIFAR variant whose extracted files are in ``folder`` (meta + training batches)."""
    for spec in CIFAR_SPECS.values():
        if (folder / spec.meta_file).is_file() and all((folder / f).is_file() for f in spec.train_files):
            return spec
    return None


def _cifar_splits(
    files: dict[str, Callable[[], BinaryIO]], spec: CifarSpec, where: str, want: tuple[str, ...]
) -> ArraySplits:
    """Assemble splits from ``files`` (name -> opener) of one CIFAR variant."""
    with files[spec.meta_file]() as f:
        classes = _class_names(_unpickle(f, f"{where}/{spec.meta_file}"), spec, f"{where}/{spec.meta_file}")
    out = ArraySplits(spec.title, classes, location=where)
    for split, names in (("train", spec.train_files), ("test", spec.test_files)):
        if split not in want or not all(n in files for n in names):
            continue
        parts = []
        for n in names:
            with files[n]() as f:
                parts.append(_batch_arrays(_unpickle(f, f"{where}/{n}"), spec, f"{where}/{n}", len(classes)))
        out.splits[split] = (torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))
    return out


def load_cifar_folder(folder: Path, spec: CifarSpec, want: tuple[str, ...] = ("train", "test")) -> ArraySplits:
    """Read an extracted ``cifar-10-batches-py`` / ``cifar-100-python`` folder."""
    files = {n: (lambda p=folder / n: open(p, "rb")) for n in spec.files() if (folder / n).is_file()}
    return _cifar_splits(files, spec, str(folder), want)


def _tar_error(archive: Path, exc: BaseException) -> UserError:
    return UserError(f"archive {archive} is truncated or corrupt ({exc or type(exc).__name__}); download it again")


def load_cifar_archive(archive: Path, want: tuple[str, ...] = ("train", "test")) -> ArraySplits:
    """Read a CIFAR python archive directly, without extracting it to disk.

    One sequential pass: seeking backwards in a .tar.gz means decompressing again.
    """
    wanted = {n: s for s in CIFAR_SPECS.values() for n in s.files()}
    blobs: dict[str, bytes] = {}
    seen: set[str] = set()
    spec: CifarSpec | None = None
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                base = member.name.rsplit("/", 1)[-1]
                if not member.isfile() or base not in wanted:
                    continue
                member_spec = wanted[base]
                if spec is not None and member_spec is not spec:
                    continue  # files of another variant (a repacked archive); ignore
                spec = member_spec
                seen.add(base)
                split = "train" if base in spec.train_files else "test" if base in spec.test_files else "meta"
                if split != "meta" and split not in want:
                    continue  # e.g. evaluation needs only the test batch
                f = tar.extractfile(member)
                assert f is not None  # isfile() members always have data
                blobs[base] = f.read()
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise _tar_error(archive, exc) from None
    if spec is None or spec.meta_file not in seen or not all(n in seen for n in spec.train_files):
        raise UserError(
            f"{archive} is not a CIFAR python archive (expected {CIFAR_SPECS['cifar10'].folder}/ "
            f"or {CIFAR_SPECS['cifar100'].folder}/ inside)"
        )
    files = {n: (lambda b=b: io.BytesIO(b)) for n, b in blobs.items()}
    return _cifar_splits(files, spec, str(archive), want)


def is_archive_name(path: Path) -> bool:
    """True for file names that look like a (compressed) tar archive."""
    return path.name.lower().endswith(ARCHIVE_SUFFIXES)


# ------------------------------------------------------------------ download / extraction


def file_md5(path: Path) -> str:
    """MD5 hex digest of a file, read in chunks."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch_url(url: str, timeout: float) -> BinaryIO:
    """Open ``url`` for reading (a seam that tests replace, so they never use the network)."""
    return urllib.request.urlopen(url, timeout=timeout)  # noqa: S310 - fixed https URLs


def can_download(url: str, timeout: float = 3.0) -> bool:
    """Whether ``url`` answers within ``timeout`` seconds (used to pick the default data)."""
    try:
        with fetch_url(url, timeout):
            return True
    except Exception:  # noqa: BLE001 - any failure simply means "not reachable now"
        return False


def download(spec: CifarSpec, dest_dir: Path, *, timeout: float = 60.0, log: Callable[[str], None] = print) -> Path:
    """Download ``spec``'s archive into ``dest_dir`` and verify its MD5; return its path.

    Writes to a temporary file in the same folder and renames it only once the MD5
    matched, so an interrupted download never looks like a finished one.
    """
    dest = dest_dir / spec.archive
    where = f"put {spec.archive} (from {spec.url}) into {dest_dir} or pass --data PATH"
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create data cache folder {dest_dir}: {exc.strerror or exc}") from None
    log(f"downloading {spec.title} from {spec.url} to {dest_dir}")
    # Under a temporary name until the MD5 matched: an interrupted download never looks like a finished one.
    with atomic_write(dest, suffix=".part") as tmp:
        h = hashlib.md5()
        got = 0
        try:
            with open(tmp, "wb") as out, fetch_url(spec.url, timeout) as resp:
                expected = _content_length(resp)
                progress = _progress(expected, spec.archive)
                for chunk in iter(lambda: resp.read(1 << 20), b""):
                    out.write(chunk)
                    h.update(chunk)
                    got += len(chunk)
                    progress(len(chunk))
                progress(None)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise UserError(f"could not download {spec.title} ({reason}); {where}") from None
        except Exception as exc:  # noqa: BLE001 - http.client errors (IncompleteRead, ...)
            raise UserError(f"could not download {spec.title} ({type(exc).__name__}: {exc}); {where}") from None
        if expected is not None and got != expected:
            raise UserError(
                f"download of {spec.url} was truncated ({got:,} of {expected:,} bytes); try again or {where}"
            )
        if h.hexdigest() != spec.md5:
            raise UserError(
                f"downloaded {spec.archive} has MD5 {h.hexdigest()}, expected {spec.md5}; try again or {where}"
            )
    return dest


def _content_length(resp) -> int | None:
    headers = getattr(resp, "headers", None)
    value = headers.get("Content-Length") if headers is not None else None
    return int(value) if value and value.isdigit() else None


def _progress(total: int | None, name: str) -> Callable[[int | None], None]:
    """A tqdm bar on an interactive stderr, nothing otherwise (logs stay clean)."""
    if not sys.stderr.isatty():
        return lambda n: None
    from tqdm import tqdm

    bar = tqdm(total=total, unit="B", unit_scale=True, desc=name, file=sys.stderr)
    return lambda n: bar.close() if n is None else bar.update(n)


# tarfile's extraction filters (and their errors) exist from Python 3.11.4 on; an empty
# tuple in an except clause matches nothing.
_FILTER_ERROR = getattr(tarfile, "FilterError", ())


def _check_member(member: tarfile.TarInfo, target: Path, archive: Path) -> None:
    """Refuse members that would be written (or point) outside ``target``."""
    name = member.name
    dest = os.path.normpath(os.path.join(target, name))
    if os.path.isabs(name) or name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        raise UserError(f"archive {archive} has member {name!r} with an absolute path; refusing to extract it")
    if dest != str(target) and not dest.startswith(str(target) + os.sep):
        raise UserError(
            f"archive {archive} has member {name!r} that would land outside {target}; refusing to extract it"
        )
    if member.issym() or member.islnk():
        link = member.linkname
        base = os.path.dirname(dest) if member.issym() else str(target)
        resolved = os.path.normpath(os.path.join(base, link))
        if os.path.isabs(link) or not (resolved == str(target) or resolved.startswith(str(target) + os.sep)):
            raise UserError(
                f"archive {archive} has link {name!r} -> {link!r} pointing outside {target}; refusing to extract it"
            )
    elif not (member.isfile() or member.isdir()):
        raise UserError(f"archive {archive} has special file {name!r}; refusing to extract it")


def safe_extract(archive: Path, target: Path) -> None:
    """Extract ``archive`` into ``target`` after checking every member stays inside it.

    Checks are done for all members before anything is written; tarfile's "data" filter
    then enforces the same rules again (and strips unsafe permission bits).
    """
    target = Path(os.path.realpath(target))
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()  # reads the whole archive: truncation shows up here
            for m in members:
                _check_member(m, target, archive)
            target.mkdir(parents=True, exist_ok=True)
            if hasattr(tarfile, "data_filter"):
                tar.extractall(target, members=members, filter="data")
            else:  # Python < 3.11.4 has no filters; the checks above still ran
                tar.extractall(target, members=members)
    except _FILTER_ERROR as exc:
        raise UserError(f"archive {archive} has an unsafe member ({exc}); refusing to extract it") from None
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise _tar_error(archive, exc) from None


def cifar_in_cache(spec: CifarSpec, cache_dir: Path) -> bool:
    """Whether the cache already holds this variant (extracted or as the archive)."""
    folder = cache_dir / spec.folder
    return all((folder / f).is_file() for f in spec.files()) or (cache_dir / spec.archive).is_file()


def ensure_cifar(spec: CifarSpec, cache_dir: Path, *, log: Callable[[str], None] = print) -> Path:
    """Return the extracted folder of ``spec`` in ``cache_dir``, downloading if needed.

    An archive already in the cache (e.g. copied there by hand on an offline machine) is
    MD5-checked before it is extracted; the batches are only unpickled after that check.
    """
    folder = cache_dir / spec.folder
    if all((folder / f).is_file() for f in spec.files()):
        return folder
    archive = cache_dir / spec.archive
    if archive.is_file():
        digest = file_md5(archive)
        if digest != spec.md5:
            raise UserError(
                f"{archive} has MD5 {digest}, expected {spec.md5} (corrupt or incomplete); "
                f"delete it and run again, or replace it with the file from {spec.url}"
            )
    else:
        download(spec, cache_dir, log=log)
    log(f"extracting {archive} into {cache_dir}")
    tmp = Path(tempfile.mkdtemp(dir=cache_dir, prefix=".extract-"))
    try:
        safe_extract(archive, tmp)
        extracted = tmp / spec.folder
        if not all((extracted / f).is_file() for f in spec.files()):
            raise UserError(f"{archive} does not contain the expected {spec.folder}/ files")
        if folder.exists():
            shutil.rmtree(folder)  # an earlier, incomplete extraction
        os.replace(extracted, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


# --------------------------------------------------------------------------- MNIST IDX

FASHION_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip

_IDX_IMAGES = re.compile(
    r"^(?P<prefix>.*?)(?P<sep>[-.])?images(?P<sep2>[-.])idx3(?P<sep3>[-.])ubyte(?P<gz>\.gz)?$", re.I
)
_IDX_DTYPES = {
    0x08: np.uint8,
    0x09: np.int8,
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _idx_split(prefix: str) -> str | None:
    p = prefix.lower()
    if p.startswith("train"):
        return "train"
    if p.startswith(("t10k", "test")):
        return "test"
    return None


def find_idx_files(folder: Path) -> dict[str, tuple[Path, Path]]:
    """Map split ("train"/"test") to (images, labels) IDX files found in ``folder``.

    Image files named ``train-*`` give the training split and ``t10k-*`` (or ``test-*``)
    the test split; each needs the matching ``*-labels-idx1-ubyte[.gz]`` file.
    """
    try:
        names = sorted(e.name for e in os.scandir(folder) if e.is_file())
    except OSError:
        return {}
    present = {n.lower(): n for n in names}
    found: dict[str, tuple[Path, Path]] = {}
    for name in names:
        m = _IDX_IMAGES.match(name)
        if not m:
            continue
        split = _idx_split(m.group("prefix"))
        if split is None or split in found:
            continue
        stem = name[: m.start("gz")] if m.group("gz") else name
        label_stem = re.sub("images", "labels", re.sub("idx3", "idx1", stem, flags=re.I), flags=re.I)
        label = present.get(label_stem.lower()) or present.get(label_stem.lower() + ".gz")
        if label is None:
            raise UserError(f"{folder / name} has no matching labels file ({label_stem}[.gz]) next to it")
        found[split] = (folder / name, folder / label)
    return found


def has_idx_files(folder: Path) -> bool:
    """Whether ``folder`` holds an MNIST-style ``*-images-idx3-ubyte[.gz]`` file."""
    try:
        return any(_IDX_IMAGES.match(e.name) for e in os.scandir(folder) if e.is_file())
    except OSError:
        return False


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed) into a numpy array."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise UserError(f"{path} is truncated or corrupt ({exc})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise UserError(f"{path} is not an IDX file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise UserError(f"{path} is truncated (incomplete IDX header)")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    need = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header < need:
        raise UserError(f"{path} is truncated ({len(raw) - header:,} of {need:,} data bytes)")
    return np.frombuffer(raw, dtype=dtype, count=need // dtype.itemsize, offset=header).reshape(dims)


def idx_classes(folder: Path, n_labels: int) -> tuple[str, list[str]]:
    """(title, class names) for an IDX folder: Fashion-MNIST names if its name says fashion."""
    names = " ".join(p.name.lower() for p in (folder, folder.parent))
    if "fashion" in names and n_labels <= len(FASHION_CLASSES):
        return "Fashion-MNIST", list(FASHION_CLASSES)
    return "MNIST", [str(i) for i in range(max(10, n_labels))]


def load_idx_folder(folder: Path, want: tuple[str, ...] = ("train", "test")) -> ArraySplits:
    """Read the MNIST/Fashion-MNIST IDX files of ``folder`` as N x 1 x H x W uint8 splits."""
    pairs = find_idx_files(folder)
    if "train" not in pairs:
        raise UserError(f"{folder} has IDX files but no train-images-idx3-ubyte[.gz] training set")
    arrays: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for split, (img_path, lab_path) in pairs.items():
        if split not in want:
            continue
        images, labels = read_idx(img_path), read_idx(lab_path)
        if images.ndim != 3 or images.dtype != np.uint8:
            raise UserError(f"{img_path} is not an N x H x W uint8 image file (shape {images.shape}, {images.dtype})")
        if labels.ndim != 1 or len(labels) != len(images):
            raise UserError(f"{lab_path} has {labels.size} labels for {len(images)} images in {img_path.name}")
        arrays[split] = (images, labels.astype(np.int64))
    n_labels = max(int(lab.max()) + 1 if lab.size else 0 for _, lab in arrays.values())
    title, classes = idx_classes(folder, n_labels)
    out = ArraySplits(title, classes, location=str(folder))
    for split, (images, labels) in arrays.items():
        out.splits[split] = (torch.from_numpy(images.copy()).unsqueeze(1).contiguous(), torch.from_numpy(labels))
    return out
