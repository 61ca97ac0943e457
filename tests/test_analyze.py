"""``resnetlab analyze``: every analysis end to end (quick settings), one exact check each, report writer, plots."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from resnetlab.cli import main
from resnetlab.errors import UserError
from resnetlab.experiments.analyze import (
    ANALYSES, cifar_net, gradient_field, lag_correlations, layer_gradient_norms, line_inputs, run_analysis,
)
from resnetlab.experiments.plots import Panel, Series, new_figure, plot_panels, save_figure
from resnetlab.experiments.report import write_report

from _util import json_numbers

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These models see a handful of images: a second intra-op thread gains nothing, and on a shared
    2-core machine OpenMP spin-waiting makes 2 threads 5-50x slower than 1. Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def quick_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each analysis once through the CLI with --quick (a few seconds each)."""
    outs = {}
    for name in ANALYSES:
        out = tmp_path_factory.mktemp(name) / "out"
        assert main(["analyze", name, "--quick", "--out", str(out), "--seed", "0"]) == 0
        outs[name] = out
    return outs


@pytest.mark.parametrize("name", list(ANALYSES))
def test_quick_run_writes_report_figure_and_finite_numbers(quick_runs: dict[str, Path], name: str) -> None:
    out = quick_runs[name]
    png = out / f"{name}.png"
    assert png.read_bytes()[:8] == PNG_MAGIC
    results = json.loads((out / "results.json").read_text())
    numbers = list(json_numbers(results))
    assert numbers and all(math.isfinite(v) for v in numbers)
    assert "non_finite" not in results
    config = json.loads((out / "config.json").read_text())
    assert config["analysis"] == name and config["quick"] is True
    report = (out / "report.md").read_text()
    assert f"resnetlab analyze {name} --out {out} --seed 0 --quick" in report
    assert f"![{name}]({name}.png)" in report


def test_flops_table1_v1_and_v15(quick_runs: dict[str, Path]) -> None:
    results = json.loads((quick_runs["flops"] / "results.json").read_text())
    r50 = results["imagenet"]["resnet50"]
    assert round(r50["macs_v1_5"] / 1e9, 3) == 4.089 and round(r50["macs_v1"] / 1e9, 3) == 3.858
    assert r50["macs_v1_5"] == 4_089_184_256 and r50["macs_v1"] == 3_857_973_248
    # Basic blocks have no 1x1 to move the stride to: v1 and v1.5 cost the same.
    r18 = results["imagenet"]["resnet18"]
    assert r18["macs_v1"] == r18["macs_v1_5"] == 1_814_073_344
    assert results["vgg19_paper_gmacs"] == 19.6
    assert results["cifar"]["resnet20"] == {"macs": 40_551_040, "params": 269_722, "depth": 20,
                                            "block": "BasicBlock", "paper_params_m": 0.27}


def test_gradients_one_norm_per_layer(quick_runs: dict[str, Path]) -> None:
    results = json.loads((quick_runs["gradients"] / "results.json").read_text())
    for depth in results["depths"]:
        names = results["layer_names"][str(depth)]
        assert len(names) == depth and names[0] == "conv1" and names[-1] == "fc"
        assert len(results["grad_norm_geomean"]["no_bn"]["resnet"][str(depth)]) == depth


def test_gradients_with_bn_residual_stays_balanced_plain_explodes() -> None:
    # What is true at init (checked over seeds, batch 4 to 128): with BN, plain-56's first layer gets
    # 600-3500x the gradient of its last; ResNet-56 stays within 0.1-1x.
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 3, 32, 32, generator=gen), torch.randint(0, 10, (8,), generator=gen)
    ratios = {}
    for residual in (False, True):
        names, norms, loss = layer_gradient_norms(56, residual, True, x, y, init_seed=1)
        assert len(norms) == 56 and math.isfinite(loss)
        ratios[residual] = norms[0] / norms[-1]
    assert ratios[False] > 100
    assert 0.1 < ratios[True] < 10


def test_without_bn_means_no_norm_layers() -> None:
    model = cifar_net(20, residual=True, bn=False)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in cifar_net(20, residual=True).modules()) == 19


