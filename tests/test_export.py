"""Export and interop: ONNX + onnxruntime parity, torch.export and TorchScript round trips, BN folding,
torchvision/timm/DDP weight conversion, safetensors, strict-loading errors and torch.hub from a local clone."""

from __future__ import annotations

import argparse
import importlib.util
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from resnetlab import create_model
from resnetlab.cli import main
from resnetlab.weights import atomic_save, load_checkpoint, make_checkpoint, model_from_checkpoint
from resnetlab.errors import UserError
from resnetlab.export import (
    export_model,
    fuse_bn,
    infer_architecture,
    load_model,
    load_pretrained,
    read_export_metadata,
    read_weights,
    strip_prefixes,
)
from resnetlab.models import MODELS


REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def onnx_rt():
    """onnx and onnxruntime (the [export] extra), imported only by the tests that use them: about 2 s
    at collection in every xdist worker otherwise, and the other tests here run without them."""
    return pytest.importorskip("onnx"), pytest.importorskip("onnxruntime")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: these models are tiny, and on a shared machine spinning threads cost 10-100x."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial statistics and affine parameters, as training would."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(c, generator=g) * 0.1)
    return model.eval()


def torchvision_resnet18_state_dict(num_classes: int = 1000) -> dict[str, torch.Tensor]:
    """torchvision's resnet18 key layout and shapes, written out from its definition (v1 files: no BN counters)."""
    g = torch.Generator().manual_seed(1)
    sd: dict[str, torch.Tensor] = {}

    def conv(name: str, out: int, inp: int, k: int) -> None:
        sd[f"{name}.weight"] = torch.randn(out, inp, k, k, generator=g) * 0.05

    def bn(name: str, c: int) -> None:
        sd[f"{name}.weight"] = torch.rand(c, generator=g) + 0.5
        sd[f"{name}.bias"] = torch.randn(c, generator=g) * 0.1
        sd[f"{name}.running_mean"] = torch.randn(c, generator=g) * 0.1
        sd[f"{name}.running_var"] = torch.rand(c, generator=g) + 0.5

    conv("conv1", 64, 3, 7)
    bn("bn1", 64)
    inplanes = 64
    for i, planes in enumerate((64, 128, 256, 512), start=1):
        for j in range(2):
            p = f"layer{i}.{j}"
            conv(f"{p}.conv1", planes, inplanes, 3)
            bn(f"{p}.bn1", planes)
            conv(f"{p}.conv2", planes, planes, 3)
            bn(f"{p}.bn2", planes)
            if j == 0 and inplanes != planes:
                conv(f"{p}.downsample.0", planes, inplanes, 1)
                bn(f"{p}.downsample.1", planes)
            inplanes = planes
    sd["fc.weight"] = torch.randn(num_classes, 512, generator=g) * 0.01
    sd["fc.bias"] = torch.zeros(num_classes)
    return sd


