"""Training engine: the paper's schedule, exact resume, clean stops, divergence, and bad input from the CLI."""

from __future__ import annotations

import json
import signal
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest
import torch
import torch.nn.functional as F

from resnetlab import create_model
from resnetlab.cli import main
from resnetlab.data import MemoryLoader
from resnetlab.weights import checkpoint as ckpt_mod
from resnetlab.engine import train as train_mod
from resnetlab.engine.config import RECIPES, recipe_config
from resnetlab.engine.schedule import Schedule, lr_at
from resnetlab.engine.train import TrainingDiverged, resolve_schedule, train
from resnetlab.errors import UserError

SAMPLE = str(Path(__file__).resolve().parents[1] / "resnetlab" / "data" / "sample" / "cifar10-sample")


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESNETLAB_DATA", str(tmp_path_factory.getbasetemp() / "cache"))


def tiny(tmp_path: Path, name: str = "run", **kw) -> "train_mod.TrainConfig":
    """A few iterations of an 8-layer CIFAR ResNet on 320 sample images (50 held out for validation), with a
    step schedule so lr changes matter.

    8 layers and 50 validation images, not ResNet-20 on the sample's 600 test images: evaluating those
    was more than half of every run's time, and 8 layers train 2-3x faster (tests that need ResNet-20
    or the test folder ask for them)."""
    values = dict(data=SAMPLE, subset=320, val_split=50, model="resnet", model_args={"depth": 8}, batch_size=32,
                  iters=8, eval_every=4, out=str(tmp_path / name), device="cpu", seed=3, warmup_iters=0)
    values.update(kw)
    return recipe_config("paper-cifar", **values)


# ----------------------------------------------------------------------------- schedule


def test_paper_cifar_schedule_matches_section_4_2() -> None:
    cfg = recipe_config("paper-cifar")
    s = resolve_schedule(cfg, steps_per_epoch=351, depth=56)
    assert s.total == 64_000 and s.milestones == (32_000, 48_000) and s.warmup_iters == 0
    assert lr_at(0, s) == 0.1 and lr_at(31_999, s) == 0.1
    assert lr_at(32_000, s) == pytest.approx(0.01) and lr_at(47_999, s) == pytest.approx(0.01)
    assert lr_at(48_000, s) == pytest.approx(0.001) and lr_at(63_999, s) == pytest.approx(0.001)


def test_110_layer_warmup_goes_back_to_0_1() -> None:
    """Paper Sec. 4.2: 0.01 until ~400 iterations, *then back to 0.1* (popular reproductions stay at 0.01)."""
    cfg = recipe_config("paper-cifar")
    s = resolve_schedule(cfg, steps_per_epoch=351, depth=110)
    assert s.warmup_iters == 400
    assert all(lr_at(i, s) == 0.01 for i in (0, 1, 200, 399))
    assert lr_at(400, s) == 0.1 and lr_at(20_000, s) == 0.1
    assert lr_at(32_000, s) == pytest.approx(0.01)
    # 56 layers: no warm-up at all.
    assert lr_at(0, resolve_schedule(cfg, 351, depth=56)) == 0.1


def test_schedule_scales_with_run_length_and_shapes() -> None:
    s = resolve_schedule(recipe_config("paper-cifar", iters=1000), 351, depth=20)
    assert s.milestones == (500, 750)
    fast = resolve_schedule(recipe_config("fast-cifar"), 175, depth=20)
    assert fast.total == 20 * 175 and fast.kind == "linear"
    assert lr_at(fast.warmup_iters - 1, fast) == pytest.approx(0.4)
    assert lr_at(fast.total - 1, fast) < 0.01
    cos = Schedule(1.0, 100, "cosine")
    assert lr_at(0, cos) == 1.0 and lr_at(50, cos) == pytest.approx(0.5) and lr_at(100, cos) == pytest.approx(0.0)
    imagenet = resolve_schedule(recipe_config("paper-imagenet"), 5005, depth=50)
    assert imagenet.milestones == (30 * 5005, 60 * 5005) and imagenet.total == 90 * 5005