def test_shattered_residual_gradients_stay_correlated_at_depth_56() -> None:
    # Balduzzi et al. 2017: with BN, a 56-layer plain net's input gradient is white noise along a
    # line (neighbour correlation ~0.0), the residual net's stays correlated (~0.86 over seeds 0-3).
    gen = torch.Generator().manual_seed(0)
    x = line_inputs(12, gen)
    calibration = torch.randn(16, 3, 32, 32, generator=gen)
    plain = lag_correlations(gradient_field(56, False, True, x, calibration, init_seed=0), 1)[0]
    residual = lag_correlations(gradient_field(56, True, True, x, calibration, init_seed=0), 1)[0]
    assert residual > 0.6 and abs(plain) < 0.2


def test_lag_correlations_exact() -> None:
    g = torch.randn(1, 3, 4, 4, dtype=torch.float64)
    assert lag_correlations(torch.cat([g, 2 * g, g]), 2) == pytest.approx([1.0, 1.0])
    assert lag_correlations(torch.cat([g, -g]), 1) == pytest.approx([-1.0])
    x = line_inputs(3, torch.Generator().manual_seed(0))
    assert torch.equal(x[0], torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(0)))


def test_write_report_records_non_finite_as_null(tmp_path: Path) -> None:
    fig_path = plot_panels(tmp_path / "curve.png", [Panel("t", "x", "y", [Series("a", [1, 2], [3.0, 4.0])])],
                           "Data: test | Schedule: none")
    results = {"ok": 1.5, "bad": [1.0, float("nan")], "nested": {"inf": float("inf")}, "n": torch.tensor(2)}
    report = write_report(tmp_path, "T", "resnetlab analyze x", {"lr": 0.1}, results, [("S", "body")],
                          [str(fig_path)])
    text = (tmp_path / "results.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    data = json.loads(text)
    assert data["bad"] == [1.0, None] and data["nested"]["inf"] is None and data["n"] == 2
    assert data["non_finite"] == ["bad[1]: nan", "nested.inf: inf"]
    assert json.loads((tmp_path / "config.json").read_text()) == {"lr": 0.1}
    md = report.read_text()
    assert md.startswith("# T") and "resnetlab analyze x" in md and "![curve](curve.png)" in md
    assert "`bad[1]: nan`" in md
    with pytest.raises(FileNotFoundError):
        write_report(tmp_path, "T", "c", {}, {}, [], ["missing.png"])
    with pytest.raises(ValueError, match="reserved"):
        write_report(tmp_path, "T", "c", {}, {"x": float("nan"), "non_finite": 1}, [], [])


def test_every_figure_needs_a_caption(tmp_path: Path) -> None:
    fig, _ = new_figure()
    with pytest.raises(ValueError, match="caption"):
        save_figure(fig, tmp_path / "x.png", " ")
    fig, _ = new_figure()
    save_figure(fig, tmp_path / "x.png", "Data: test | Schedule: none")
    assert [t.get_text() for t in fig.texts if t.get_gid() == "caption"] == ["Data: test | Schedule: none"]


def test_missing_matplotlib_is_a_user_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` raise ImportError
    with pytest.raises(UserError, match=r"pip install resnetlab\[plot\]"):
        run_analysis("flops", tmp_path / "out", quick=True)
    assert main(["analyze", "flops", "--quick", "--out", str(tmp_path / "out")]) == 2
    assert "pip install resnetlab[plot]" in capsys.readouterr().err


def test_out_that_is_a_file_is_a_user_error(tmp_path: Path, capsys) -> None:
    target = tmp_path / "file"
    target.write_text("")
    assert main(["analyze", "flops", "--quick", "--out", str(target)]) == 2
    assert "not a folder" in capsys.readouterr().err


def test_matplotlib_is_a_core_dependency() -> None:
    """`pip install resnetlab` alone must give figures (reproduce, curves.png): matplotlib is not an extra."""
    import importlib.metadata as md

    requires = md.requires("resnetlab") or []
    core = [r for r in requires if "extra ==" not in r]
    assert any(r.replace(" ", "").startswith("matplotlib") for r in core), core
