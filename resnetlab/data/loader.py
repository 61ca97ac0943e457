"""Batches straight from a uint8 tensor that lives on the training device (airbench's approach).

The whole CIFAR-size dataset sits on the device as uint8 (50k x 3 x 32 x 32 is
150 MB), padded once. Crop and flip are batched tensor operations: no per-image
Python, no PIL in the loop. Every random choice of batch ``b`` in epoch ``e``
comes from a generator seeded by ``(seed, e, b)``, so a resumed run sees exactly
the batches an uninterrupted one would, and each rank of a distributed run takes
its slice of the same global batch.
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import UserError
from .augment import POLICIES, apply_policy, cutout


def batch_generator(seed: int, *keys: int) -> torch.Generator:
    """A CPU generator seeded from ``seed`` and any keys (epoch, batch) by NumPy's SeedSequence."""
    state = np.random.SeedSequence([seed & 0xFFFFFFFF, *keys]).generate_state(2, dtype=np.uint64)
    return torch.Generator().manual_seed(int(state[0] >> 1))


def norm_tensor(values: Sequence[Any]) -> Tensor:
    """A mean or std as a broadcastable 1 x C x 1 x 1 (per channel) or 1 x C x H x W (per pixel) tensor.

    A flat list is per channel; a nested C x H x W list is a per-pixel mean image (He et al. 2015,
    Sec. 4.2: "the per-pixel mean subtracted"), which only fits images of that size.
    """
    t = torch.as_tensor(values, dtype=torch.float32)
    return t.view(1, -1, 1, 1) if t.ndim == 1 else t.unsqueeze(0)


class Normalize:
    """uint8 NCHW -> float, scaled to 0..1, minus mean, over std, in the chosen memory format.

    ``mean`` is per channel (flat) or per pixel (C x H x W); ``std`` is per channel.
    """

    def __init__(self, mean: Sequence[Any], std: Sequence[float], device: torch.device, channels_last: bool) -> None:
        self.mean = norm_tensor(mean).to(device) * 255
        self.inv_std = 1.0 / (norm_tensor(std).to(device) * 255)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def __call__(self, x: Tensor) -> Tensor:
        if self.mean.shape[-1] > 1 and self.mean.shape[-2:] != x.shape[-2:]:
            raise UserError(
                f"this model subtracts a {self.mean.shape[-2]}x{self.mean.shape[-1]} per-pixel mean image; "
                f"the images are {x.shape[-2]}x{x.shape[-1]}: resize them to that size"
            )
        x = (x.float() - self.mean) * self.inv_std
        return x.contiguous(memory_format=self.memory_format)


AUGMENT_STREAM = 1  # a second random stream per batch for the policy and cutout, apart from crop/flip


def crop_flip(images: Tensor, offsets: Tensor, flips: Tensor, size: int) -> Tensor:
    """Crop ``size`` x ``size`` windows at per-image ``offsets`` (B, 2) and mirror where ``flips`` (B,) is set.

    A single gather over the batch: rows and columns of every window are index
    tensors, so cost is one pass over the output, whatever the batch size.
    """
    b = images.shape[0]
    ar = torch.arange(size, device=images.device)
    rows = (offsets[:, 0:1] + ar).view(b, 1, size, 1)
    cols = offsets[:, 1:2] + ar
    cols = torch.where(flips.view(b, 1), cols.flip(1), cols).view(b, 1, 1, size)
    batch = torch.arange(b, device=images.device).view(b, 1, 1, 1)
    chans = torch.arange(images.shape[1], device=images.device).view(1, -1, 1, 1)
    return images[batch, chans, rows, cols]


