"""Model zoo: golden parameter counts and multiply-adds, shapes, overrides, compile/export."""

from __future__ import annotations

import io
import pickle
import subprocess
import sys

import pytest
import torch
from torch import nn

import resnetlab
from resnetlab.errors import UserError
from resnetlab.models import MODELS, PadShortcut, create_model, list_models
from resnetlab.models.profile import block_arithmetic, count_layers, count_macs, count_params, meta_model

# Golden numbers from the issue (torchvision's counts for the ImageNet family; the paper's CIFAR family).
PARAMS = {
    "resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032, "resnet101": 44_549_160,
    "resnet152": 60_192_808, "resnext50_32x4d": 25_028_904, "resnext101_32x8d": 88_791_336,
    "resnext101_64x4d": 83_455_272, "wide_resnet50_2": 68_883_240, "wide_resnet101_2": 126_886_696,
    "resnet20": 269_722, "resnet32": 464_154, "resnet44": 658_586, "resnet56": 853_018,
    "resnet110": 1_727_962, "resnet1202": 19_421_274,
    "plain20": 269_722, "plain32": 464_154, "plain44": 658_586, "plain56": 853_018, "plain110": 1_727_962,
}
MACS_V15 = {"resnet18": 1.814, "resnet34": 3.664, "resnet50": 4.089, "resnet101": 7.801, "resnet152": 11.514}
MACS_V1 = {"resnet50": 3.858, "resnet101": 7.570, "resnet152": 11.282}


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_parameter_count(name: str) -> None:
    assert count_params(meta_model(name)) == PARAMS[name]


def test_option_b_count_and_option_a_adds_nothing() -> None:
    assert count_params(meta_model("resnet20", shortcut="B")) == 272_474
    model = create_model("resnet20")
    pads = [m for m in model.modules() if isinstance(m, PadShortcut)]
    assert len(pads) == 2 and all(sum(p.numel() for p in m.parameters()) == 0 for m in pads)
    assert count_params(model) == count_params(create_model("plain20"))
    # Option C projects on every unit: 9 units, each a 1x1 conv + BN.
    assert count_params(meta_model("resnet20", shortcut="C")) > count_params(meta_model("resnet20", shortcut="B"))


