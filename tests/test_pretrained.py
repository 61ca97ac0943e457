"""Shipped weights: the files match their metadata, load strictly, give pinned logits, and a name works
wherever a checkpoint path does (create_model, evaluate, predict, export, --init)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import resnetlab
from resnetlab.cli import main
from resnetlab.weights import load_checkpoint
from resnetlab.engine.config import recipe_config
from resnetlab.engine.train import session_precision, train
from resnetlab.errors import UserError
from resnetlab.export.publish import publish, sample_logits
from resnetlab.models import pretrained

SAMPLE = str(Path(__file__).resolve().parents[1] / "resnetlab" / "data" / "sample" / "cifar10-sample")
SHIPPED = resnetlab.list_pretrained()


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESNETLAB_DATA", str(tmp_path_factory.getbasetemp() / "cache"))


# ------------------------------------------------------------------ the files that ship


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_file_matches_its_metadata(name: str) -> None:
    weights = pretrained.get_weights(name)
    assert pretrained.file_sha256(weights.path) == weights.sha256
    assert weights.path.stat().st_size == weights.meta["size_bytes"]
    for key in ("recipe", "iterations", "data", "normalization", "precision", "hardware", "wall_time_s",
                "commit", "val_top1_err"):
        assert weights.meta.get(key) is not None, key


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_weights_load_strictly_and_give_the_pinned_logits(name: str) -> None:
    model = resnetlab.create_model(name, pretrained=True)  # strict: a missing or extra key raises
    record = pretrained.get_weights(name).record()
    got = sample_logits(model, record["normalization"])[: len(pretrained.get_weights(name).meta["sample_logits"])]
    want = torch.tensor(pretrained.get_weights(name).meta["sample_logits"])
    # 1e-3: fp32 summation order differs between CPUs (AVX2, AVX-512, AMX kernels) by far less; a changed
    # architecture, normalisation or weight file moves these logits by whole units.
    assert torch.allclose(got, want, atol=1e-3), (got - want).abs().max()


# ------------------------------------------------------------------ publishing and loading by name


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 6-iteration paper-cifar ResNet-20 published into a weights folder of its own."""
    root = tmp_path_factory.mktemp("publish")
    mp = pytest.MonkeyPatch()
    mp.setenv("RESNETLAB_DATA", str(root / "cache"))
    cfg = recipe_config("paper-cifar", data=SAMPLE, subset=320, val_split=100, batch_size=32, iters=6,
                        eval_every=6, out=str(root / "run"), device="cpu", seed=1)
    train(cfg, log=lambda _m: None)
    publish(str(root / "run" / "last.pt"), "resnet20", commit="abc1234", hardware="test machine",
            dest=root / "weights", log=lambda _m: None)
    mp.undo()
    return root


