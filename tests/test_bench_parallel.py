"""``resnetlab bench parallel``: K training processes timed over one common window, on the CPU at toy size."""

from __future__ import annotations

from pathlib import Path

import pytest

from resnetlab.bench.parallel import ParallelPoint, ParallelResult, format_parallel, run_parallel_bench
from resnetlab.cli import main
from resnetlab.engine.config import recipe_config
from resnetlab.errors import UserError

SAMPLE = str(Path(__file__).resolve().parents[1] / "resnetlab" / "data" / "sample" / "cifar10-sample")


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESNETLAB_DATA", str(tmp_path_factory.getbasetemp() / "cache"))


def toy(**changes):
    """An 8-layer net at batch 16 on 64 sample images: the real build_run and train_step, seconds to set up."""
    return recipe_config("paper-cifar", model="resnet", model_args={"depth": 8}, data=SAMPLE, subset=64,
                         val_split=16, batch_size=16, device="cpu", amp="none", iters=10**9, epochs=None, **changes)


def test_k_runs_are_timed_together_and_each_reports(tmp_path: Path) -> None:
    result = run_parallel_bench(toy(), [1, 2], seconds=0.5, warmup=2, threads=1)
    assert [(p.procs, p.threads, len(p.per_run_img_s)) for p in result.points] == [(1, 1, 1), (2, 1, 2)]
    assert all(x > 0 for p in result.points for x in p.per_run_img_s)
    assert result.points[1].total_img_s == sum(result.points[1].per_run_img_s)
    assert result.amp == "none" and result.device.startswith("cpu (") and "thread" not in result.device
    assert result.to_dict()["points"][1]["total_img_s"] == result.points[1].total_img_s


def test_a_run_that_fails_fails_the_point_without_hanging_the_others() -> None:
    # The weights file is only read inside each process (build_run), after the parent's checks passed.
    with pytest.raises(UserError, match=r"run \d of 2 failed: UserError: weights file not found"):
        run_parallel_bench(toy(init="/nonexistent/weights.pt"), [2], seconds=0.5, warmup=2, threads=1)


def test_a_run_killed_before_reporting_is_named_at_once() -> None:
    import multiprocessing as mp
    import os
    import signal
    import threading
    import time

    def kill_one() -> None:  # as the OOM killer would: no exception, no report
        while not mp.active_children():
            time.sleep(0.05)
        time.sleep(1.0)
        os.kill(mp.active_children()[0].pid, signal.SIGKILL)

    threading.Thread(target=kill_one, daemon=True).start()
    start = time.monotonic()
    with pytest.raises(UserError, match=r"run \d of 2 exited with status -9 before reporting"):
        run_parallel_bench(toy(), [2], seconds=60, warmup=2, threads=1)
    assert time.monotonic() - start < 50  # not the 60 s window, nor the barrier's timeout: the others are killed


@pytest.mark.parametrize("argv,message", [
    (["bench", "parallel", "--modes", "default"], "--modes is not an option of `bench parallel`"),
    (["bench", "train", "--procs", "2"], "--procs is an option of `bench parallel`, not `bench train`"),
    (["bench", "infer", "--cuda-graphs"], "--cuda-graphs is an option of `bench parallel`"),
    (["bench", "parallel", "--procs", "one"], "--procs takes comma-separated counts"),
    (["bench", "parallel", "--procs", "0"], "--procs takes positive counts"),
    (["bench", "parallel", "--device", "cpu", "--cuda-graphs"], "--cuda-graphs needs a CUDA device"),
    (["bench", "parallel", "--device", "cpu", "--model", "resnet8"], "unknown model 'resnet8'"),
    (["bench", "parallel", "--device", "cpu", "--data", "/nonexistent/images"], "/nonexistent/images"),
], ids=["modes", "procs-on-train", "graphs-on-infer", "procs-words", "procs-zero", "graphs-on-cpu", "model", "data"])
def test_bad_input_is_one_line_and_exit_2(argv: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_the_table_gives_totals_against_the_first_point() -> None:
    result = ParallelResult("resnet20", "paper-cifar", 128, "cuda (NVIDIA H100)", "bf16", True, 10.0,
                            [ParallelPoint(1, 16, [1000.0]), ParallelPoint(2, 8, [900.0, 700.0])])
    assert format_parallel(result).splitlines()[2:] == [
        "| runs | threads per run | img/s in all | img/s per run, median (range) | in all vs 1 run |",
        "|---:|---:|---:|---:|---:|",
        "| 1 | 16 | 1,000 | 1,000 (1,000-1,000) | 1.00x |",
        "| 2 | 8 | 1,600 | 800 (700-900) | 1.60x |",
    ]
    assert "amp bf16, CUDA graphs, 10 s timed" in format_parallel(result).splitlines()[0]
