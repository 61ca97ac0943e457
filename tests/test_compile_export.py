"""torch.compile and torch.export of resnet20 (option A shortcut) and resnet50 work and agree with eager."""

from __future__ import annotations

import pytest
import torch

from resnetlab import create_model


@pytest.mark.parametrize("name,size", [("resnet20", 32), ("resnet50", 64)])
def test_torch_export(name: str, size: int) -> None:
    torch.manual_seed(0)
    model = create_model(name).eval()
    x = torch.randn(2, 3, size, size)
    program = torch.export.export(model, (x,))
    torch.testing.assert_close(program.module()(x), model(x), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("name,size", [("resnet20", 32), ("resnet50", 64)])
def test_torch_compile(name: str, size: int) -> None:
    torch.manual_seed(0)
    model = create_model(name).eval()
    x = torch.randn(2, 3, size, size)
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-3, atol=1e-3)
