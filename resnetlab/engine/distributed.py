"""torch.distributed set-up for runs launched by ``torchrun`` (nothing home-made).

``torchrun`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; with them present
the process group starts with gloo on CPU or nccl on CUDA, with a timeout so a
dead peer ends the job with an error instead of a hang.

``--sync-bn`` uses ``torch.nn.SyncBatchNorm`` on CUDA. PyTorch 2.13 refuses it on
CPU (its kernels are GPU-only and DDP rejects it for CPU modules: "SyncBatchNorm layers
only work with GPU modules"), so on CPU :class:`CpuSyncBatchNorm` runs the same
algorithm with ``torch.distributed.all_reduce`` over gloo: 2 small all-reduces per
layer forward and 1 backward.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..errors import UserError

# A collective that waits longer than this means a peer died or hung: fail loudly.
TIMEOUT = datetime.timedelta(seconds=int(os.environ.get("RESNETLAB_DIST_TIMEOUT", "300")))


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job and the device it trains on."""

    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes checkpoints, metrics and figures."""
        return self.rank == 0


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` picks CUDA when available; ``cuda`` without a GPU is a clear error."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError("--device cuda was asked for but no CUDA GPU is available; use --device cpu")
        return torch.device("cuda", local_rank if name == "cuda" else torch.device(name).index)
    if name != "cpu":
        raise UserError(f"unknown device {name!r}; use cpu, cuda or auto")
    return torch.device("cpu")


def setup(device: str) -> DistInfo:
    """Join the process group when launched by torchrun; a single process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=TIMEOUT)
    return DistInfo(rank, world, local_rank, dev)


def teardown(wait_for_peers: bool = True) -> None:
    """Leave the process group (if any); after a normal finish, all ranks together.

    Without the barrier a rank that finishes first closes its gloo connections while
    its peer is still inside its last collective or its own teardown; gloo's reader
    thread then aborts that peer ("terminate called without an active exception",
    SIGABRT) and torchrun reports a finished run as failed. A rank leaving on an
    error skips the barrier: its peers fail at their next collective instead.
    """
    if dist.is_available() and dist.is_initialized():
        try:
            if wait_for_peers:
                dist.barrier()
        finally:
            dist.destroy_process_group()


def broadcast_flag(flag: bool, info: DistInfo) -> bool:
    """True on every rank when it is true on any (used to stop all ranks together)."""
    if info.world == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def same_on_all_ranks(value: int, info: DistInfo) -> bool:
    """True when every rank passed the same integer (e.g. the iteration a resumed run starts at)."""
    if info.world == 1:
        return True
    t = torch.tensor([value, -value], dtype=torch.int64, device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)  # [max, -min]: equal exactly when max == min
    return int(t[0]) == -int(t[1])


