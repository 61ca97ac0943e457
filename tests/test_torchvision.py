"""Equivalence with torchvision: same state_dict keys and shapes, and the same logits after loading its weights.

torchvision has no CPU build for our torch, so the reference runs wherever it can be
imported: in this process if ``import torchvision`` works, otherwise in Debian's
``python3-torchvision`` (torch 1.13, system Python) as a subprocess that writes
weights, inputs and logits to an ``.npz``. Without either, the tests skip.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from resnetlab import create_model

ALL = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d", "resnext101_32x8d",
       "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2"]
LOGITS = ["resnet18", "resnet50", "resnext50_32x4d", "wide_resnet50_2"]

REFERENCE = textwrap.dedent(
    """
    import sys, numpy as np, torch, torchvision
    out, names, logit_names = sys.argv[1], sys.argv[2].split(","), set(sys.argv[3].split(","))
    torch.manual_seed(0)
    x = torch.randn(2, 3, 64, 64)
    arrays = {"input": x.numpy()}
    for name in names:
        model = getattr(torchvision.models, name)()
        sd = model.state_dict()
        arrays["shapes/" + name] = np.array([",".join(map(str, v.shape)) + "=" + k for k, v in sd.items()])
        if name in logit_names:
            # Non-trivial BN statistics, as a trained network has.
            for m in model.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.5, 0.5); m.running_var.uniform_(0.5, 2.0)
                    m.weight.data.uniform_(0.5, 1.5); m.bias.data.uniform_(-0.2, 0.2)
            model.eval()
            with torch.no_grad():
                arrays["logits/" + name] = model(x).numpy()
            for k, v in model.state_dict().items():
                arrays[f"sd/{name}/{k}"] = v.numpy()
    np.savez(out, **arrays)
    """
)


def _system_python_has_torchvision() -> str | None:
    for exe in ("/usr/bin/python3",):
        if Path(exe).exists():
            ok = subprocess.run([exe, "-c", "import torchvision"], capture_output=True).returncode == 0
            if ok:
                return exe
    return None


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    out = tmp_path_factory.mktemp("tv") / "reference.npz"
    try:
        import torchvision  # noqa: F401

        exe = sys.executable
    except ImportError:
        exe = _system_python_has_torchvision()
    if exe is None:
        pytest.skip("torchvision is not importable here (install Debian's python3-torchvision to run these)")
    script = out.with_suffix(".py")
    script.write_text(REFERENCE)
    proc = subprocess.run([exe, str(script), str(out), ",".join(ALL), ",".join(LOGITS)], capture_output=True,
                          text=True, timeout=600)
    if proc.returncode != 0:
        pytest.skip(f"torchvision reference failed to run: {proc.stderr.strip().splitlines()[-1:]}")
    return dict(np.load(out))


@pytest.mark.parametrize("name", ALL)
def test_same_keys_and_shapes(reference: dict[str, np.ndarray], name: str) -> None:
    theirs = {}
    for entry in reference[f"shapes/{name}"]:
        shape, key = str(entry).split("=", 1)
        theirs[key] = tuple(int(s) for s in shape.split(",") if s)
    with torch.device("meta"):
        ours = {k: tuple(v.shape) for k, v in create_model(name).state_dict().items()}
    assert list(ours) == list(theirs)
    assert ours == theirs


@pytest.mark.parametrize("name", LOGITS)
def test_same_logits_with_torchvision_weights(reference: dict[str, np.ndarray], name: str) -> None:
    prefix = f"sd/{name}/"
    state = {k[len(prefix):]: torch.from_numpy(v) for k, v in reference.items() if k.startswith(prefix)}
    model = create_model(name).eval()
    model.load_state_dict(state, strict=True)
    with torch.no_grad():
        ours = model(torch.from_numpy(reference["input"]))
    torch.testing.assert_close(ours, torch.from_numpy(reference[f"logits/{name}"]), rtol=1e-4, atol=1e-4)
