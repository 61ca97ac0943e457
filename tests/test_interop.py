"""Issue 6 through the training CLI: fine-tuning with --init, and predict on an exported ONNX file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from resnetlab import create_model
from resnetlab.cli import main
from resnetlab.engine.train import train

from test_train import SAMPLE, tiny  # noqa: E402  (tests/ is on sys.path under pytest)


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESNETLAB_DATA", str(tmp_path_factory.getbasetemp() / "cache"))


def test_init_replaces_classifier_and_keeps_the_rest(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    torch.manual_seed(1)
    source = create_model("resnet20", num_classes=100)
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, tmp_path / "c100.pth")
    result = train(tiny(tmp_path, model="resnet20", model_args={}, init=str(tmp_path / "c100.pth"), iters=1,
                        eval_every=1, lr=0.0, momentum=0.0, weight_decay=0.0))
    assert "100 -> 10" in capsys.readouterr().out
    trained = torch.load(result.out_dir / "last.pt", weights_only=True)["state_dict"]
    torch.testing.assert_close(trained["layer2.1.conv1.weight"], source.state_dict()["layer2.1.conv1.weight"])
    assert trained["fc.weight"].shape == (10, 64)


def test_init_with_another_architecture_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    torch.save(create_model("resnet32").state_dict(), tmp_path / "r32.pth")
    code = main(["train", "--data", SAMPLE, "--iters", "1", "--subset", "64", "--batch-size", "32",
                 "--init", str(tmp_path / "r32.pth"), "--out", str(tmp_path / "run"), "--device", "cpu"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("resnetlab: error:") and "layer" in err


def test_predict_onnx_gives_the_checkpoints_top_k(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("onnxruntime")
    train(tiny(tmp_path))
    ckpt = str(tmp_path / "run" / "best.pt")
    assert main(["export", ckpt, "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 0
    images = [str(p) for p in sorted(Path(SAMPLE, "test", "dog").iterdir())[:4]]
    capsys.readouterr()
    assert main(["predict", ckpt, *images, "--json", "--device", "cpu"]) == 0
    from_ckpt = json.loads(capsys.readouterr().out)
    assert main(["predict", str(tmp_path / "m.onnx"), *images, "--json"]) == 0
    from_onnx = json.loads(capsys.readouterr().out)
    for a, b in zip(from_ckpt, from_onnx):
        assert [t["class"] for t in a["top"]] == [t["class"] for t in b["top"]]
        for ta, tb in zip(a["top"], b["top"]):
            assert abs(ta["prob"] - tb["prob"]) < 1e-4
