"""An exponential moving average of a model's weights and BatchNorm buffers (Polyak averaging).

After every optimizer step each floating-point tensor of the state dict moves towards the
trained model's: ``ema = decay * ema + (1 - decay) * w``. BN's running statistics are averaged
the same way, so the averaged model can be evaluated as it is (no re-estimation pass);
integer buffers (BN's batch counters) are copied. The average lives beside the raw model:
evaluations report both, checkpoints keep both (``ema_state_dict``).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..weights import unwrap


class WeightEma:
    """The moving average of ``model`` (a copy, in eval mode, never trained by the optimizer)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.model = copy.deepcopy(unwrap(model)).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One averaging step towards ``model``'s current weights and buffers."""
        own = self.model.state_dict()
        for key, value in unwrap(model).state_dict().items():
            if value.dtype.is_floating_point:
                own[key].lerp_(value, 1.0 - self.decay)
            else:
                own[key].copy_(value)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """A CPU copy of the averaged weights, for a checkpoint."""
        return {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore the average from a checkpoint (strict)."""
        self.model.load_state_dict(state, strict=True)
