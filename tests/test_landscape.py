"""``resnetlab analyze landscape``: filter-normalised directions, the centre is the network, resuming, the CLI."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from resnetlab.cli import main
from resnetlab.data.resolve import SAMPLE_DIR
from resnetlab.errors import UserError
from resnetlab.experiments.landscape import (
    Perturber, grid_coordinates, interleaved_first, landscape_images, parse_range, random_directions, run_landscape,
)
from resnetlab.models import create_model
from resnetlab.weights import atomic_save, load_checkpoint, make_checkpoint, model_from_checkpoint

from _util import json_numbers

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
MEAN, STD = [0.49, 0.48, 0.45], [0.25, 0.24, 0.26]


@pytest.fixture(scope="module", autouse=True)
def one_thread(tmp_path_factory: pytest.TempPathFactory):
    """One thread (on a shared 2-core machine a second one only spins), and a private decoded-image cache."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RESNETLAB_DATA", str(tmp_path_factory.mktemp("cache")))
        yield
    torch.set_num_threads(before)


def tiny_net(seed: int, depth: int = 8) -> torch.nn.Module:
    """A CIFAR ResNet whose BN layers have non-trivial affine parameters and running statistics, so that a
    direction that moved them, or an evaluation in train mode, would show."""
    torch.manual_seed(seed)
    model = create_model("resnet", depth=depth, family="cifar", num_classes=10)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def save_tiny(path: Path, seed: int, with_data: bool = True) -> Path:
    """A checkpoint saved the way training saves one; ``with_data``: its config names the bundled sample."""
    extra = {"config": {"data": str(SAMPLE_DIR), "seed": 0}} if with_data else {}
    atomic_save(make_checkpoint(tiny_net(seed), classes=CLASSES, mean=MEAN, std=STD, input_size=[3, 32, 32],
                                **extra), path)
    return path


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("ckpt")
    return {"a": save_tiny(d / "a.pt", 1), "b": save_tiny(d / "b.pt", 2), "nodata": save_tiny(d / "n.pt", 3, False)}


# ------------------------------------------------------------------------------ directions


def test_each_direction_filter_has_its_weight_filters_norm_and_biases_and_bn_are_zero() -> None:
    model = tiny_net(0)
    params = dict(model.named_parameters())
    state = model.state_dict()
    d1, d2 = random_directions(model, seed=5, count=2)
    assert set(d1) == {k for k, v in state.items() if v.is_floating_point()}  # BN buffers included, as zeros
    moved = 0
    for name, w in state.items():
        if name not in d1:
            continue
        for d in (d1, d2):
            assert d[name].shape == w.shape
            if name in params and w.dim() > 1:
                w_norms = w.flatten(1).norm(dim=1)
                torch.testing.assert_close(d[name].flatten(1).norm(dim=1), w_norms, rtol=1e-5, atol=1e-7)
                # a direction, not the weights themselves
                cos = F.cosine_similarity(d[name].flatten(), w.flatten(), dim=0)
                assert abs(float(cos)) < 0.5, name
            else:
                assert not d[name].any(), f"{name} should not move"
        if name in params and w.dim() > 1:
            moved += 1
            # the filters' norms differ within a layer, so one scale per layer would fail above
            assert d1[name].flatten(1).norm(dim=1).std() > 0
            assert not torch.equal(d1[name], d2[name])
    assert moved == 8  # ResNet-8: 7 convolutions and the classifier
    assert {"bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var", "fc.bias"} <= set(d1)

    # Perturbing moves exactly the weights by a*d1 + b*d2; biases, BN parameters and statistics stay put.
    theta = {k: v.clone() for k, v in state.items()}
    perturb = Perturber(model, [d1, d2])
    perturb.set((0.5, -0.25))
    after = model.state_dict()
    for name, w in after.items():
        if name in params and w.dim() > 1:
            torch.testing.assert_close(w, theta[name] + 0.5 * d1[name] - 0.25 * d2[name])
        else:
            assert torch.equal(w, theta[name]), name
    perturb.restore()
    assert all(torch.equal(v, theta[k]) for k, v in model.state_dict().items())