def test_recipes_are_typed_and_listed(capsys: pytest.CaptureFixture) -> None:
    assert set(RECIPES) == {"paper-cifar", "fast-cifar", "fast-cifar-b128", "paper-imagenet"}
    # fast-cifar-b128 is fast-cifar with the batch halved and lr and ramp scaled with it, nothing else.
    fast, b128 = RECIPES["fast-cifar"].values, RECIPES["fast-cifar-b128"].values
    assert {k for k in fast if fast[k] != b128[k]} == {"batch_size", "lr", "warmup_iters"}
    assert b128["lr"] / b128["batch_size"] == fast["lr"] / fast["batch_size"]
    assert b128["warmup_iters"] * b128["batch_size"] == fast["warmup_iters"] * fast["batch_size"]  # one epoch of images
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    assert "paper-cifar" in out and "32k and 48k" in out
    cfg = recipe_config("paper-imagenet", lr=0.2)
    assert cfg.lr == 0.2 and cfg.batch_size == 256 and cfg.augment == "rrc-flip"


# ----------------------------------------------------------------------------- the loop


def test_curves_are_redrawn_at_most_every_interval_and_at_close(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import resnetlab.engine.curves as curves

    drawn: list[int] = []
    monkeypatch.setattr(curves, "plot_run", lambda history, path, title: drawn.append(len(history)))
    log = train_mod.MetricsLog(tmp_path, enabled=True, title="t", plot_every_s=3600)
    for i in range(3):
        log.append({"iteration": i, "train_err": 0.5})
    assert drawn == []  # nothing within the interval
    log.close()
    assert drawn == [3]  # close draws what was left out
    log.close()
    assert drawn == [3]  # and nothing twice
    every = train_mod.MetricsLog(tmp_path, enabled=True, title="t", plot_every_s=0)
    for i in range(2):
        every.append({"iteration": i, "train_err": 0.5})
    assert drawn[1:] == [4, 5]  # past the interval, every record redraws (the log had 3 lines already)
    every.close()
    assert drawn[1:] == [4, 5]


def test_curves_title_fits_the_figure() -> None:
    """A run's title names its data source; a long one used to run off both edges of curves.png."""
    plt = pytest.importorskip("matplotlib.pyplot")
    from resnetlab.engine.curves import run_figure

    history = [{"iteration": i, "train_err": 0.5, "val_top1_err": 0.4} for i in (1, 2)]
    title = ("resnet44 | paper-cifar | image folder at ../shared/data/cifar10/train: 45,000 train / 5,000 val "
             "(held out, seed 0), 10 classes, in memory, 3x32x32")
    fig = run_figure(plt, history, title)
    try:
        renderer = fig.canvas.get_renderer()
        box = fig.axes[0].title.get_window_extent(renderer)
        assert box.x0 >= 0 and box.x1 <= fig.bbox.width and box.y1 <= fig.bbox.height
        assert box.y0 >= fig.axes[0].get_window_extent(renderer).y1  # above the axes, not over the curves
    finally:
        plt.close(fig)


def test_run_folder_contents(tmp_path: Path) -> None:
    result = train(tiny(tmp_path))
    out = result.out_dir
    for name in ("config.json", "metrics.jsonl", "last.pt", "best.pt", "curves.png", "summary.json"):
        assert (out / name).is_file(), name
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["iteration"] for m in lines] == [4, 8]
    for key in ("iteration", "epoch", "lr", "train_loss", "train_err", "val_loss", "val_top1_err", "val_top5_err",
                "img_s", "wall_time"):
        assert key in lines[-1]
    config = json.loads((out / "config.json").read_text())
    assert config["resolved"]["milestones_iters"] == [4, 6] and (config["model"], config["model_args"]) == ("resnet", {"depth": 8})
    # A checkpoint is plain data: loads with weights_only=True and rebuilds the model by itself.
    raw = torch.load(out / "last.pt", weights_only=True)
    assert raw["step"] == 8 and raw["classes"][0] == "airplane" and len(raw["normalization"]["mean"]) == 3
    model = ckpt_mod.model_from_checkpoint(raw)
    assert model.fc.out_features == 10