class MemoryLoader:
    """Epoch iterator over an in-memory uint8 dataset.

    Args:
        images: uint8 N x C x H x W (any device; moved to ``device``).
        labels: int64 N.
        batch_size: the global batch size; with ``world > 1`` each rank gets its slice.
        train: shuffle, augment and drop the last partial batch (the paper counts iterations of full batches).
        pad: zero padding for random crops (4 in paper Sec. 4.2); 0 disables cropping.
        flip: random horizontal flips.
        policy: after crop and flip, one operation per image: ``autoaugment`` (CIFAR-10 policy) or
            ``trivialaugment`` (:mod:`resnetlab.data.augment`); ``none`` for the paper's augmentation.
        cutout: then zero a square of this side per image (0: off).
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        batch_size: int,
        *,
        train: bool,
        mean: Sequence[float],
        std: Sequence[float],
        device: torch.device | str = "cpu",
        channels_last: bool = False,
        seed: int = 0,
        pad: int = 4,
        flip: bool = True,
        policy: str = "none",
        cutout: int = 0,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        if policy not in POLICIES:
            raise UserError(f"unknown augmentation policy {policy!r}; choose from {', '.join(POLICIES)}")
        if cutout < 0:
            raise UserError(f"--cutout must be 0 (off) or a square side in pixels, got {cutout}")
        self.policy = policy if train else "none"
        self.cutout = cutout if train else 0
        self.device = torch.device(device)
        self.train = train
        self.batch_size = batch_size
        self.seed = seed
        self.size = images.shape[-1]
        self.pad = pad if train else 0
        self.flip = flip and train
        self.rank, self.world = rank, world
        self.normalize = Normalize(mean, std, self.device, channels_last)
        images = images.to(self.device)
        # Pad once, up front, instead of every batch; zero padding as in the paper.
        self.images = F.pad(images, (self.pad,) * 4) if self.pad else images
        self.labels = labels.to(self.device)
        self.n = len(labels)
        self._perm_epoch: int | None = None
        self._perm = torch.empty(0, dtype=torch.long)

    def __len__(self) -> int:
        """Batches per epoch."""
        return self.n // self.batch_size if self.train else -(-self.n // self.batch_size)

    def _shard(self, idx: Tensor) -> Tensor:
        """This rank's contiguous slice of a global batch (all of it when world == 1)."""
        if self.world == 1:
            return idx
        per = -(-len(idx) // self.world)
        return idx[self.rank * per : (self.rank + 1) * per]

    def _permutation(self, epoch: int) -> Tensor:
        """The epoch's shuffled order, a function of (seed, epoch) alone; kept for the epoch's batches."""
        if self._perm_epoch != epoch:
            self._perm = torch.randperm(self.n, generator=batch_generator(self.seed, epoch))
            self._perm_epoch = epoch
        return self._perm

    def batch(self, epoch: int, index: int) -> tuple[Tensor, Tensor]:
        """Batch ``index`` of ``epoch`` (normalised float images on the device, labels), the same on every call."""
        if not self.train:
            idx = self._shard(torch.arange(index * self.batch_size, min(self.n, (index + 1) * self.batch_size)))
            idx = idx.to(self.device)
            return self.normalize(self.images[idx]), self.labels[idx]
        idx = self._permutation(epoch)[index * self.batch_size : (index + 1) * self.batch_size]
        # Draw augmentation for the whole global batch, then shard: 2 ranks see what 1 process sees.
        g = batch_generator(self.seed, epoch, index + 1)
        offsets = torch.randint(0, 2 * self.pad + 1, (len(idx), 2), generator=g)
        flips = torch.rand(len(idx), generator=g) < 0.5 if self.flip else torch.zeros(len(idx), dtype=torch.bool)
        if self.policy != "none" or self.cutout:
            return self._augmented(idx, offsets, flips, batch_generator(self.seed, epoch, index + 1, AUGMENT_STREAM))
        idx, offsets, flips = self._shard(idx), self._shard(offsets), self._shard(flips)
        idx = idx.to(self.device)
        x = self.images[idx]
        if self.pad or self.flip:
            x = crop_flip(x, offsets.to(self.device), flips.to(self.device), self.size)
        return self.normalize(x), self.labels[idx]

    def _augmented(self, idx: Tensor, offsets: Tensor, flips: Tensor, g: torch.Generator) -> tuple[Tensor, Tensor]:
        """Crop and flip, then the policy and cutout, over the whole global batch (their draws are per image
        of the global batch), then this rank's shard."""
        idx = idx.to(self.device)
        x = crop_flip(self.images[idx], offsets.to(self.device), flips.to(self.device), self.size)
        x = apply_policy(x, self.policy, g)
        if self.cutout:
            x = cutout(x, self.cutout, g)
        keep = self._shard(torch.arange(len(idx), device=self.device))
        return self.normalize(x[keep]), self.labels[idx][keep]

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        """Iterate over the batches of ``epoch`` from batch ``start`` (to resume mid-epoch)."""
        for index in range(start, len(self)):
            yield self.batch(epoch, index)


class _EpochSampler(torch.utils.data.Sampler):
    """This rank's indices of an epoch: a seeded permutation (the same on every rank), from a start batch."""

    def __init__(self, n: int, batch_size: int, seed: int, epoch: int, start: int, rank: int, world: int,
                 shuffle: bool) -> None:
        self.n, self.batch_size, self.seed, self.epoch = n, batch_size, seed, epoch
        self.start, self.rank, self.world, self.shuffle = start, rank, world, shuffle
        self.indices = self._indices()  # computed once: DataLoader calls len() and iter()

    def _indices(self) -> list[int]:
        order = torch.randperm(self.n, generator=batch_generator(self.seed, self.epoch)) if self.shuffle \
            else torch.arange(self.n)
        per = self.batch_size // self.world
        batches = range(self.start, self.n // self.batch_size if self.shuffle else -(-self.n // self.batch_size))
        out: list[int] = []
        for b in batches:
            chunk = order[b * self.batch_size:(b + 1) * self.batch_size]
            out += chunk[self.rank * per:(self.rank + 1) * per].tolist()
        return out

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class StreamLoader:
    """Batches of a large-image dataset decoded by DataLoader workers (RandomResizedCrop + flip or centre crop).

    Same interface as :class:`MemoryLoader`: ``batch(epoch, index)`` is not random-access
    here, so the loop should use ``epoch(e, start)``; uint8 batches are normalised on the device.
    """

    def __init__(self, dataset, batch_size: int, *, train: bool, mean: Sequence[float], std: Sequence[float],
                 device: torch.device | str = "cpu", channels_last: bool = False, seed: int = 0, workers: int = 2,
                 rank: int = 0, world: int = 1) -> None:
        # Each training sample's augmentation is seeded by (seed, epoch, index), not by the workers' global
        # generators, so a resumed run sees the same crops and flips as an uninterrupted one.
        if train and hasattr(dataset, "seeded"):
            dataset = dataset.seeded(seed)
        self.dataset, self.batch_size, self.train, self.seed = dataset, batch_size, train, seed
        self.workers, self.rank, self.world = workers, rank, world
        self.device = torch.device(device)
        self.normalize = Normalize(mean, std, self.device, channels_last)
        self.n = len(dataset)
        self._iter: Iterator | None = None
        self._next = (-1, -1)

    def __len__(self) -> int:
        return self.n // self.batch_size if self.train else -(-self.n // self.batch_size)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        """Iterate over ``epoch`` from batch ``start``; each sample's augmentation is seeded by (seed, epoch, index)."""
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        sampler = _EpochSampler(self.n, self.batch_size, self.seed, epoch, start, self.rank, self.world, self.train)
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_size=max(1, self.batch_size // self.world), sampler=sampler,
            num_workers=self.workers, pin_memory=self.device.type == "cuda", persistent_workers=False,
        )
        for x, y in loader:
            yield self.normalize(x.to(self.device, non_blocking=True)), y.to(self.device, non_blocking=True)

    def batch(self, epoch: int, index: int) -> tuple[Tensor, Tensor]:
        """The next batch of a sequential pass (starting a new pass when ``(epoch, index)`` jumps)."""
        if self._iter is None or self._next != (epoch, index):
            self._iter = self.epoch(epoch, index)
        self._next = (epoch, index + 1)
        return next(self._iter)


def make_val_loader(split: Any, in_memory: bool, batch_size: int, *, seed: int = 0, workers: int = 2,
                    **common: Any) -> "MemoryLoader | StreamLoader":
    """The loader a held-out split is evaluated with, in training (``engine.train``) and by ``resnetlab evaluate``
    alike: device-resident batches of ``max(256, batch_size)`` for in-memory data, DataLoader workers otherwise.

    ``common`` is ``mean``, ``std``, ``device``, ``channels_last`` (and ``rank``/``world`` under torchrun).
    """
    if in_memory:
        return MemoryLoader(split.images, split.labels, max(256, batch_size), train=False, **common)
    return StreamLoader(split, batch_size, train=False, seed=seed, workers=workers, **common)