def test_directions_depend_only_on_the_seed_and_the_weights_shapes() -> None:
    a, b = tiny_net(1), tiny_net(2)  # same architecture, different weights
    da, da_again, db = random_directions(a, 7)[0], random_directions(a, 7)[0], random_directions(b, 7)[0]
    assert all(torch.equal(da[k], da_again[k]) for k in da)
    unit = lambda d, k: d[k].flatten(1) / d[k].flatten(1).norm(dim=1, keepdim=True)  # noqa: E731
    weights = [k for k, v in dict(a.named_parameters()).items() if v.dim() > 1]
    for k in weights:  # the same draws, each filter scaled to its own network's filter norm
        torch.testing.assert_close(unit(da, k), unit(db, k))
        assert not torch.allclose(da[k], db[k])
    other = random_directions(a, 8)[0]
    assert not any(torch.allclose(unit(da, k), unit(other, k)) for k in weights)
    # Another architecture, the same seed: its own shapes, the same first draw where the first shape agrees.
    deeper = random_directions(tiny_net(1, depth=14), 7)[0]
    torch.testing.assert_close(unit(deeper, "conv1.weight"), unit(da, "conv1.weight"))
    # The 1-D direction is the 2-D run's first direction.
    assert all(torch.equal(da[k], random_directions(a, 7, count=2)[0][k]) for k in da)


def test_grid_range_and_subset_helpers() -> None:
    assert grid_coordinates(-1, 1, 21)[10] == 0.0 and grid_coordinates(-1, 1, 21)[-1] == 1.0
    assert grid_coordinates(-0.3, 0.3, 7)[3] == 0.0
    assert parse_range("-1:1") == (-1.0, 1.0) and parse_range("-0.5:2e-1") == (-0.5, 0.2)
    for bad in ("1", "1:-1", "0:0", "a:b", "-1:1:2", "nan:1"):
        with pytest.raises(UserError):
            parse_range(bad)
    labels = torch.tensor([0] * 5 + [1] * 5 + [2] * 5)  # sorted by class, as an image folder is
    assert interleaved_first(labels, 6).tolist() == [0, 1, 5, 6, 10, 11]
    assert interleaved_first(labels, 0).tolist() == list(range(15))


# ------------------------------------------------------------------------------ evaluation


