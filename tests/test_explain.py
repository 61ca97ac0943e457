"""``resnetlab explain``: Grad-CAM finds the evidence where it is, on every family, from checkpoints and names."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from resnetlab.cli import main
from resnetlab.weights import atomic_save, make_checkpoint
from resnetlab.experiments.explain import class_maps, default_layer, explain_image
from resnetlab.models import create_model

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def quadrant_images(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """32x32 noise images with one bright 8x8 patch inside a random quadrant: red for class 0, blue for
    class 1. The class is *what* the patch is; *where* it is (the returned quadrant, 0..3 row-major) is the
    only place its evidence lies."""
    x = torch.rand(n, 3, 32, 32, generator=gen) * 0.4 - 0.2
    y = torch.arange(n) % 2
    quadrant = torch.randint(0, 4, (n,), generator=gen)
    for i in range(n):
        r, c = (int(v) for v in torch.randint(0, 9, (2,), generator=gen))
        top, left = 16 * (int(quadrant[i]) // 2), 16 * (int(quadrant[i]) % 2)
        x[i, 2 * int(y[i]), top + r:top + r + 8, left + c:left + c + 8] += 2.0
    return x, y, quadrant


@pytest.fixture(scope="module")
def quadrant_net() -> torch.nn.Module:
    """A ResNet-8 trained to tell red patches from blue ones (60 SGD steps, a few seconds on a CPU)."""
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = create_model("resnet", depth=8, family="cifar", num_classes=2)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(60):
        x, y, _ = quadrant_images(32, gen)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
def test_the_heat_map_peaks_in_the_quadrant_that_holds_the_evidence(quadrant_net, method: str) -> None:
    x, y, quadrant = quadrant_images(16, torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (quadrant_net(x).argmax(1) == y).all()  # the net learned the task
    for i in range(16):
        cam = class_maps(quadrant_net, x[i:i + 1], [int(y[i])], method=method)[0]
        r, c = divmod(int(cam.argmax()), 32)
        assert 2 * (r >= 16) + (c >= 16) == int(quadrant[i]), (i, r, c)
        assert cam.shape == (32, 32) and float(cam.max()) == pytest.approx(1.0) and float(cam.min()) >= 0


@pytest.mark.parametrize("name,size,map_size", [
    ("resnet20", 32, 8), ("plain20", 32, 8), ("preact_resnet110", 32, 8), ("preact_resnet164", 32, 8),
    ("resnet18", 224, 7), ("plain18", 224, 7), ("preact_resnet18", 224, 7), ("resnext50_32x4d", 224, 7),
])
def test_every_family_has_a_default_layer_with_the_last_spatial_map(name: str, size: int, map_size: int) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=5)
    exp = explain_image(model, torch.randn(1, 3, size, size), "x.png", list("abcde"), topk=2)
    assert exp.layer == default_layer(model) and exp.map_size == (map_size, map_size)
    assert exp.maps.shape == (2, size, size) and torch.isfinite(exp.maps).all()
    assert exp.probs == sorted(exp.probs, reverse=True) and len(exp.classes) == 2


def test_cli_writes_a_png_per_image_and_refuses_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from PIL import Image

    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=3)
    ckpt = tmp_path / "best.pt"
    atomic_save(make_checkpoint(model, classes=["cat", "dog", "eel"], mean=[0.5] * 3, std=[0.25] * 3,
                                input_size=[3, 32, 32]), ckpt)
    images = []
    for i in range(2):
        images.append(tmp_path / f"img{i}.png")
        Image.new("RGB", (40, 40), (60 * i, 100, 200)).save(images[-1])
    out = tmp_path / "cams"
    argv = ["explain", str(ckpt), *map(str, images), "--topk", "2", "--method", "gradcam++", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 2 and all("->" in line for line in printed)
    pngs = sorted(out.glob("*.png"))
    assert [p.name for p in pngs] == ["000-img0.png", "001-img1.png"]
    assert all(p.read_bytes()[:8] == PNG_MAGIC for p in pngs)
    assert main(["explain", str(ckpt), str(images[0]), "--layer", "layer9", "--out", str(out)]) == 2
    assert "no layer 'layer9'" in capsys.readouterr().err
    assert main(["explain", str(ckpt), str(images[0]), "--topk", "0", "--out", str(out)]) == 2
    assert main(["explain", str(ckpt), str(tmp_path / "missing.png"), "--out", str(out)]) == 2
    assert "image not found" in capsys.readouterr().err
