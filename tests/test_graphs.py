"""``--cuda-graphs``: the logic around the capture, run on the CPU with a capture that replays by calling the step.

A CUDA graph cannot be recorded without a GPU; what can be tested here is everything around it: the
refusals, the static buffers, the tensor learning rate, the eager warm-up, one capture per shape,
outputs copied out of the graph, and that a run (and its resume) trains as the eager loop does.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from resnetlab import create_model
from resnetlab.cli import main
from resnetlab.data import MemoryLoader
from resnetlab.engine import graphs
from resnetlab.engine import train as train_mod
from resnetlab.engine.evaluate import evaluate
from resnetlab.engine.train import train
from resnetlab.errors import UserError

from test_train import SAMPLE, sigint_at, tiny  # noqa: F401 - the shared tiny run and its cache fixture
from test_train import _cache  # noqa: F401
from test_bench import one_thread  # noqa: F401 - autouse: one torch thread per test

CPU = torch.device("cpu")


class CountingCapture:
    """A stand-in for :func:`graphs.cuda_capture`: records nothing, replays by calling the step again."""

    def __init__(self) -> None:
        self.captures = 0

    def __call__(self, body, device):
        self.captures += 1
        return body


def test_cuda_graphs_refuses_what_it_cannot_capture(capsys: pytest.CaptureFixture[str]) -> None:
    cuda = torch.device("cuda", 0)
    graphs.check_cuda_graphs(cuda, "bf16", compile=False, world=1)  # the supported case
    for args, message in [((CPU, "none", False, 1), "needs a CUDA device; this run is on cpu"),
                          ((cuda, "fp16", False, 1), "does not run fp16's GradScaler"),
                          ((cuda, "none", True, 1), "drop --compile"),
                          ((cuda, "none", False, 2), "runs in one process")]:
        with pytest.raises(UserError, match=message):
            graphs.check_cuda_graphs(*args)
    assert main(["train", "--cuda-graphs", "--device", "cpu", "--data", SAMPLE, "--iters", "1"]) == 2
    err = capsys.readouterr().err
    assert "--cuda-graphs needs a CUDA device" in err and err.strip().count("\n") == 0


def _tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("resnet20").to(memory_format=torch.channels_last)


def test_graphed_step_trains_as_the_eager_step_with_one_capture_after_the_warmup() -> None:
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(4, 3, 8, 8, generator=g).contiguous(memory_format=torch.channels_last),
                torch.randint(0, 10, (4,), generator=g)) for _ in range(6)]
    lrs = [0.1, 0.05, 0.2, 0.1, 0.01, 0.3]
    loss_fn = torch.nn.functional.cross_entropy

    ref = _tiny_model()
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4, fused=True)
    ref_losses = []
    for (x, y), lr in zip(batches, lrs):
        for group in ref_opt.param_groups:
            group["lr"] = lr
        ref_opt.zero_grad(set_to_none=True)
        loss = loss_fn(ref(x), y)
        loss.backward()
        ref_opt.step()
        ref_losses.append(loss.item())

    model = _tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4, fused=True)
    capture = CountingCapture()
    step = graphs.GraphedTrainStep(model, opt, loss_fn, CPU, "none", capture=capture)
    losses, captured_at = [], None
    for i, ((x, y), lr) in enumerate(zip(batches, lrs)):
        loss, logits = step(x, y, lr)
        losses.append(loss.item())
        if captured_at is None and capture.captures:
            captured_at = i
        assert logits.shape == (4, 10) and not logits.requires_grad
    assert captured_at == graphs.WARMUP_STEPS and capture.captures == 1
    assert float(step.lr) == pytest.approx(lrs[-1]) and opt.param_groups[0]["lr"] is step.lr
    assert step.x.is_contiguous(memory_format=torch.channels_last)  # the static buffer keeps NHWC
    assert losses == ref_losses
    for (name, a), b in zip(model.state_dict().items(), ref.state_dict().values()):
        assert torch.equal(a, b), name
    with pytest.raises(ValueError, match="fused=True"):
        graphs.GraphedTrainStep(model, torch.optim.SGD(model.parameters(), lr=0.1), loss_fn, CPU, "none")


def test_graphed_forward_captures_each_shape_once_and_hands_out_copies() -> None:
    model = _tiny_model().eval()
    g = torch.Generator().manual_seed(2)
    images = torch.randint(0, 256, (10, 3, 8, 8), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 10, (10,), generator=g)
    loader = MemoryLoader(images, labels, 4, train=False, mean=[0.5] * 3, std=[0.25] * 3, channels_last=True)
    capture = CountingCapture()
    graphed = graphs.GraphedForward(model, "none", capture=capture)
    plain = evaluate(model, loader.epoch(0), 10, device=CPU, tta_flip=True)
    for _ in range(2):
        assert evaluate(graphed, loader.epoch(0), 10, device=CPU, tta_flip=True) == plain
    assert capture.captures == 2  # batches of 4 and the last one of 2, each captured once
    x = loader.batch(0, 0)[0]
    with torch.no_grad():
        out = graphed(x)
        static = graphed.graphs[(tuple(x.shape), x.stride(), x.dtype, x.device)][2][0]
        assert out.data_ptr() != static.data_ptr()  # a second call (flip TTA) cannot overwrite it
    graphed.train()
    with torch.no_grad():
        graphed(x)
    assert capture.captures == 2  # training mode is the model itself


def test_a_graphed_run_trains_like_the_eager_run_and_resumes_exactly(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    capture = CountingCapture()
    monkeypatch.setattr(train_mod, "check_cuda_graphs", lambda *a, **k: None)  # let the CPU stand in for CUDA
    monkeypatch.setattr(graphs, "cuda_capture", capture)
    # 8 layers and 300 held-out images keep the four runs short.
    kw = dict(amp="none", channels_last=True, label_smoothing=0.1, model="resnet", model_args={"depth": 8},
              val_split=300)
    eager = train(tiny(tmp_path, "eager", **kw))
    straight = train(tiny(tmp_path, "graphed", cuda_graphs=True, **kw))
    # the step once; evaluation once per batch shape (300 held-out images: batches of 256 and a last one of 44)
    assert straight.status == "completed" and capture.captures == 3
    assert json.loads((tmp_path / "graphed" / "config.json").read_text())["cuda_graphs"] is True
    a = torch.load(tmp_path / "eager" / "last.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "graphed" / "last.pt", weights_only=True)["state_dict"]
    # fused SGD against the default foreach SGD: the same update, summed in another order
    assert all(torch.allclose(a[k].float(), b[k].float(), rtol=1e-4, atol=1e-5) for k in a)
    assert straight.best["val_top1_err"] == pytest.approx(eager.best["val_top1_err"], abs=0.02)

    with sigint_at(5, monkeypatch):
        assert train(tiny(tmp_path, "resumed", cuda_graphs=True, **kw)).status == "interrupted"
    resumed = tiny(tmp_path, "x", cuda_graphs=True, **kw).replace(resume=str(tmp_path / "resumed"))
    assert train(resumed).status == "completed"
    c = torch.load(tmp_path / "resumed" / "last.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(b[k], c[k]) for k in b)