@pytest.fixture
def shipped_here(published: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(pretrained, "INDEX_FILE", published / "weights" / "index.json")
    return published


def test_publish_records_how_the_weights_were_made(shipped_here: Path) -> None:
    entry = json.loads((shipped_here / "weights" / "index.json").read_text())["resnet20"]
    ckpt = load_checkpoint(shipped_here / "run" / "last.pt")
    assert entry["recipe"] == "paper-cifar" and entry["iterations"] == 6 and entry["commit"] == "abc1234"
    assert entry["normalization"] == "pixel-mean" and entry["val_split"] == 100
    assert entry["val_top1_err"] == ckpt["metrics"]["val_top1_err"]
    assert entry["train_images"] == 320 and entry["dtype"] in ("float16", "float32")
    assert entry["sha256"] == pretrained.file_sha256(shipped_here / "weights" / entry["file"])
    assert [(s["from_iteration"], s["device"]) for s in entry["sessions"]] == [(0, "cpu")]
    assert entry["precision"] in ("fp32", "bf16 autocast")  # the engine's default for this CPU, one session


def test_publish_without_hardware_names_the_sessions_machines(shipped_here: Path, tmp_path: Path) -> None:
    entry = publish(str(shipped_here / "run" / "last.pt"), "resnet20", commit="abc1234", dest=tmp_path,
                    log=lambda _m: None)
    logged = load_checkpoint(shipped_here / "run" / "last.pt")["config"]["resolved"]["sessions"][0]["hardware"]
    assert entry["hardware"] == logged and logged.startswith("cpu (")


def test_precision_names_each_change_of_a_resumed_run() -> None:
    sessions = [{"from_iteration": 0, "amp": "none"}, {"from_iteration": 18_954, "amp": "none"},
                {"from_iteration": 37_312, "amp": "bf16"}]
    assert session_precision({"resolved": {"sessions": sessions}}) == "fp32, bf16 autocast from 37,312"
    assert session_precision({"resolved": {"amp": "bf16"}}) == "bf16 autocast"  # a run from before the log
    assert session_precision({"resolved": {"amp": "fp16"}, "compile": False}) == "fp16 autocast"


def test_pretrained_model_equals_the_checkpoint(shipped_here: Path) -> None:
    ckpt = load_checkpoint(shipped_here / "run" / "last.pt")
    model = resnetlab.create_model("resnet20", pretrained=True)
    entry = pretrained.get_weights("resnet20").meta
    atol = 0 if entry["dtype"] == "float32" else 1e-2
    for key, value in model.state_dict().items():
        assert torch.allclose(value.float(), ckpt["state_dict"][key].float(), atol=atol, rtol=1e-3), key
    assert resnetlab.list_pretrained() == ["resnet20"]


def test_a_new_classifier_keeps_the_other_weights(shipped_here: Path) -> None:
    model = resnetlab.create_model("resnet20", pretrained=True, num_classes=3)
    ref = resnetlab.create_model("resnet20", pretrained=True)
    assert model.fc.out_features == 3
    assert torch.equal(model.conv1.weight, ref.conv1.weight)


def test_unshipped_weights_are_one_line_listing_the_shipped(shipped_here: Path) -> None:
    with pytest.raises(UserError, match=r"no pretrained weights ship for 'resnet56'; shipped: resnet20"):
        resnetlab.create_model("resnet56", pretrained=True)


@pytest.mark.parametrize("argv", [
    ["evaluate", "resnet56", "--data", SAMPLE],
    ["predict", "resnet56", "cat.jpg"],
    ["export", "resnet56", "--out", "r56.onnx"],
    ["train", "--model", "resnet56", "--init", "resnet56", "--data", SAMPLE, "--iters", "1", "--out", "run"],
], ids=["evaluate", "predict", "export", "init"])
def test_a_model_name_without_shipped_weights_is_one_line_listing_the_shipped(
        shipped_here: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys, argv: list[str]) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["resnetlab: error: no pretrained weights ship for 'resnet56'; shipped: resnet20 "
                   "(or give a checkpoint's path)"]
    assert not (tmp_path / "r56.onnx").exists()


def test_a_missing_path_is_still_named_as_a_path(tmp_path: Path, capsys) -> None:
    assert main(["evaluate", str(tmp_path / "nope.pt"), "--data", SAMPLE]) == 2
    assert f"checkpoint not found: {tmp_path / 'nope.pt'}" in capsys.readouterr().err


def test_export_random_weights_takes_a_model_name_explicitly(shipped_here: Path, tmp_path: Path, capsys) -> None:
    from resnetlab.export.onnx_predict import read_onnx_metadata

    out = tmp_path / "r20.onnx"
    assert main(["export", "resnet20", "--random-weights", "--out", str(out)]) == 0
    assert "resnet20 (random weights)" in capsys.readouterr().out
    assert read_onnx_metadata(out)["normalization"]["kind"] != "pixel-mean"  # not the shipped net's record
    assert main(["export", str(out), "--random-weights", "--out", str(tmp_path / "x.onnx")]) == 2
    assert "--random-weights takes a model name" in capsys.readouterr().err


def test_a_damaged_file_is_refused(shipped_here: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    index = json.loads((shipped_here / "weights" / "index.json").read_text())
    index["resnet20"]["sha256"] = "0" * 64
    (tmp_path / "index.json").write_text(json.dumps(index))
    (tmp_path / index["resnet20"]["file"]).write_bytes((shipped_here / "weights" / index["resnet20"]["file"]).read_bytes())
    monkeypatch.setattr(pretrained, "INDEX_FILE", tmp_path / "index.json")
    with pytest.raises(UserError, match="damaged"):
        resnetlab.create_model("resnet20", pretrained=True)


def test_a_name_works_where_a_checkpoint_does(shipped_here: Path, tmp_path: Path, capsys) -> None:
    assert main(["evaluate", "resnet20", "--data", SAMPLE]) == 0
    assert "top-1" in capsys.readouterr().out
    image = next((Path(SAMPLE) / "test").rglob("*.png"), None) or next((Path(SAMPLE) / "test").rglob("*.*"))
    assert main(["predict", "resnet20", str(image)]) == 0
    assert main(["export", "resnet20", "--out", str(tmp_path / "r20.onnx")]) == 0
    from resnetlab.export.onnx_predict import read_onnx_metadata

    assert read_onnx_metadata(tmp_path / "r20.onnx")["normalization"]["kind"] == "pixel-mean"
    assert main(["pretrained"]) == 0
    assert "resnet20" in capsys.readouterr().out


def test_init_normalizes_the_data_as_the_weights_were_unless_told(shipped_here: Path, tmp_path: Path) -> None:
    from resnetlab.cli import build_parser
    from resnetlab.cli.train import config_from_args

    def normalize(*argv: str) -> str:
        return config_from_args(build_parser().parse_args(["train", "--recipe", "fast-cifar", *argv])).normalize

    assert normalize() == "channel"  # the recipe's own
    assert normalize("--init", "resnet20") == "pixel-mean"  # the shipped (here: published) net's
    assert normalize("--init", "resnet20", "--normalize", "channel") == "channel"  # a flag given wins
    model = resnetlab.create_model("resnet20")
    torch.save(model.state_dict(), tmp_path / "bare.pt")  # a bare state dict says nothing: the recipe's
    assert normalize("--init", str(tmp_path / "bare.pt")) == "channel"


def test_init_from_a_name_fine_tunes(shipped_here: Path, tmp_path: Path) -> None:
    cfg = recipe_config("paper-cifar", data=SAMPLE, subset=64, batch_size=32, iters=1, out=str(tmp_path / "ft"),
                        device="cpu", init="resnet20")
    train(cfg, log=lambda _m: None)
    ref = resnetlab.create_model("resnet20", pretrained=True)
    tuned = load_checkpoint(tmp_path / "ft" / "last.pt")
    # One SGD step away from the shipped weights, not from a random start.
    diff = (tuned["state_dict"]["conv1.weight"] - ref.conv1.weight).abs().max()
    assert diff < 0.05


def test_hub_loads_shipped_weights(shipped_here: Path) -> None:
    repo = str(Path(__file__).resolve().parents[1])
    model = torch.hub.load(repo, "resnet20", source="local", pretrained=True)
    ref = resnetlab.create_model("resnet20", pretrained=True)
    assert torch.equal(model.conv1.weight, ref.conv1.weight)
