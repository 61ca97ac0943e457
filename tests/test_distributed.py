"""Multi-process training under torchrun: gloo on CPU, loopback only, a few iterations on the bundled sample.

Every 2-process run is compared with one 1-process run of the same global batch. The
default BatchNorm model trains with ``--sync-bn`` (CpuSyncBatchNorm on gloo), so the two
must agree to float rounding. How much rounding: a freshly initialised BatchNorm network
amplifies it at every step (about 4x per step at lr 0.002; roughly with lr squared), in
one process as much as in two. The runs therefore take 4 steps at lr 0.001 in NCHW
(``--no-channels-last``: PyTorch's channels_last CPU batch norm is far less precise; at
lr 0.02 one process in channels_last ends 1.7e-4 away from one process in NCHW). Measured
here: 2 processes end 1.5e-6 from 1 process in the weights and 1e-5 in the BatchNorm
running variances (averages of batch statistics, of magnitude 1 to 4, compared relatively);
without --sync-bn the gaps are 3.5e-4 and 0.12.

Faults are injected by a test-only entry point (``WORKER`` below, written to tmp_path):
nothing in the package knows about them."""

from __future__ import annotations

import copy
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn

from resnetlab.cli import main
from resnetlab.engine import distributed
from resnetlab.engine import train as train_mod

REPO = Path(__file__).resolve().parents[1]
SAMPLE = str(REPO / "resnetlab" / "data" / "sample" / "cifar10-sample")
# 320 images, 33 of them held out for validation (an odd count: ranks get 17 and 16), 4 iterations of 32.
COMMON = ["--data", SAMPLE, "--subset", "320", "--val-split", "33", "--batch-size", "32", "--iters", "4",
          "--eval-every", "2", "--device", "cpu", "--seed", "3", "--amp", "none", "--no-channels-last",
          "--lr", "0.001"]
TOL = 1e-5  # weights; BatchNorm running statistics: relative, 1e-4