def test_meta_model_draws_no_values_and_stays_light() -> None:
    # `reproduce` counts parameters of every planned run with meta_model; torch's meta normal_ imports
    # dynamo on first use (about 3 s on a 2-core AVX2 CPU), so meta models skip the He init.
    code = ("import sys; from resnetlab.models.profile import meta_model, count_params; "
            "m = meta_model('resnet56'); print(count_params(m), m.conv1.weight.is_meta, 'torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == [str(PARAMS["resnet56"]), "True", "False"]


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("size", [8, 9])
def test_option_a_subsamples_exactly_and_keeps_the_gradient_layout(channels_last: bool, size: int) -> None:
    """Option A keeps every second pixel and pads zeros; on channels_last activations the
    input gradient must stay channels_last, or the stage boundary's add and ReLU backward
    mix layouts and run PyTorch's slow path."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(2, 4, size, size).contiguous(memory_format=fmt).requires_grad_()
    y = PadShortcut(4, 8, stride=2)(x)
    expected = torch.cat([x.detach()[:, :, ::2, ::2], torch.zeros(2, 4, (size + 1) // 2, (size + 1) // 2)], dim=1)
    assert torch.equal(y, expected)
    grad = torch.randn_like(y)  # keeps y's layout
    (gx,) = torch.autograd.grad(y, x, grad)
    assert gx.is_contiguous(memory_format=fmt)
    expected_gx = torch.zeros(2, 4, size, size)
    expected_gx[:, :, ::2, ::2] = grad[:, :4]
    assert torch.equal(gx, expected_gx)


@pytest.mark.parametrize("name,expected", [("preact_resnet110", 1.7e6), ("preact_resnet164", 1.7e6),
                                           ("preact_resnet1001", 10.2e6)])
def test_preact_counts_match_the_2016_paper(name: str, expected: float) -> None:
    assert abs(count_params(meta_model(name)) - expected) / expected < 0.02


@pytest.mark.parametrize("name", sorted(MACS_V15))
def test_macs_v15(name: str) -> None:
    model = meta_model(name)
    assert round(count_macs(model, (3, 224, 224)) / 1e9, 3) == MACS_V15[name]


@pytest.mark.parametrize("name", sorted(MACS_V1))
def test_macs_v1_stride_in_1x1(name: str) -> None:
    model = meta_model(name, stride_in_1x1=True)
    assert round(count_macs(model, (3, 224, 224)) / 1e9, 3) == MACS_V1[name]




@pytest.mark.parametrize("name", [n for n in list_models() if not n.startswith(("resnext", "wide"))])
def test_depth_is_in_the_name(name: str) -> None:
    depth = int("".join(c for c in name.split("_")[-1] if c.isdigit()))
    assert count_layers(meta_model(name)) == depth


@pytest.mark.parametrize("name", list_models())
def test_forward_backward_every_model(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=7)
    family = MODELS[name].family
    # Batch 2 keeps BN's training statistics defined at a 1x1 final map; small sizes keep it cheap.
    x = torch.randn(2, 3, 32 if family == "imagenet" else 16, 32 if family == "imagenet" else 16)
    out = model(x)
    assert out.shape == (2, 7)
    out.float().pow(2).mean().backward()
    assert torch.isfinite(out).all()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_generic_depth_route_and_errors() -> None:
    model = create_model("resnet", depth=26, family="cifar")
    assert count_layers(model) == 26
    assert count_params(create_model("resnet", depth=20, family="cifar")) == PARAMS["resnet20"]
    assert count_params(meta_model("plain", depth=56)) == PARAMS["plain56"]
    assert count_params(meta_model("resnet", depth=50, family="imagenet")) == PARAMS["resnet50"]
    assert count_layers(meta_model("preact_resnet", depth=74, family="cifar")) == 74
    with pytest.raises(UserError, match="6n\\+2"):
        create_model("resnet", depth=21, family="cifar")
    with pytest.raises(UserError, match="9n\\+2"):
        create_model("preact_resnet", depth=57, family="cifar")
    with pytest.raises(UserError, match="ImageNet depth"):
        create_model("resnet", depth=20, family="imagenet")
    with pytest.raises(UserError, match="depth="):
        create_model("resnet")
    with pytest.raises(UserError, match="did you mean"):
        create_model("resnet57")
    with pytest.raises(UserError, match="unknown argument"):
        create_model("resnet20", num_clases=10)
    with pytest.raises(UserError, match="shortcut"):
        create_model("resnet20", shortcut="D")


def test_overrides() -> None:
    x1 = torch.randn(2, 1, 32, 32)
    gray = create_model("resnet20", in_chans=1, num_classes=3)
    assert gray(x1).shape == (2, 3)
    cifar18 = create_model("resnet18", stem="cifar", num_classes=10)
    feats = cifar18.forward_features(torch.randn(2, 3, 32, 32))
    assert [tuple(f.shape[1:]) for f in feats] == [(64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4)]
    wide = create_model("resnet20", width=2)
    assert wide.layer3[0].conv1.out_channels == 128
    gn = create_model("resnet20", norm_layer="groupnorm")
    assert any(isinstance(m, nn.GroupNorm) for m in gn.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in gn.modules())


def test_forward_features_imagenet() -> None:
    model = create_model("resnet50").eval()
    feats = model.forward_features(torch.randn(1, 3, 64, 64))
    assert [tuple(f.shape[1:]) for f in feats] == [(256, 16, 16), (512, 8, 8), (1024, 4, 4), (2048, 2, 2)]


def test_zero_init_residual_makes_units_identity() -> None:
    model = create_model("resnet20", zero_init_residual=True).eval()
    assert all(b.bn2.weight.abs().sum() == 0 for s in (model.layer1, model.layer2, model.layer3) for b in s)
    x = torch.relu(torch.randn(2, 16, 8, 8))
    assert torch.equal(model.layer1[1](x), x)  # relu(0 + identity) of a non-negative input
    pre = create_model("preact_resnet164", zero_init_residual=True)
    assert pre.layer2[1].conv3.weight.abs().sum() == 0


def test_init_matches_torchvision_recipe() -> None:
    model = create_model("resnet56")
    conv = model.layer2[1].conv1
    # Kaiming normal, fan_out mode: std = sqrt(2 / (out_channels * 9)).
    expected = (2 / (conv.out_channels * 9)) ** 0.5
    assert abs(conv.weight.std().item() - expected) / expected < 0.05
    bn = model.layer2[1].bn1
    assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)


def test_state_dict_round_trip_and_pickle() -> None:
    torch.manual_seed(0)
    a = create_model("resnet20").eval()
    b = create_model("resnet20").eval()
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b.load_state_dict(torch.load(buf, weights_only=True), strict=True)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(a(x), b(x))
    c = pickle.loads(pickle.dumps(a))  # option A is a module, not a lambda
    assert torch.equal(a(x), c(x))


def test_torchvision_state_dict_keys() -> None:
    keys = set(create_model("resnet50").state_dict())
    for key in ["conv1.weight", "bn1.running_mean", "layer1.0.conv1.weight", "layer1.0.downsample.0.weight",
                "layer1.0.downsample.1.num_batches_tracked", "layer4.2.bn3.bias", "fc.weight", "fc.bias"]:
        assert key in keys
    assert len(keys) == 320  # torchvision resnet50 has 320 state_dict entries
    assert len(create_model("resnet18").state_dict()) == 122


def test_spec_records_how_to_rebuild() -> None:
    model = create_model("resnet", depth=32, family="cifar", num_classes=100)
    again = create_model(model.spec.name, **model.spec.overrides)
    assert count_params(again) == count_params(model) and again.fc.out_features == 100


def test_block_arithmetic() -> None:
    basic, bottleneck = block_arithmetic()
    assert basic.conv_weights == 1_179_648
    assert bottleneck.conv_weights == 69_632
    assert basic.macs == 1_179_648 * 56 * 56 and bottleneck.macs == 69_632 * 56 * 56


def test_public_api() -> None:
    assert resnetlab.create_model is create_model
    assert "resnet56" in resnetlab.list_models() and "resnext101_64x4d" in resnetlab.list_models()
    for cls in (resnetlab.BasicBlock, resnetlab.Bottleneck, resnetlab.PreActBasicBlock, resnetlab.PreActBottleneck):
        assert cls.expansion in (1, 4)


# ------------------------------------------------------------------ pre-activation unit order (He et al. 2016)


def _bn(m: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.batch_norm(x, m.running_mean, m.running_var, m.weight, m.bias, False, 0.0, m.eps)


def _conv(m: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.conv2d(x, m.weight, None, m.stride, m.padding)


def _paper_preact_forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The 2016 paper's order, written from its text with functional ops and the model's own parameters.

    Appendix: "for the first Residual Unit (that follows a stand-alone convolutional layer, conv1), we adopt
    the first activation right after conv1 and before splitting into two paths"; every other unit is
    Fig. 4(e): BN-ReLU-conv (twice, or three times in a bottleneck) on the residual path, the identity (or a
    projection of the activated input) on the shortcut, a plain sum; BN-ReLU after the last unit (Fig. 5).
    """
    relu = torch.relu
    h = _conv(model.conv1, x)
    h = relu(_bn(model.bn1, h))  # the first activation, before the split
    if isinstance(model.maxpool, nn.MaxPool2d):
        h = model.maxpool(h)
    first = True
    for name in model.stage_names:
        for unit in getattr(model, name):
            a = h if first else relu(_bn(unit.bn1, h))
            convs = [unit.conv1, unit.conv2] + ([unit.conv3] if hasattr(unit, "conv3") else [])
            bns = [unit.bn2] + ([unit.bn3] if hasattr(unit, "bn3") else [])
            r = _conv(convs[0], a)
            for bn, conv in zip(bns, convs[1:]):
                r = _conv(conv, relu(_bn(bn, r)))
            shortcut = h if unit.downsample is None else unit.downsample(a)
            h, first = r + shortcut, False
    h = relu(_bn(model.final_bn, h))
    return model.fc(torch.flatten(model.avgpool(h), 1))


@pytest.mark.parametrize("name,overrides,size", [
    ("preact_resnet110", {}, 32), ("preact_resnet", {"depth": 20, "block": "basic", "shortcut": "A"}, 32),
    ("preact_resnet164", {}, 32), ("preact_resnet18", {"width": 0.25}, 64), ("preact_resnet50", {"width": 0.25}, 64),
])
def test_preact_units_follow_the_2016_paper(name: str, overrides: dict, size: int) -> None:
    from test_export import randomize_bn

    torch.manual_seed(0)
    model = randomize_bn(create_model(name, num_classes=10, **overrides))
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        assert torch.allclose(model(x), _paper_preact_forward(model, x), rtol=1e-4, atol=1e-5)
    # BN-ReLU is applied once between conv1 and the first unit, not twice (stem and unit).
    first = model.layer1[0]
    assert isinstance(first.bn1, nn.Identity) and isinstance(model.bn1, nn.BatchNorm2d)
    assert isinstance(model.layer1[1].bn1, nn.BatchNorm2d)