@contextmanager
def sigint_at(iteration: int, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Within the block, SIGINT arrives as the training loop asks for the lr of ``iteration``."""
    real_lr_at = train_mod.lr_at

    def interrupting(step: int, s: Schedule) -> float:
        if step == iteration:
            signal.raise_signal(signal.SIGINT)
        return real_lr_at(step, s)

    monkeypatch.setattr(train_mod, "lr_at", interrupting)
    try:
        yield
    finally:
        monkeypatch.setattr(train_mod, "lr_at", real_lr_at)


def test_resume_equals_uninterrupted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGINT at iteration 5 saves a checkpoint; resuming ends with the uninterrupted run's weights."""
    train(tiny(tmp_path, "straight"))
    with sigint_at(5, monkeypatch):
        first = train(tiny(tmp_path, "resumed"))
    assert first.status == "interrupted" and first.step == 6
    second = train(tiny(tmp_path, "ignored-out").replace(resume=str(tmp_path / "resumed")))
    assert second.status == "completed" and second.step == 8
    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "resumed" / "last.pt", weights_only=True)["state_dict"]
    for key in a:  # bit-exact on a CPU, as the README claims
        assert torch.equal(b[key], a[key]), key
    history = [json.loads(x)["iteration"] for x in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert history == [4, 8]


def test_a_compiled_run_trains_like_the_eager_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--compile` through the engine: dynamo captures the training forward (DDP wrapper, option-A
    shortcut, autocast off) and AOT autograd its backward, and the run ends with the eager run's weights
    to rounding. The backend is AOT's eager one: inductor's C++ code generation costs a minute on a
    cold cache even for 8 layers; it is torch's own, and the slow tests (`make test-slow`) run it on
    ResNet-20 and ResNet-50."""
    from torch._dynamo.backends.registry import lookup_backend

    real_compile, aot_eager = torch.compile, lookup_backend("aot_eager")
    graphs: list[int] = []  # the node count of each graph dynamo captured and handed to the backend

    def counting_backend(gm, example_inputs):  # noqa: ANN001, ANN202 - a dynamo backend
        graphs.append(len(gm.graph.nodes))
        return aot_eager(gm, example_inputs)

    def compile_with_aot_eager(model, **kw):  # noqa: ANN001, ANN202 - torch.compile's signature
        return real_compile(model, **{**kw, "backend": counting_backend})

    monkeypatch.setattr(torch, "compile", compile_with_aot_eager)
    small = dict(model="resnet", model_args={"depth": 8}, subset=64, batch_size=16, iters=3, eval_every=3,
                 amp="none", channels_last=False)
    eager = train(tiny(tmp_path, "eager", **small))
    assert graphs == []
    compiled = train(tiny(tmp_path, "compiled", compile=True, **small))
    assert eager.status == compiled.status == "completed"
    # Whole graphs, no breaks: one for training, one recompiled for evaluation (BN's mode is guarded on).
    assert len(graphs) == 2 and min(graphs) > 50
    a = torch.load(tmp_path / "eager" / "last.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "compiled" / "last.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5, msg=key)


def test_resolving_a_run_needs_no_training(tmp_path: Path) -> None:
    """New, --resume DIR and --resume auto resolve from the run folder alone: a last.pt written by hand."""
    new = train_mod.resolve_run(tiny(tmp_path))
    assert new.cfg == tiny(tmp_path) and new.out_dir == tmp_path / "run"
    assert new.checkpoint is None and new.start_step == 0
    with pytest.raises(UserError, match="no such run folder"):
        train_mod.resolve_run(tiny(tmp_path).replace(resume=str(tmp_path / "nothere")))
    with pytest.raises(UserError, match="needs --out"):
        train_mod.resolve_run(tiny(tmp_path).replace(out=None, resume="auto"))
    fresh = train_mod.resolve_run(tiny(tmp_path, "auto").replace(resume="auto"))  # nothing there yet: start it
    assert fresh.cfg.resume is None and fresh.checkpoint is None and fresh.out_dir == tmp_path / "auto"

    # A run stopped at iteration 4, saved before split_seed existed (it split with its seed, 9).
    saved = tiny(tmp_path, "saved", lr=0.05, iters=6, seed=9, split_seed=9, sync_bn=True)
    config = {**saved.to_dict(), "milestones": list(saved.milestones), "resolved": {"total_iters": 6}}
    del config["split_seed"]
    (tmp_path / "saved").mkdir()
    torch.save({"format": ckpt_mod.FORMAT, "step": 4, "config": config}, tmp_path / "saved" / "last.pt")
    with pytest.raises(UserError, match="already holds a run"):
        train_mod.resolve_run(saved)
    # The saved config wins, except where and how fast this process runs (--sync-bn may be added, not dropped).
    given = tiny(tmp_path, "ignored", lr=0.3, iters=100, workers=5, compile=True, sync_bn=False)
    resumed = train_mod.resolve_run(given.replace(resume=str(tmp_path / "saved")))
    assert resumed.start_step == 4 and resumed.out_dir == tmp_path / "saved"
    assert resumed.cfg == saved.replace(resume=str(tmp_path / "saved"), workers=5, compile=True)
    auto = train_mod.resolve_run(saved.replace(resume="auto"))
    assert auto.start_step == 4 and auto.cfg == saved.replace(resume=str(tmp_path / "saved"))


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_ce = train_mod.F.cross_entropy

    def nan_after_4(logits, y, **kw):
        loss = real_ce(logits, y, **kw)
        return loss * float("nan") if torch.is_grad_enabled() and nan_after_4.calls >= 5 else loss

    nan_after_4.calls = 0
    real_step = torch.optim.SGD.step

    def counting_step(self, *a, **kw):
        nan_after_4.calls += 1
        return real_step(self, *a, **kw)

    monkeypatch.setattr(torch.optim.SGD, "step", counting_step)
    monkeypatch.setattr(train_mod.F, "cross_entropy", nan_after_4)
    with pytest.raises(TrainingDiverged, match="non-finite"):
        train(tiny(tmp_path))
    good = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert good["step"] == 4
    assert (tmp_path / "run" / "curves.png").is_file()  # drawn on the way out (the first drawing waits 30 s)
    assert all(torch.isfinite(v).all() for v in good["state_dict"].values() if v.is_floating_point())


def test_split_seed_not_seed_picks_the_held_out_images(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs that differ only in --seed hold out the same images; --split-seed changes them; a run saved
    before split_seed existed (its config has only ``seed``) resumes with the split its seed drew."""
    bundles = []
    real_open = train_mod.open_data

    def spy(*args, **kwargs):
        bundles.append(real_open(*args, **kwargs))
        return bundles[-1]

    monkeypatch.setattr(train_mod, "open_data", spy)
    short = dict(subset=0, val_split=40, iters=1, eval_every=1)
    train(tiny(tmp_path, "s3", **short))
    train(tiny(tmp_path, "s4", seed=4, **short))
    train(tiny(tmp_path, "split1", split_seed=1, **short))
    same, other = bundles[0].val.images, bundles[2].val.images
    assert torch.equal(bundles[1].val.images, same) and not torch.equal(other, same)

    # The old behaviour: the split drawn with the run's seed (3), recorded without a split_seed.
    train(tiny(tmp_path, "old", split_seed=3, **short))
    last = tmp_path / "old" / "last.pt"
    raw = torch.load(last, weights_only=False)
    del raw["config"]["split_seed"]
    torch.save(raw, last)
    result = train(tiny(tmp_path, "ignored", **short).replace(resume=str(tmp_path / "old")))
    assert result.status == "completed"
    assert torch.equal(bundles[-1].val.images, bundles[-2].val.images)
    assert not torch.equal(bundles[-1].val.images, same)


def test_overfit_one_batch(tmp_path: Path) -> None:
    """A residual net must drive the training error on 32 fixed images to zero.

    60 iterations, not 40: paper-cifar subtracts the per-pixel mean without dividing by a std, so
    its inputs are ~4x smaller than per-channel-normalised ones and the first steps move less; at 40
    the eval-mode net (BN running statistics still lagging the weights) got 78-84% of the batch right
    depending on the thread count, at 60 all of it with 1 or 2 threads, AVX-512 or AVX2 kernels.
    """
    cfg = tiny(tmp_path, model="resnet20", model_args={}, subset=32, batch_size=32, iters=60, eval_every=60,
               lr=0.05, milestones=(), weight_decay=0.0, augment="none")
    result = train(cfg)
    assert result.history[-1]["train_err"] < 0.3  # averaged over all 60 iterations
    # The final model classifies the very batch it saw, without augmentation, perfectly.
    raw = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    model = ckpt_mod.model_from_checkpoint(raw).eval()
    from resnetlab.data import open_data

    data = open_data(SAMPLE, val_split=cfg.val_split, subset=32, seed=cfg.split_seed, log=lambda _m: None)
    # Normalise with what the checkpoint carries (paper-cifar: the per-pixel mean image, Sec. 4.2).
    from resnetlab.data.loader import norm_tensor

    norm = raw["normalization"]
    x = (data.train.images.float() / 255 - norm_tensor(norm["mean"])) / norm_tensor(norm["std"])
    with torch.no_grad():
        assert (model(x).argmax(1) == data.train.labels).float().mean() == 1.0


def test_evaluate_and_predict_from_checkpoint_alone(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    train(tiny(tmp_path))
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "run" / "best.pt"), "--data", SAMPLE, "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["n"] == 600 and 0 <= res["top1"] <= res["top5"] <= 1 and len(res["confusion"]) == 10
    image = sorted(Path(SAMPLE, "test", "cat").iterdir())[0]
    assert main(["predict", str(tmp_path / "run"), str(image), "--topk", "3", "--json"]) == 0
    (record,) = json.loads(capsys.readouterr().out)
    assert len(record["top"]) == 3 and abs(sum(t["prob"] for t in record["top"])) <= 1.0 + 1e-6

    # The fast inference path (bf16 autocast, NHWC) gives the same answers up to bf16 rounding.
    assert main(["evaluate", str(tmp_path / "run"), "--data", SAMPLE, "--json", "--amp", "bf16",
                 "--channels-last"]) == 0
    fast = json.loads(capsys.readouterr().out)
    assert fast["amp"] == "bf16" and fast["channels_last"] and fast["n"] == res["n"]
    assert abs(fast["top1"] - res["top1"]) <= 0.02 and abs(fast["loss"] - res["loss"]) <= 0.02 * res["loss"]
    assert main(["predict", str(tmp_path / "run"), str(image), "--topk", "3", "--json", "--amp", "bf16",
                 "--channels-last"]) == 0
    (fast_record,) = json.loads(capsys.readouterr().out)
    assert fast_record["top"][0]["class"] == record["top"][0]["class"]
    assert abs(fast_record["top"][0]["prob"] - record["top"][0]["prob"]) <= 0.02


# ----------------------------------------------------------------------------- bad input: one line, exit 2


def _fails(argv: list[str], capsys: pytest.CaptureFixture, match: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("resnetlab: error:") and match in err[-1], err
    assert "Traceback" not in "\n".join(err)


def test_bad_inputs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    no_images = tmp_path / "noimages" / "cat"
    no_images.mkdir(parents=True)
    (no_images / "notes.txt").write_text("not an image")
    base = ["train", "--iters", "1", "--device", "cpu"]
    _fails(base + ["--data", str(tmp_path / "missing")], capsys, "does not exist")
    _fails(base + ["--data", str(empty)], capsys, "empty")
    _fails(base + ["--data", str(tmp_path / "noimages")], capsys, "no images")
    _fails(base + ["--data", SAMPLE, "--model", "resnet21"], capsys, "unknown model")
    _fails(base + ["--data", SAMPLE, "--recipe", "fastest"], capsys, "unknown recipe")
    _fails(base + ["--data", SAMPLE, "--val-split", "5000"], capsys, "val_split")
    _fails(base + ["--resume", str(tmp_path / "nothere")], capsys, "no such run folder")
    _fails(["evaluate", str(tmp_path / "nothere.pt"), "--data", SAMPLE], capsys, "not found")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    _fails(["evaluate", str(tmp_path / "junk.pt"), "--data", SAMPLE], capsys, "not a readable resnetlab checkpoint")


def test_checkpoint_of_another_architecture_or_class_count(tmp_path: Path) -> None:
    from resnetlab import create_model

    state = create_model("resnet32").state_dict()
    with pytest.raises(UserError, match="does not fit resnet20: .*layer1.0.conv1|missing|unexpected"):
        ckpt_mod.load_weights(create_model("resnet20"), state)
    with pytest.raises(UserError, match="fc.weight"):
        ckpt_mod.load_weights(create_model("resnet20", num_classes=100), create_model("resnet20").state_dict())


def test_large_images_stream_through_dataloader_workers(tmp_path: Path) -> None:
    """Images too big to keep in memory go through DataLoader workers with RandomResizedCrop (ImageNet path)."""
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for split, n in (("train", 8), ("val", 4)):
        for cls in ("cat", "dog"):
            folder = tmp_path / "imgs" / split / cls
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = torch.randint(0, 256, (96, 112, 3), generator=g, dtype=torch.uint8).numpy()
                Image.fromarray(pixels).save(folder / f"{i}.png")
    cfg = recipe_config("paper-imagenet", data=str(tmp_path / "imgs"), image_size=64, batch_size=4, iters=3,
                        eval_every=3, out=str(tmp_path / "run"), device="cpu", workers=2,
                        model="resnet18", model_args={"stem": "cifar"})
    result = train(cfg)
    assert result.step == 3 and result.last["val_top1_err"] is not None
    raw = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert raw["input_size"] == [3, 64, 64] and raw["classes"] == ["cat", "dog"]
    from resnetlab.engine.predict import evaluate_checkpoint

    res = evaluate_checkpoint(str(tmp_path / "run" / "last.pt"), str(tmp_path / "imgs"), device="cpu", workers=0)
    assert res["n"] == 8 and sum(map(sum, res["confusion"])) == 8  # the val/ split, resized and centre-cropped


@pytest.mark.parametrize("native", [True, False], ids=["native-bf16", "emulated-bf16"])
def test_default_precision_follows_the_capability_check(native: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    from resnetlab import hardware
    from resnetlab.engine.train import fast_defaults, precision_note

    monkeypatch.setenv(hardware.ENV_VAR, "1" if native else "0")
    cfg = recipe_config("paper-cifar")
    amp = fast_defaults(cfg, torch.device("cpu"))[1]
    assert amp == ("bf16" if native else "none")
    note = precision_note(cfg, torch.device("cpu"), amp)
    assert note.startswith("precision: bf16 autocast, the default" if native else "precision: fp32, the default")
    assert "RESNETLAB_NATIVE_BF16=" in note
    assert precision_note(cfg.replace(amp="none"), torch.device("cpu"), "none") == "precision: fp32 (--amp none)"


def test_fp16_trains_with_a_grad_scaler_kept_in_the_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # Few images and 8 layers: fp16 autocast is emulated (slow) on most CPUs; 20 held-out images, not the 600 test ones.
    small = dict(iters=2, eval_every=2, subset=16, val_split=20, batch_size=4, model="resnet", model_args={"depth": 8})
    result = train(tiny(tmp_path, amp="fp16", **small))
    assert result.status == "completed"
    assert "precision: fp16 autocast with a GradScaler (--amp fp16)" in capsys.readouterr().out
    raw = torch.load(tmp_path / "run" / "last.pt", weights_only=False)
    assert raw["grad_scaler"]["scale"] > 1.0  # the loss was scaled; 2**16 unless a step overflowed
    assert "grad_scaler" not in torch.load(train(tiny(tmp_path, "fp32", amp="none", **small)).out_dir / "last.pt",
                                           weights_only=False)


def test_evaluate_without_data_prints_exactly_the_error_the_run_logged(tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture) -> None:
    """fast-cifar (flip TTA, the machine's default precision) with a held-out split: `evaluate best.pt`
    rebuilds the split from the checkpoint and reproduces the logged validation error and loss exactly."""
    cfg = recipe_config("fast-cifar", data=SAMPLE, subset=400, val_split=100, split_seed=5, batch_size=50,
                        iters=12, eval_every=4, epochs=None, out=str(tmp_path / "run"), device="cpu", seed=1)
    train(cfg)
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    best = min((r for r in lines if "val_top1_err" in r), key=lambda r: r["val_top1_err"])
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "run" / "best.pt"), "--json", "--device", "cpu"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["n"] == 100 and res["tta_flip"] is True and "split seed 5" in res["data"]
    assert res["top1_err"] == best["val_top1_err"] and res["loss"] == best["val_loss"]
    assert main(["evaluate", str(tmp_path / "run" / "best.pt"), "--json", "--no-tta-flip", "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out)["tta_flip"] is False


def test_evaluate_ema_prints_exactly_the_average_error_the_run_logged(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture) -> None:
    cfg = recipe_config("fast-cifar", data=SAMPLE, subset=300, val_split=100, batch_size=50, iters=8, eval_every=4,
                        epochs=None, out=str(tmp_path / "run"), device="cpu", ema_decay=0.8)
    train(cfg)
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    best = min((r for r in lines if "val_top1_err" in r), key=lambda r: r["val_top1_err"])
    capsys.readouterr()
    best_pt = str(tmp_path / "run" / "best.pt")
    assert main(["evaluate", best_pt, "--ema", "--json", "--device", "cpu"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["weights"] == "ema"
    assert res["top1_err"] == best["ema_val_top1_err"] and res["loss"] == best["ema_val_loss"]
    assert res["loss"] != best["val_loss"]
    assert main(["predict", best_pt, "--ema", "--json", "--device", "cpu", str(sorted(Path(SAMPLE, "test", "cat").iterdir())[0])]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 1
    train(tiny(tmp_path, "plain"))
    assert main(["evaluate", str(tmp_path / "plain" / "last.pt"), "--ema", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "has no weight average (train with --ema-decay" in err and err.count("\n") == 1


def test_evaluate_without_data_needs_a_run_with_a_split(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    train(tiny(tmp_path, val_split=0, iters=1, eval_every=1))  # evaluated on the sample's test/ folder
    assert main(["evaluate", str(tmp_path / "run" / "last.pt")]) == 2
    assert "not trained with a held-out validation split" in capsys.readouterr().err


def _folder_of_80px_images(root: Path) -> Path:
    """A tiny class-folder tree of images just too large to be held in memory (<= 64 px are), so they stream."""
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for split, n in (("train", 8), ("val", 2)):
        for cls in ("cat", "dog"):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(torch.randint(0, 256, (80, 80, 3), generator=g, dtype=torch.uint8).numpy()).save(
                    folder / f"{i}.png")
    return root


def test_streamed_augmentation_is_seeded_by_seed_epoch_index(tmp_path: Path) -> None:
    from resnetlab.data import StreamLoader, open_data

    data = open_data(str(_folder_of_80px_images(tmp_path / "imgs")), image_size=48, log=lambda _m: None)
    assert not data.in_memory
    loader = lambda seed: StreamLoader(data.train, 4, train=True, mean=[0.5] * 3, std=[0.25] * 3,  # noqa: E731
                                       seed=seed, workers=0)
    first = [x for x, _ in loader(1).epoch(0)]
    again = [x for x, _ in loader(1).epoch(0)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[1], next(iter(loader(1).epoch(1)))[0])  # another epoch, other crops
    assert torch.equal(first[1], next(iter(loader(1).epoch(0, start=1)))[0])  # a resumed pass: the same batch


def test_resume_is_exact_on_the_streamed_image_folder_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _folder_of_80px_images(tmp_path / "imgs")
    cfg = lambda name: recipe_config("paper-imagenet", data=str(folder), image_size=32, batch_size=4,  # noqa: E731
                                     iters=6, eval_every=3, out=str(tmp_path / name), device="cpu", workers=1,
                                     model="resnet18", model_args={"stem": "cifar", "width": 0.25}, seed=2)
    train(cfg("straight"))
    with sigint_at(4, monkeypatch):
        assert train(cfg("resumed")).status == "interrupted"
    assert train(cfg("resumed").replace(resume=str(tmp_path / "resumed"))).status == "completed"
    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "resumed" / "last.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------- beyond the paper: augmentation, EMA


def _loader(**kw: object) -> MemoryLoader:
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    return MemoryLoader(images, torch.arange(64) % 10, 16, train=True, mean=[0.0] * 3, std=[1.0] * 3, seed=5, **kw)


@pytest.mark.parametrize("policy", ["autoaugment", "trivialaugment"])
def test_the_loaders_policy_and_cutout_are_seeded_batched_and_change_the_batch(policy: str) -> None:
    plain, aug = _loader(), _loader(policy=policy, cutout=8)
    x0, y0 = plain.batch(1, 2)
    x1, y1 = aug.batch(1, 2)
    again, _ = _loader(policy=policy, cutout=8).batch(1, 2)
    assert x1.shape == x0.shape and x1.dtype == torch.float32 and torch.equal(y1, y0)
    assert torch.equal(x1, again) and not torch.equal(x1, x0)
    # mean 0, std 1: a pixel is value/255, so every image's 8x8 cutout square shows as zeros in all channels
    assert all(int((img == 0).all(0).sum()) >= 16 for img in x1)  # at least a clipped corner of the square
    assert not torch.equal(x1, aug.batch(2, 2)[0])  # another batch draws anew
    with pytest.raises(UserError, match="unknown augmentation policy"):
        _loader(policy="randaugment")


def test_mixing_loss_is_soft_cross_entropy_with_label_smoothing() -> None:
    logits = torch.randn(6, 10, generator=torch.Generator().manual_seed(1))
    y = torch.arange(6)
    onehot = F.one_hot(y, 10).float()
    assert torch.allclose(train_mod.training_loss(logits, onehot, 0.1), F.cross_entropy(logits, y, label_smoothing=0.1))
    assert torch.allclose(train_mod.training_loss(logits, y, 0.0), F.cross_entropy(logits, y))


def test_augmented_run_records_fields_evaluates_ema_and_resumes_exactly(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    kw = dict(policy="trivialaugment", cutout=8, mix="cutmix", ema_decay=0.9)
    # 8 layers and 50 held-out images instead of the sample's 600: evaluating raw and average dominated.
    small = dict(model="resnet", model_args={"depth": 8}, val_split=50)
    straight = train(tiny(tmp_path, "straight", **kw, **small))
    assert straight.status == "completed"
    config = json.loads((tmp_path / "straight" / "config.json").read_text())
    assert {k: config[k] for k in kw} == kw
    record = json.loads((tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()[-1])
    assert 0 <= record["ema_val_top1_err"] <= 1 and record["ema_val_loss"] != record["val_loss"]
    with sigint_at(5, monkeypatch):
        assert train(tiny(tmp_path, "resumed", **kw, **small)).status == "interrupted"
    assert train(tiny(tmp_path, "x", **kw, **small).replace(resume=str(tmp_path / "resumed"))).status == "completed"
    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "last.pt", weights_only=True)
    for part in ("state_dict", "ema_state_dict"):
        assert set(a[part]) == set(b[part]) and all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part
    # the average is not the raw model
    assert any(not torch.equal(a["state_dict"][k], a["ema_state_dict"][k]) for k in a["state_dict"])


def test_weight_ema_averages_weights_and_bn_buffers() -> None:
    from resnetlab.engine.ema import WeightEma

    model = create_model("resnet20")
    ema = WeightEma(model, 0.75)
    before = {k: v.clone() for k, v in ema.model.state_dict().items()}
    with torch.no_grad():
        for v in model.state_dict().values():
            v.add_(1) if v.dtype.is_floating_point else v.add_(3)
    ema.update(model)
    after = ema.model.state_dict()
    for k, v in before.items():
        expect = v + 0.25 if v.dtype.is_floating_point else model.state_dict()[k]
        assert torch.allclose(after[k], expect), k
    with pytest.raises(ValueError):
        WeightEma(model, 1.0)


def test_a_run_resumed_on_another_cpu_logs_each_sessions_precision(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The default precision is per device (bf16 only where native): a run carried from an AVX2 CPU to an
    AVX512-BF16 one changes precision, and config.json and the checkpoint keep both sessions."""
    from resnetlab.engine.train import session_hardware, session_precision

    cfg = tiny(tmp_path, "carried", amp=None, channels_last=False)
    monkeypatch.setenv("RESNETLAB_NATIVE_BF16", "0")
    with sigint_at(5, monkeypatch):
        assert train(cfg).status == "interrupted"
    monkeypatch.setenv("RESNETLAB_NATIVE_BF16", "1")
    assert train(cfg.replace(resume=cfg.out)).status == "completed"
    config = json.loads((tmp_path / "carried" / "config.json").read_text())
    sessions = config["resolved"]["sessions"]
    assert [(s["from_iteration"], s["amp"]) for s in sessions] == [(0, "none"), (6, "bf16")]
    assert sessions[1]["hardware"].startswith("cpu (") and sessions[1]["hardware"].endswith("native bf16)")
    assert torch.load(tmp_path / "carried" / "last.pt", weights_only=True)["config"]["resolved"]["sessions"] == sessions
    assert session_precision(config) == "fp32, bf16 autocast from 6"
    assert session_hardware(config) == f"{sessions[0]['hardware']}; {sessions[1]['hardware']}"
    assert session_hardware({"resolved": {}}) == "not logged"
    # A checkpoint from before the log: its first session comes from its config; one resumed at the same
    # iteration twice (killed before a checkpoint) keeps only the later attempt.
    old = {"config": {"compile": False, "resolved": {"device": "cpu", "amp": "none", "channels_last": True}}}
    first = train_mod.session_log(old, 6, torch.device("cpu"), "bf16", True, False, 1)
    assert [(s["from_iteration"], s["amp"], s["hardware"] is None) for s in first] == [(0, "none", True),
                                                                                       (6, "bf16", False)]
    again = train_mod.session_log({"config": {"resolved": {"sessions": first}}}, 6, torch.device("cpu"), "none",
                                  True, False, 1)
    assert [(s["from_iteration"], s["amp"]) for s in again] == [(0, "none"), (6, "none")]