# The test-only torchrun entry point: resnetlab's CLI, plus
#   TEST_FAULT=kill:RANK:STEP  the rank kills itself (SIGKILL) at that step, on the first attempt only;
#   TEST_FAULT=hang:RANK:STEP  the rank stops answering (until torchrun's SIGTERM) at that step;
#   TEST_WATCH_DIR/TEST_LOG_DIR  every rank lists the files it wrote under WATCH_DIR (audit hook).
WORKER = r'''
import atexit, json, os, signal, sys, time
from pathlib import Path

from resnetlab.cli import main
from resnetlab.engine import train as train_mod

rank = int(os.environ["RANK"])
fault = os.environ.get("TEST_FAULT")
if fault and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0":
    kind, fault_rank, fault_step = fault.split(":")
    real_lr_at = train_mod.lr_at

    def faulty_lr_at(step, schedule):
        if rank == int(fault_rank) and step == int(fault_step):
            if kind == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)  # hung, yet torchrun's SIGTERM still ends it
            while True:
                time.sleep(1)
        return real_lr_at(step, schedule)

    train_mod.lr_at = faulty_lr_at

watch = os.environ.get("TEST_WATCH_DIR")
if watch:
    written = []

    def audit(event, args):
        if event == "open":
            path, mode, flags = args
            writing = any(c in mode for c in "wax+") if isinstance(mode, str) else \
                bool((flags or 0) & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND))
        elif event in ("os.rename", "os.mkdir", "os.remove"):
            path, writing = (args[1] if event == "os.rename" else args[0]), True
        else:
            return
        if writing and isinstance(path, (str, os.PathLike)) and os.fspath(path).startswith(watch):
            written.append(os.fspath(path))

    sys.addaudithook(audit)
    log = Path(os.environ["TEST_LOG_DIR"]) / f"writes-rank{rank}.json"
    atexit.register(lambda: log.write_text(json.dumps(written)))

sys.exit(main(sys.argv[1:]))
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """In-process runs use one thread, like each torchrun worker (OMP_NUM_THREADS=1): on 2 cores busy with
    other jobs a 2-thread run was several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data cache shared by this process and the torchrun workers (decoded once, by the first run)."""
    path = tmp_path_factory.mktemp("dist-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RESNETLAB_DATA", str(path))
        yield path


@pytest.fixture(scope="module")
def launcher(cache: Path, tmp_path_factory: pytest.TempPathFactory):
    """``run(args, ...)`` starts 2 processes under torchrun on 127.0.0.1; skips where that cannot work."""
    if sys.platform == "win32" or not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("needs torch.distributed with gloo on a POSIX system")
    try:
        _free_port()
        subprocess.run([sys.executable, "-c", "pass"], check=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"cannot open a loopback port or spawn processes here: {exc}")
    worker = tmp_path_factory.mktemp("worker") / "worker.py"
    worker.write_text(WORKER)
    pythonpath = os.pathsep.join(p for p in [str(REPO), os.environ.get("PYTHONPATH", "")] if p)
    env = {**os.environ, "RESNETLAB_DATA": str(cache), "OMP_NUM_THREADS": "1", "PYTHONPATH": pythonpath}
    if "lo" in {name for _, name in socket.if_nameindex()}:
        env["GLOO_SOCKET_IFNAME"] = "lo"  # keep gloo's traffic on the loopback interface

    def run(args: list[str], *, module: bool = False, elastic_restarts: int | None = None,
            extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        if elastic_restarts is None:
            rdzv = ["--master-addr=127.0.0.1", f"--master-port={_free_port()}"]
        else:
            # Restarts need the c10d rendezvous and, in torch 2.13, a store per attempt (see README "Scaling out").
            rdzv = ["--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{_free_port()}", "--local-addr=127.0.0.1",
                    f"--max-restarts={elastic_restarts}"]
        entry = ["-m", "resnetlab"] if module else [str(worker)]
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", *rdzv, *entry, *args]
        proc = subprocess.Popen(cmd, env={**env, **(extra_env or {})}, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            # The timeout only keeps a broken test from hanging the suite; nothing asserts on durations.
            out, err = proc.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # torchrun and the workers it started, nothing else
            out, err = proc.communicate()
            pytest.fail(f"torchrun did not finish in 300 s:\n{out[-2000:]}\n{err[-4000:]}")
        return subprocess.CompletedProcess(cmd, proc.returncode, out, err)

    return run


@pytest.fixture(scope="module")
def reference(cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 1-process run every 2-process run must follow."""
    out = tmp_path_factory.mktemp("ref") / "run"
    assert main(["train", *COMMON, "--out", str(out)]) == 0
    return out


def _ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]


def assert_same_weights(a: Path, b: Path) -> None:
    """Same step, every weight within ``TOL`` and every BatchNorm running statistic within 1e-4 (relative)."""
    ca = torch.load(a / "last.pt", weights_only=True)
    cb = torch.load(b / "last.pt", weights_only=True)
    assert ca["step"] == cb["step"]
    for key, value in ca["state_dict"].items():
        running = key.endswith(("running_mean", "running_var"))
        torch.testing.assert_close(cb["state_dict"][key], value, rtol=1e-4 if running else 0, atol=TOL, msg=key)


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


# ----------------------------------------------------------------------------- torchrun


def test_two_processes_follow_one_process(launcher, reference: Path, tmp_path: Path) -> None:
    """`torchrun -m resnetlab train --sync-bn`: same weights, same exact validation counts, one writer."""
    out = tmp_path / "run"
    proc = launcher(["train", *COMMON, "--sync-bn", "--out", str(out)], module=True)
    _ok(proc)
    assert "world=2" in proc.stdout and proc.stdout.count("done: best") == 1  # only rank 0 logs
    assert_same_weights(reference, out)
    one, two = metrics(reference), metrics(out)
    assert [m["iteration"] for m in two] == [2, 4]  # written once, not once per rank
    for a, b in zip(one, two):
        # 33 validation images in shards of 17 and 16: errors are counted, not averaged per rank.
        assert b["val_top1_err"] * 33 == pytest.approx(a["val_top1_err"] * 33, abs=1e-9)
        assert b["val_loss"] == pytest.approx(a["val_loss"], abs=1e-5)
        assert b["train_loss"] == pytest.approx(a["train_loss"], abs=1e-5)
    config = json.loads((out / "config.json").read_text())
    assert config["resolved"]["world_size"] == 2 and config["sync_bn"] is True


def test_two_processes_resume_a_one_process_run_and_only_rank_0_writes(
    launcher, reference: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 1-process run stopped at iteration 2 is finished by 2 processes (adding --sync-bn on resume)."""
    run = tmp_path / "run"
    real_lr_at = train_mod.lr_at

    def interrupt_at_2(step: int, schedule) -> float:
        if step == 1:
            signal.raise_signal(signal.SIGINT)  # the loop stops after this step, at iteration 2
        return real_lr_at(step, schedule)

    monkeypatch.setattr(train_mod, "lr_at", interrupt_at_2)
    assert main(["train", *COMMON, "--out", str(run)]) == 128 + signal.SIGINT
    monkeypatch.setattr(train_mod, "lr_at", real_lr_at)
    halfway = torch.load(run / "last.pt", weights_only=True)
    assert halfway["step"] == 2

    logs = tmp_path / "logs"
    logs.mkdir()
    proc = launcher(["train", "--resume", str(run), "--sync-bn", "--device", "cpu"],
                    extra_env={"TEST_WATCH_DIR": str(run), "TEST_LOG_DIR": str(logs)})
    _ok(proc)
    assert "resumed" in proc.stdout and "at iteration 2 of 4" in proc.stdout
    assert_same_weights(reference, run)
    # The two processes' iterations 3-4 moved the weights far more than the tolerance.
    final = torch.load(run / "last.pt", weights_only=True)["state_dict"]
    assert max((final[k] - v).abs().max().item() for k, v in halfway["state_dict"].items()
               if v.is_floating_point()) > 100 * TOL

    rank0 = json.loads((logs / "writes-rank0.json").read_text())
    rank1 = json.loads((logs / "writes-rank1.json").read_text())
    assert rank1 == []
    names = {Path(p).name for p in rank0}
    assert {"config.json", "metrics.jsonl", "last.pt", "summary.json"} <= names, names


def test_elastic_restart_continues_from_the_run_folder(launcher, reference: Path, tmp_path: Path) -> None:
    """--max-restarts 1 with --resume auto: rank 1 dies after the checkpoint at 2; the restart finishes the run."""
    out = tmp_path / "run"
    proc = launcher(["train", *COMMON, "--sync-bn", "--out", str(out), "--resume", "auto"], elastic_restarts=1,
                    extra_env={"TEST_FAULT": "kill:1:3", "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"})
    _ok(proc)
    assert "exitcode: -9" in proc.stderr  # the first attempt did die (SIGKILL)
    assert "resumed" in proc.stdout and "at iteration 2 of 4" in proc.stdout
    assert_same_weights(reference, out)


def test_a_hung_rank_ends_the_job_at_the_timeout(launcher, tmp_path: Path) -> None:
    """Rank 1 stops answering: rank 0's collective times out (RESNETLAB_DIST_TIMEOUT) and torchrun ends the job."""
    proc = launcher(["train", *COMMON, "--sync-bn", "--out", str(tmp_path / "run")],
                    extra_env={"TEST_FAULT": "hang:1:3", "RESNETLAB_DIST_TIMEOUT": "4"})
    assert proc.returncode != 0
    text = (proc.stdout + proc.stderr).lower()
    assert "childfailederror" in text and ("timeout" in text or "timed out" in text), text[-3000:]


# ----------------------------------------------------------------------------- in one process


def test_resume_auto_starts_then_continues(cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """What torchrun --max-restarts relaunches: the same command starts the run, then continues it."""
    args = ["train", *COMMON, "--iters", "1", "--eval-every", "1", "--out", str(tmp_path / "run"), "--resume", "auto"]
    assert main(args) == 0
    first = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    capsys.readouterr()
    assert main(args) == 0
    assert "resumed" in capsys.readouterr().out
    again = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert again["step"] == first["step"] == 1
    assert len(metrics(tmp_path / "run")) == 1
    assert main(["train", *COMMON, "--resume", "auto"]) == 2
    assert "--resume auto needs --out" in capsys.readouterr().err


def test_cpu_sync_batchnorm_keeps_keys_and_is_batchnorm_in_one_process() -> None:
    """Conversion re-uses parameters and buffers (checkpoints load into the plain model); alone it is BatchNorm."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Sequential(nn.BatchNorm2d(4)))
    expected = copy.deepcopy(model)
    keys, bn_weight = list(model.state_dict()), model[1].weight
    synced = distributed.convert_sync_batchnorm(model, torch.device("cpu"))
    assert isinstance(synced[1], distributed.CpuSyncBatchNorm)
    assert isinstance(synced[3][0], distributed.CpuSyncBatchNorm)
    assert synced[1].weight is bn_weight and list(synced.state_dict()) == keys
    x = torch.randn(6, 3, 8, 8)
    torch.testing.assert_close(synced(x), expected(x))
    torch.testing.assert_close(synced[1].running_var, expected[1].running_var)
    info = distributed.DistInfo(0, 1, 0, torch.device("cpu"))
    assert distributed.same_on_all_ranks(7, info) and distributed.broadcast_flag(True, info)