@pytest.fixture(scope="module")
def checkpoint20(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A resnet20 resnetlab checkpoint with trained-looking BN, named classes and its own normalisation."""
    torch.manual_seed(0)
    model = randomize_bn(create_model("resnet20"))
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    atomic_save(make_checkpoint(model, classes=list("abcdefghij"), mean=(0.5, 0.4, 0.3), std=(0.25, 0.2, 0.3),
                                input_size=(3, 32, 32)), path)
    return path


def torch_logits(model: nn.Module, images: torch.Tensor, mean: list[float], std: list[float]) -> np.ndarray:
    x = (images.float() / 255 - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
    with torch.no_grad():
        return model.eval()(x).numpy()


# ------------------------------------------------------------------------------------------------ ONNX


def test_onnx_resnet18_dynamic_batch_matches_pytorch(tmp_path: Path, onnx_rt) -> None:
    onnx, ort = onnx_rt
    torch.manual_seed(0)
    loaded = load_model("resnet18", random_weights=True)
    # 64x64 instead of 224x224 keeps the test fast; the graph is the same (global pooling before fc).
    report = export_model(loaded, tmp_path / "r18.onnx", "onnx", input_size=(3, 64, 64))
    proto = onnx.load(str(tmp_path / "r18.onnx"))
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch
    assert not list(tmp_path.glob("*.data")) and not list(tmp_path.glob(".*"))  # one file, no temporaries
    assert "onnxruntime vs PyTorch" in report.checks[0]
    # An independent check at a batch size export_model did not try.
    session = ort.InferenceSession(str(tmp_path / "r18.onnx"), providers=["CPUExecutionProvider"])
    x = torch.randn(2, 3, 64, 64)
    out = session.run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        ref = loaded.model(x).numpy()
    assert out.shape == (2, 1000)
    assert np.abs(out - ref).max() < 1e-4 * max(1.0, float(np.abs(ref).max()))


def test_onnx_of_checkpoint_predicts_same_topk(tmp_path: Path, checkpoint20: Path, capsys, onnx_rt) -> None:
    out = tmp_path / "r20.onnx"
    assert main(["export", str(checkpoint20), "--out", str(out), "--fuse-bn"]) == 0
    printed = capsys.readouterr().out
    assert "folded 19 conv+BN pairs (0 BatchNorm left)" in printed and "onnxruntime vs PyTorch" in printed

    from resnetlab.export.onnx_predict import OnnxClassifier, onnx_predict, read_onnx_metadata

    meta = read_onnx_metadata(out)
    assert meta["classes"] == list("abcdefghij") and meta["model"]["name"] == "resnet20"
    assert meta["normalization"] == {"mean": [0.5, 0.4, 0.3], "std": [0.25, 0.2, 0.3], "kind": "channel"} and meta["bn_folded"]

    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    model = model_from_checkpoint(load_checkpoint(checkpoint20))
    ref = torch_logits(model, images, [0.5, 0.4, 0.3], [0.25, 0.2, 0.3])
    got = onnx_predict(out, images)
    assert np.abs(got - ref).max() < 1e-4 * max(1.0, float(np.abs(ref).max()))
    assert (np.argsort(-got, 1)[:, :5] == np.argsort(-ref, 1)[:, :5]).all()
    with pytest.raises(UserError, match="takes 3x32x32"):
        OnnxClassifier(out)(np.zeros((1, 3, 64, 64), dtype=np.uint8))


def test_onnx_opset17_fixed_batch_pads_last_chunk(tmp_path: Path, checkpoint20: Path, onnx_rt) -> None:
    onnx, _ = onnx_rt
    from resnetlab.export.onnx_predict import OnnxClassifier

    out = tmp_path / "r20_b4.onnx"
    export_model(load_model(checkpoint20), out, "onnx", batch=4, opset=17)
    classifier = OnnxClassifier(out)
    assert classifier.batch == 4 and onnx.load(str(out)).opset_import[0].version == 17
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(4))
    ref = torch_logits(model_from_checkpoint(load_checkpoint(checkpoint20)), images, [0.5, 0.4, 0.3],
                       [0.25, 0.2, 0.3])
    got = classifier(images)  # 5 images through a batch-4 graph: one full chunk, one padded
    assert got.shape == (5, 10) and np.abs(got - ref).max() < 1e-4 * max(1.0, float(np.abs(ref).max()))


# ------------------------------------------------------------------------------- torch.export, TorchScript


@pytest.mark.parametrize("fmt,suffix", [("exported", ".pt2"), ("torchscript", ".ts")])
def test_program_round_trip(tmp_path: Path, checkpoint20: Path, fmt: str, suffix: str) -> None:
    out = tmp_path / f"r20{suffix}"
    assert main(["export", str(checkpoint20), "--out", str(out)]) == 0
    model = model_from_checkpoint(load_checkpoint(checkpoint20)).eval()
    if fmt == "exported":
        loaded = torch.export.load(out).module()
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated; the export CLI says so
            loaded = torch.jit.load(str(out))
    x = torch.randn(5, 3, 32, 32)  # a batch size the export never saw
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=1e-5)
    meta = read_export_metadata(out)
    assert meta["model"]["name"] == "resnet20" and meta["classes"] == list("abcdefghij") and not meta["bn_folded"]


def test_export_rejects_unknown_extension_and_bad_batch(tmp_path: Path, capsys) -> None:
    assert main(["export", "resnet20", "--out", str(tmp_path / "x.bin")]) == 2
    assert main(["export", "resnet20", "--out", str(tmp_path / "x.onnx"), "--batch", "0"]) == 2
    err = capsys.readouterr().err
    assert "--format onnx|exported|torchscript" in err and "--batch must be" in err
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------------------------------ BN folding


@pytest.mark.parametrize(
    "name,overrides,folds,left,pair",
    [
        ("resnet20", {}, 19, 0, ("layer1.0.conv1", "layer1.0.bn1")),
        ("resnet", {"depth": 11, "block": "bottleneck", "shortcut": "B"}, 13, 0,
         ("layer1.0.downsample.0", "layer1.0.downsample.1")),
        # Pre-activation: bn1 precedes conv1 (and feeds the shortcut), so only conv1->bn2 (and conv2->bn3) fold,
        # plus the stem's conv1->bn1 (the first unit's pre-activation, He et al. 2016 appendix).
        ("preact_resnet", {"depth": 8, "block": "basic"}, 4, 3, ("layer1.0.conv1", "layer1.0.bn2")),
        ("preact_resnet", {"depth": 11}, 7, 3, ("layer2.0.conv2", "layer2.0.bn3")),
        ("preact_resnet18", {"width": 0.25}, 9, 8, ("conv1", "bn1")),
    ],
)
def test_fuse_bn_parity(name: str, overrides: dict, folds: int, left: int, pair: tuple[str, str]) -> None:
    torch.manual_seed(0)
    model = randomize_bn(create_model(name, **overrides))
    fused = fuse_bn(model)
    assert len(fused.folded_bn) == folds and pair in fused.folded_bn
    assert sum(isinstance(m, nn.BatchNorm2d) for m in fused.modules()) == left
    assert fused.get_submodule(pair[0]).bias is not None and isinstance(fused.get_submodule(pair[1]), nn.Identity)
    assert isinstance(model.get_submodule(pair[1]), nn.BatchNorm2d)  # the original is untouched
    size = model.default_input_size if model.default_input_size[1] <= 32 else (3, 64, 64)
    x = torch.randn(3, *size)
    with torch.no_grad():
        ref, out = model(x), fused(x)
    assert (out - ref).abs().max() <= 1e-5 * max(1.0, float(ref.abs().max()))


# ------------------------------------------------------------------------------------- weights interop


def test_torchvision_state_dict_converts_and_infers_resnet18(tmp_path: Path, capsys) -> None:
    sd = torchvision_resnet18_state_dict()
    torch.save(sd, tmp_path / "resnet18-tv.pth")
    assert infer_architecture(sd) == ("resnet18", {})
    assert main(["convert", str(tmp_path / "resnet18-tv.pth"), str(tmp_path / "r18.safetensors")]) == 0
    assert "inferred from keys and shapes" in capsys.readouterr().out
    loaded = load_model(tmp_path / "r18.safetensors")  # rebuilds itself from the metadata
    assert loaded.model.spec.name == "resnet18" and len(loaded.classes) == 1000
    state = loaded.model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in sd.items())
    assert set(state) - set(sd) == {k for k in state if k.endswith("num_batches_tracked")}
    # The safetensors file is a plain torchvision-keyed state dict for tools that are not resnetlab.
    from safetensors.torch import load_file

    assert set(load_file(str(tmp_path / "r18.safetensors"))) == set(state)
    # A fine-tuned head: another class count is read from fc.weight.
    torch.save(torchvision_resnet18_state_dict(num_classes=7), tmp_path / "ft.pth")
    assert load_model(tmp_path / "ft.pth", "resnet18").model.num_classes == 7


@pytest.mark.parametrize(
    "wrap,notes",
    [
        (lambda sd: sd, []),
        (lambda sd: {"module." + k: v for k, v in sd.items()}, ["stripped prefix 'module.'"]),
        (lambda sd: {"state_dict": {"module." + k: v for k, v in sd.items()}, "epoch": 3,
                     "args": argparse.Namespace(model="resnet20", lr=0.1)},  # timm train.py layout
         ["found under 'state_dict'", "stripped prefix 'module.'"]),
        (lambda sd: {"model": {"_orig_mod." + k: v for k, v in sd.items()}, "optimizer": {}},
         ["found under 'model'", "stripped prefix '_orig_mod.'"]),
        (lambda sd: {"state_dict": {"model.module." + k: v for k, v in sd.items()}},
         ["found under 'state_dict'", "stripped prefix 'model.', 'module.'"]),
    ],
)
def test_wrapped_and_prefixed_checkpoints(tmp_path: Path, wrap, notes: list[str]) -> None:
    model = randomize_bn(create_model("resnet20"))
    torch.save(wrap(model.state_dict()), tmp_path / "w.pth")
    weights = read_weights(tmp_path / "w.pth")
    assert weights.notes == notes
    fresh = create_model("resnet20")
    assert load_pretrained(fresh, tmp_path / "w.pth").startswith("loaded all")
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values()))


def test_strip_prefixes_only_when_every_key_has_it() -> None:
    sd = {"module.conv1.weight": torch.zeros(1), "fc.weight": torch.zeros(1)}
    assert strip_prefixes(sd) == (sd, [])


def test_mismatching_weights_name_the_first_key(tmp_path: Path, capsys) -> None:
    torch.save(torchvision_resnet18_state_dict(), tmp_path / "r18.pth")
    with pytest.raises(UserError, match=r"does not fit resnet34: missing key 'layer1\.2\.conv1\.weight'"):
        load_pretrained(create_model("resnet34"), tmp_path / "r18.pth")
    assert main(["convert", str(tmp_path / "r18.pth"), str(tmp_path / "x.pt"), "--model", "resnet50"]) == 2
    assert "does not fit resnet50: 'layer1.0.conv1.weight' has shape" in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()
    # Ambiguous bare weights: resnet20 (option A shortcuts have no parameters) and plain20 share every key.
    with pytest.raises(UserError, match="several models .*resnet20, plain20"):
        infer_architecture(create_model("resnet20").state_dict())
    torch.save(create_model("resnet18"), tmp_path / "pickled.pt")
    with pytest.raises(UserError, match="pickled Python objects"):
        read_weights(tmp_path / "pickled.pt")


def test_classifier_replaced_only_when_asked(tmp_path: Path) -> None:
    torch.save(torchvision_resnet18_state_dict(), tmp_path / "r18.pth")
    model = create_model("resnet18", num_classes=10)
    with pytest.raises(UserError, match=r"'fc\.weight' has shape \(1000, 512\).*1000 classes, the model 10"):
        load_pretrained(model, tmp_path / "r18.pth")
    fc_before = model.fc.weight.clone()
    message = load_pretrained(model, tmp_path / "r18.pth", replace_classifier=True)
    assert "replaced the classifier (1000 -> 10 classes" in message
    assert torch.equal(model.fc.weight, fc_before)
    assert torch.equal(model.layer4[1].conv2.weight, torchvision_resnet18_state_dict()["layer4.1.conv2.weight"])
    # Replacing the classifier never hides an architecture mismatch.
    with pytest.raises(UserError, match="missing key 'layer1.2.conv1.weight'"):
        load_pretrained(create_model("resnet34", num_classes=10), tmp_path / "r18.pth", replace_classifier=True)


def test_checkpoint_safetensors_checkpoint_round_trip(tmp_path: Path, checkpoint20: Path) -> None:
    assert main(["convert", str(checkpoint20), str(tmp_path / "r20.safetensors")]) == 0
    assert main(["convert", str(tmp_path / "r20.safetensors"), str(tmp_path / "r20.pt")]) == 0
    ckpt = load_checkpoint(tmp_path / "r20.pt")
    assert ckpt["model"]["name"] == "resnet20" and ckpt["classes"] == list("abcdefghij")
    assert ckpt["normalization"] == {"mean": [0.5, 0.4, 0.3], "std": [0.25, 0.2, 0.3], "kind": "channel"}
    original = load_checkpoint(checkpoint20)["state_dict"]
    assert all(torch.equal(ckpt["state_dict"][k], v) for k, v in original.items())


# ------------------------------------------------------------------------------------------- torch.hub


def test_torch_hub_local(tmp_path: Path, checkpoint20: Path) -> None:
    model = torch.hub.load(str(REPO), "resnet56", source="local")
    assert model.spec.name == "resnet56" and model.num_classes == 10
    loaded = torch.hub.load(str(REPO), "resnet20", source="local", weights=str(checkpoint20))
    original = load_checkpoint(checkpoint20)["state_dict"]
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in original.items())
    with pytest.raises(UserError, match="no pretrained weights ship for 'resnet1202'"):
        torch.hub.load(str(REPO), "resnet1202", source="local", pretrained=True)
    spec = importlib.util.spec_from_file_location("hubconf_under_test", REPO / "hubconf.py")
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    entries = {n for n in dir(hubconf) if callable(getattr(hubconf, n)) and not n.startswith("_")}
    assert entries == set(MODELS) and hubconf.dependencies == ["torch"]