def broadcast_buffers(model: nn.Module, info: DistInfo) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank, as DDP does before a forward."""
    if info.world == 1:
        return
    for buf in model.buffers():
        dist.broadcast(buf, src=0)


def _channel_sums(*tensors: Tensor) -> Tensor:
    """Per-channel sums over every dimension but 1, accumulated in float64, concatenated."""
    return torch.cat([t.sum([0, *range(2, t.dim())], dtype=torch.float64) for t in tensors])


class _SyncBatchNormFunction(torch.autograd.Function):
    """Batch norm over the global batch: the statistics, and in backward the two gradient sums, are all-reduced.

    The algorithm of ``torch.nn.SyncBatchNorm`` (whose kernels exist only for GPUs), with
    every reduction accumulated in float64 as PyTorch's NCHW CPU batch norm does: float32
    sums over a batch's pixels lose enough digits to pull 2 processes visibly apart from 1
    within a few steps. Weight and bias gradients stay local; DDP averages them.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor | None, bias: Tensor | None, running_mean: Tensor | None,
                running_var: Tensor | None, factor: float, eps: float) -> Tensor:  # type: ignore[override]
        channels = x.shape[1]
        shape = [1, channels] + [1] * (x.dim() - 2)
        count = torch.tensor([x.numel() // channels], dtype=torch.float64, device=x.device)
        stats = torch.cat([_channel_sums(x), count])
        dist.all_reduce(stats)
        n = stats[-1]
        mean = stats[:-1] / n
        squares = _channel_sums((x - mean.to(x.dtype).view(shape)).square())  # two passes: no cancellation
        dist.all_reduce(squares)
        var = squares / n
        invstd = torch.rsqrt(var + eps)
        scale = invstd * weight.double() if weight is not None else invstd
        shift = (bias.double() if bias is not None else 0.0) - mean * scale
        if running_mean is not None and running_var is not None:
            running_mean.lerp_(mean.to(running_mean.dtype), factor)
            running_var.lerp_((var * n / (n - 1).clamp(min=1)).to(running_var.dtype), factor)  # unbiased
        ctx.save_for_backward(x, weight, mean, invstd, scale)
        ctx.n = n
        return x * scale.to(x.dtype).view(shape) + shift.to(x.dtype).view(shape)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        x, weight, mean, invstd, scale = ctx.saved_tensors
        channels = x.shape[1]
        shape = [1, channels] + [1] * (x.dim() - 2)
        centred = x - mean.to(x.dtype).view(shape)
        local = _channel_sums(grad, grad * centred)  # sum(dy), sum(dy * (x - mean)) on this rank
        sums = local.clone()
        dist.all_reduce(sums)
        mean_dy, mean_dy_xmu = sums[:channels] / ctx.n, sums[channels:] / ctx.n
        # dx = scale * (dy - mean(dy) - (x - mean) * invstd^2 * mean(dy * (x - mean))), over the global batch
        coef = scale * invstd * invstd * mean_dy_xmu
        grad_x = (grad * scale.to(x.dtype).view(shape) - centred * coef.to(x.dtype).view(shape)
                  - (scale * mean_dy).to(x.dtype).view(shape))
        grad_weight = grad_bias = None
        if weight is not None:
            grad_weight = (local[channels:] * invstd).to(weight.dtype)
            grad_bias = local[:channels].to(weight.dtype)
        return grad_x, grad_weight, grad_bias, None, None, None, None


class CpuSyncBatchNorm(_BatchNorm):
    """BatchNorm whose training statistics are those of the global batch, for gloo (CPU) process groups.

    Same parameters, buffers and state-dict keys as the BatchNorm it replaces, so
    checkpoints load into the plain model. Outside training, or in a single
    process, it is ordinary batch norm.
    """

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2-D input (N, C, ...), got {input.dim()}-D")

    def forward(self, input: Tensor) -> Tensor:
        """Normalise ``input`` with the global batch's statistics when training under torch.distributed."""
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(input)
        self._check_input_dim(input)
        factor = 0.0
        if self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        return _SyncBatchNormFunction.apply(input, self.weight, self.bias, self.running_mean, self.running_var,
                                            factor, self.eps)


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` with every BatchNorm using global batch statistics: SyncBatchNorm on CUDA, else CpuSyncBatchNorm."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if isinstance(model, _BatchNorm) and not isinstance(model, (CpuSyncBatchNorm, nn.SyncBatchNorm)):
        sync = CpuSyncBatchNorm(model.num_features, model.eps, model.momentum, model.affine,
                                model.track_running_stats)
        # Re-use the very parameters and buffers: nothing is copied, state-dict keys stay the same.
        if model.affine:
            sync.weight, sync.bias = model.weight, model.bias
        sync.running_mean, sync.running_var = model.running_mean, model.running_var
        sync.num_batches_tracked = model.num_batches_tracked
        sync.train(model.training)
        return sync
    for name, child in model.named_children():
        model._modules[name] = convert_sync_batchnorm(child, device)
    return model