def test_centre_point_is_the_unperturbed_network_evaluated_directly(ckpts, tmp_path: Path) -> None:
    run = run_landscape([str(ckpts["a"])], tmp_path / "one", dims=1, grid=5, range_="-1:1", subset=50,
                        data="sample", batch_size=17, figures=False, log=lambda s: None)
    rec = run["results"]["checkpoints"][0]
    assert run["complete"] and rec["images"] == 50 and rec["centre_on_grid"]

    ckpt = load_checkpoint(ckpts["a"])
    imgs = landscape_images(ckpt, "a", "sample", 50, log=lambda s: None)
    assert torch.bincount(imgs.labels).tolist() == [5] * 10  # class by class, not the first class's 50
    x = (imgs.images.float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    model = model_from_checkpoint(ckpt).eval()
    with torch.no_grad():
        logits = model(x)
        train_mode_loss = float(F.cross_entropy(model.train()(x), imgs.labels))
    loss = float(F.cross_entropy(logits, imgs.labels))
    error = int((logits.argmax(1) != imgs.labels).sum()) / len(imgs.labels)
    assert rec["loss"][2] == pytest.approx(loss, abs=1e-6) and rec["centre"]["loss"] == rec["loss"][2]
    assert rec["error"][2] == pytest.approx(error, abs=1e-9)
    assert abs(train_mode_loss - loss) > 1e-3  # BN in train mode would have been noticed
    assert all(abs(v - loss) > 1e-4 for i, v in enumerate(rec["loss"]) if i != 2)  # the others moved

    # The 1-D landscape is the beta = 0 column of the 2-D one with the same seed.
    two = run_landscape([str(ckpts["a"])], tmp_path / "two", dims=2, grid=5, subset=50, data="sample",
                        batch_size=17, figures=False, log=lambda s: None)["results"]["checkpoints"][0]
    assert [row[2] for row in two["loss"]] == pytest.approx(rec["loss"], abs=1e-6)


def test_a_resumed_grid_gives_the_uninterrupted_results_and_refuses_other_arguments(ckpts, tmp_path: Path) -> None:
    lines: list[str] = []
    args = dict(dims=2, grid=3, range_="-0.5:0.5", subset=30, data="sample", seed=1, figures=False,
                log=lambda s: None)
    both = [str(ckpts["a"]), str(ckpts["b"])]
    full = run_landscape(both, tmp_path / "full", **{**args, "log": lines.append, "progress": False})
    assert full["complete"] and full["new_points"] == 18
    # Without a terminal, plain progress lines (every point of a 9-point grid but the last), one per checkpoint.
    progress = [x for x in lines if re.fullmatch(r".+: \d/9 points, \d+\.\d\d s per point", x)]
    assert [x.split(": ")[1].split(",")[0] for x in progress[:3]] == ["1/9 points", "2/9 points", "3/9 points"]
    assert len(progress) == 16 and sum("all 9 points done" in x for x in lines) == 2

    # interrupted by a limit, twice, then finished
    out = tmp_path / "resumed"
    first = run_landscape(both, out, max_points=4, **args)
    assert not first["complete"] and first["done"] == 4 and not (out / "results.json").exists()
    assert sum(len(v) for v in json.loads((out / "partial.json").read_text())["points"].values()) == 4
    second = run_landscape(both, out, max_points=7, **args)
    assert not second["complete"] and second["done"] == 11
    last = run_landscape(both, out, **args)
    assert last["complete"] and last["new_points"] == 7
    for a, b in zip(full["results"]["checkpoints"], last["results"]["checkpoints"]):
        assert a["loss"] == b["loss"] and a["error"] == b["error"]
    assert last["results"]["images_evaluated"] == full["results"]["images_evaluated"] == 18 * 30

    # a partial file from an interrupted run: what it holds is kept, the rest evaluated
    sim = tmp_path / "simulated"
    sim.mkdir()
    partial = json.loads((tmp_path / "full" / "partial.json").read_text())
    for key in ("0,0", "1,2", "2,2"):
        del partial["points"]["1"][key]
    partial["points"]["0"]["0,1"]["loss"] = 123.0  # a recorded point is not evaluated again
    (sim / "partial.json").write_text(json.dumps(partial))
    res = run_landscape(both, sim, **args)
    assert res["new_points"] == 3
    a0, b0 = full["results"]["checkpoints"], res["results"]["checkpoints"]
    assert b0[0]["loss"][0][1] == 123.0 and b0[1]["loss"] == a0[1]["loss"] and b0[1]["error"] == a0[1]["error"]

    with pytest.raises(UserError, match=r"other arguments \(grid 3 there, 5 now\)"):
        run_landscape(both, out, **{**args, "grid": 5})
    with pytest.raises(UserError, match="other arguments"):
        run_landscape(both[:1], out, **args)


# ------------------------------------------------------------------------------------ CLI


def test_cli_writes_results_report_and_figures_for_1d_and_2d(ckpts, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    out1 = tmp_path / "line"
    # no --data: the checkpoint's own training data, from its config
    assert main(["analyze", "landscape", str(ckpts["a"]), "--grid", "5", "--range", "-0.5:0.5", "--subset", "40",
                 "--out", str(out1)]) == 0
    printed = capsys.readouterr().out
    assert "loss at centre" in printed and "200 images evaluated" in printed
    assert {p.name for p in out1.iterdir()} == {"results.json", "config.json", "report.md", "partial.json",
                                                 "landscape-1d.png"}
    assert (out1 / "landscape-1d.png").read_bytes()[:8] == PNG_MAGIC
    results = json.loads((out1 / "results.json").read_text())
    assert all(math.isfinite(v) for v in json_numbers(results)) and "non_finite" not in results
    assert results["coordinates"]["alpha"] == [-0.5, -0.25, 0.0, 0.25, 0.5]
    assert len(results["checkpoints"][0]["loss"]) == 5 and results["images_evaluated"] == 200
    assert results["wall_seconds"] > 0 and results["settings"]["data"] is None
    config = json.loads((out1 / "config.json").read_text())
    assert config["analysis"] == "landscape" and config["grid"] == 5 and config["range"] == [-0.5, 0.5]
    report = (out1 / "report.md").read_text()
    cmd = f"resnetlab analyze landscape {ckpts['a']} --dims 1 --grid 5 --range=-0.5:0.5 --subset 40"
    assert cmd in report and "mean loss rise at edge" in report and "200 image evaluations" in report
    assert "![landscape-1d](landscape-1d.png)" in report
    # the same command again: nothing left to evaluate, the outputs rewritten
    assert main(["analyze", "landscape", str(ckpts["a"]), "--grid", "5", "--range=-0.5:0.5", "--subset", "40",
                 "--out", str(out1)]) == 0
    assert "(0 new points, 0 images)" in capsys.readouterr().out

    out2 = tmp_path / "plane"
    assert main(["analyze", "landscape", str(ckpts["a"]), str(ckpts["b"]), "--dims", "2", "--grid", "3",
                 "--subset", "20", "--data", "sample", "--seed", "4", "--out", str(out2)]) == 0
    pngs = sorted(p.name for p in out2.glob("*.png"))
    assert pngs == ["00-a-contour.png", "00-a-surface.png", "01-b-contour.png", "01-b-surface.png"]
    assert all((out2 / p).read_bytes()[:8] == PNG_MAGIC for p in pngs)
    results = json.loads((out2 / "results.json").read_text())
    assert [len(r["loss"]) for r in results["checkpoints"]] == [3, 3] and len(results["checkpoints"][0]["loss"][0]) == 3
    assert results["checkpoints"][0]["loss"] != results["checkpoints"][1]["loss"]
    assert all(f"![{Path(p).stem}]({p})" in (out2 / "report.md").read_text() for p in pngs)


@pytest.mark.parametrize("extra,message", [
    (["--range", "1:-1"], "--range"),
    (["--range", "-1"], "--range must be LO:HI"),
    (["--grid", "1"], "--grid must be at least 2"),
    (["--dims", "3"], "--dims must be 1 or 2"),
    (["--subset", "-1"], "--subset"),
])
def test_bad_arguments_exit_2_with_one_line(ckpts, tmp_path: Path, capsys: pytest.CaptureFixture, extra: list[str],
                                            message: str) -> None:
    assert main(["analyze", "landscape", str(ckpts["a"]), *extra, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("resnetlab: error:") and message in err[0]
    assert not (tmp_path / "o").exists()


def test_missing_checkpoint_no_data_and_changed_arguments_exit_2(ckpts, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture) -> None:
    def one_line() -> str:
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("resnetlab: error:"), err
        return err[0]

    assert main(["analyze", "landscape", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "o")]) == 2
    assert "checkpoint not found" in one_line()
    assert main(["analyze", "landscape", str(ckpts["nodata"]), "--out", str(tmp_path / "o")]) == 2
    assert "records no training data; pass --data" in one_line()
    out = tmp_path / "r"
    assert main(["analyze", "landscape", str(ckpts["a"]), "--grid", "2", "--subset", "10", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["analyze", "landscape", str(ckpts["a"]), "--grid", "2", "--subset", "12", "--out", str(out)]) == 2
    assert "other arguments (subset 10 there, 12 now)" in one_line()
    # a checkpoint rewritten under the same name is noticed
    shutil.copy(ckpts["b"], tmp_path / "swap.pt")
    assert main(["analyze", "landscape", str(tmp_path / "swap.pt"), "--grid", "2", "--subset", "10", "--out",
                 str(tmp_path / "s")]) == 0
    shutil.copy(ckpts["a"], tmp_path / "swap.pt")
    capsys.readouterr()
    assert main(["analyze", "landscape", str(tmp_path / "swap.pt"), "--grid", "2", "--subset", "10", "--out",
                 str(tmp_path / "s")]) == 2
    assert "weights of" in one_line()
