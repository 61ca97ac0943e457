"""``--cuda-graphs``: the training step and the evaluation forward replayed as CUDA graphs.

CIFAR ResNets at batch 128 are launch-bound on a large GPU: measured on an H100, every
``torch.compile`` mode ran at 0.9-1.1x eager and only CUDA graphs helped (docs/benchmarks.md).
A graph records the step's kernels once and replays them with one launch, so the step must
be static: the same shapes every iteration (the training loaders drop the last partial
batch), inputs copied into fixed buffers, and nothing that reads a value back to the host.
Hence:

* the optimizer is SGD with ``fused=True`` and its learning rate a 0-d device tensor,
  filled with ``lr_at(step)`` before each replay (a Python float would be baked into the
  graph; the foreach SGD turns a tensor rate into a host read);
* the first :data:`WARMUP_STEPS` iterations run eagerly on a side stream, as CUDA requires
  before a capture; they are real iterations of the run (same batches, same optimizer);
* ``zero_grad(set_to_none=True)`` precedes the capture, so the graph's backward *writes*
  the gradients rather than adding to them, on every replay;
* evaluation captures one graph per input shape (full batches, and the last partial one),
  BN in eval mode; its output is copied out after each replay, because flip TTA calls the
  model twice per batch and the second replay would overwrite the first call's logits.

The capture itself is injected (``capture``): on CUDA it is :func:`cuda_capture`; the tests
run the same logic on the CPU with a capture that replays by calling the step again.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import torch
from torch import Tensor, nn

from ..errors import UserError
from .evaluate import autocast

WARMUP_STEPS = 3  # eager iterations before the capture (PyTorch's CUDA-graph notes use 3)
Capture = Callable[[Callable[[], None], torch.device], Callable[[], None]]


def check_cuda_graphs(device: torch.device, amp: str, compile: bool, world: int) -> None:
    """One clear error for each setting ``--cuda-graphs`` cannot run with."""
    if device.type != "cuda":
        raise UserError(f"--cuda-graphs needs a CUDA device; this run is on {device.type}")
    if amp == "fp16":
        raise UserError("--cuda-graphs does not run fp16's GradScaler (it skips steps on the host); "
                        "use --amp bf16 or --amp none")
    if compile:
        raise UserError("--cuda-graphs captures the eager kernels; drop --compile (or use compile alone)")
    if world > 1:
        raise UserError("--cuda-graphs runs in one process; DDP's gradient all-reduce is not captured here")


def cuda_capture(body: Callable[[], None], device: torch.device) -> Callable[[], None]:
    """Record ``body`` into a CUDA graph (without running it) and return the graph's ``replay``."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.device(device), torch.cuda.graph(graph):
        body()
    return graph.replay


@contextlib.contextmanager
def side_stream(device: torch.device) -> Iterator[None]:
    """Run the block on a fresh CUDA stream, ordered after and before the current one (a no-op off CUDA)."""
    if device.type != "cuda":
        yield
        return
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        yield
    torch.cuda.current_stream(device).wait_stream(stream)


class GraphedTrainStep:
    """One SGD iteration (forward, loss, backward, step) replayed from a graph after ``warmup`` eager ones.

    ``optimizer`` must be SGD with ``fused=True``; its groups' learning rate becomes this
    object's 0-d tensor. Each call returns the step's (loss, logits), valid until the next call.
    """

    def __init__(self, forward: Callable[[Tensor], Tensor], optimizer: torch.optim.Optimizer,
                 loss_fn: Callable[[Tensor, Tensor], Tensor], device: torch.device, amp: str, *,
                 warmup: int = WARMUP_STEPS, capture: Capture | None = None) -> None:
        if not optimizer.defaults.get("fused"):
            raise ValueError("a graphed step needs SGD with fused=True (a tensor learning rate without host reads)")
        self.forward, self.optimizer, self.loss_fn = forward, optimizer, loss_fn
        self.device, self.amp, self.warmup, self.capture = device, amp, warmup, capture or cuda_capture
        self.lr = torch.zeros((), dtype=torch.float32, device=device)
        for group in optimizer.param_groups:
            group["lr"] = self.lr
        self.eager_steps = 0
        self.replay: Callable[[], None] | None = None
        self.x: Tensor | None = None
        self.target: Tensor | None = None
        self.out: tuple[Tensor, Tensor] | None = None

    def __call__(self, x: Tensor, target: Tensor, lr: float) -> tuple[Tensor, Tensor]:
        """Train on (``x``, ``target``) at learning rate ``lr``; returns (loss, logits), detached."""
        self.lr.fill_(lr)
        if self.replay is None and self.eager_steps < self.warmup:
            self.eager_steps += 1
            self.x, self.target = x, target
            with side_stream(self.device):
                self._body()
            return self.out
        if self.replay is None:
            # Static buffers in the batch's own memory format (channels_last stays channels_last).
            self.x, self.target = torch.empty_like(x), torch.empty_like(target)
            self.replay = self.capture(self._body, self.device)
        self.x.copy_(x)
        self.target.copy_(target)
        self.replay()
        return self.out

    def _body(self) -> None:
        """The step on ``self.x``/``self.target``; what a capture records and every replay reruns."""
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device, self.amp, cache_enabled=False):
            logits = self.forward(self.x)
            loss = self.loss_fn(logits, self.target)
        loss.backward()
        self.optimizer.step()
        self.out = (loss.detach(), logits.detach())


class GraphedForward(nn.Module):
    """``model`` for evaluation: in eval mode each input shape is captured once and replayed after; the
    output is a fresh copy on every call. In training mode it is ``model`` itself."""

    def __init__(self, model: nn.Module, amp: str, *, warmup: int = 2, capture: Capture | None = None) -> None:
        super().__init__()
        self.model, self.amp, self.warmup, self.capture = model, amp, warmup, capture or cuda_capture
        self.graphs: dict[tuple[Any, ...], tuple[Callable[[], None], Tensor, list[Tensor]]] = {}

    def forward(self, x: Tensor) -> Tensor:
        if self.training or torch.is_grad_enabled():
            return self.model(x)
        key = (tuple(x.shape), x.stride(), x.dtype, x.device)
        if key not in self.graphs:
            self.graphs[key] = self._capture(x)
        replay, static_x, out = self.graphs[key]
        static_x.copy_(x)
        replay()
        return out[0].clone()

    def _capture(self, x: Tensor) -> tuple[Callable[[], None], Tensor, list[Tensor]]:
        static_x, out = torch.empty_like(x), []

        def body() -> None:
            with autocast(x.device, self.amp, cache_enabled=False):
                out[:] = [self.model(static_x)]

        static_x.copy_(x)
        with side_stream(x.device):
            for _ in range(self.warmup):
                body()
        return self.capture(body, x.device), static_x, out
