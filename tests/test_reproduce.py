"""``resnetlab reproduce``: every experiment at ``--budget smoke`` on the bundled sample, resume, layer responses."""

from __future__ import annotations

import json
import math
import shutil
import signal
from pathlib import Path

import pytest
import torch

from resnetlab.cli import main
from resnetlab.engine import train as train_mod
from resnetlab.errors import UserError
from resnetlab.experiments.layer_responses import LayerStats, measure_responses, response_layers
from resnetlab.experiments.reproduce import BUDGETS, EXPERIMENTS
from resnetlab.experiments.runs import ExperimentInterrupted, RunSpec, base_config, ensure_run, run_all
from resnetlab.models import create_model

from _util import json_numbers

SAMPLE = str(Path(__file__).resolve().parents[1] / "resnetlab" / "data" / "sample" / "cifar10-sample")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FIGURE = {"degradation": "degradation.png", "table6": "table6.png", "layer-responses": "layer_responses.png",
          "shortcuts": "shortcuts.png", "preact": "preact.png"}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every experiment once through the CLI at --budget smoke; layer-responses reuses degradation's runs."""
    mp = pytest.MonkeyPatch()
    mp.setenv("RESNETLAB_DATA", str(tmp_path_factory.getbasetemp() / "cache"))
    base = tmp_path_factory.mktemp("reproduce")
    outs = {}
    try:
        for name in EXPERIMENTS:
            out = base / name
            argv = ["reproduce", name, "--budget", "smoke", "--data", SAMPLE, "--out", str(out)]
            if name == "degradation":  # checkpoints outside the report folder, as for docs/results
                argv += ["--runs", str(base / "degradation-runs")]
            if name == "layer-responses":
                argv += ["--from", str(base / "degradation")]
            assert main(argv) == 0, name
            outs[name] = out
    finally:
        mp.undo()
    return outs


@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_smoke_writes_report_figure_and_finite_numbers(smoke: dict[str, Path], name: str) -> None:
    out = smoke[name]
    assert (out / FIGURE[name]).read_bytes()[:8] == PNG_MAGIC
    results = json.loads((out / "results.json").read_text())
    numbers = list(json_numbers(results))
    assert numbers and all(math.isfinite(v) for v in numbers)
    assert "non_finite" not in results
    config = json.loads((out / "config.json").read_text())
    assert config["experiment"] == name and config["budget"] == "smoke" and config["iters"] == BUDGETS["smoke"].iters
    # The paper's precision unless asked, stated next to the results, not only in config.json.
    assert config["amp"] == "none" and config["compile"] is False and config["hardware"].startswith("cpu (")
    report = (out / "report.md").read_text()
    assert "Precision: fp32, as the paper trained; torch.compile off; hardware: cpu (" in report
    report = (out / "report.md").read_text()
    assert f"resnetlab reproduce {name} --budget smoke --seeds 1 --data {SAMPLE}" in report
    assert f"]({FIGURE[name]})" in report and "smoke" in report
    # Every run is a normal `resnetlab train` folder.
    for run in config["runs"]:
        assert (Path(run["dir"]) / "summary.json").is_file() and (Path(run["dir"]) / "last.pt").is_file()


def test_degradation_runs_and_checks(smoke: dict[str, Path]) -> None:
    results = json.loads((smoke["degradation"] / "results.json").read_text())
    assert set(results["runs"]) == {f"{a}{d}" for a in ("plain", "resnet") for d in (20, 32, 44, 56)}
    # Option A: plain and residual twins have the same parameters (paper Sec. 4.2).
    assert results["runs"]["plain56"]["params"] == results["runs"]["resnet56"]["params"] == 853_018
    assert set(results["checks"]) >= {"plain56_train_err_above_plain20", "resnet56_val_err_below_resnet20"}
    assert [m["iteration"] for m in results["runs"]["resnet20"]["history"]] == [2]  # one evaluation, at the end
    # The run folders live in --runs; the report folder gets their logs but no checkpoints.
    out = smoke["degradation"]
    assert not list(out.rglob("*.pt")) and not (out / "runs").exists()
    assert (out / "run-logs" / "plain56-s0" / "metrics.jsonl").read_text().count("\n") == 1
    assert (out.parent / "degradation-runs" / "plain56-s0" / "last.pt").is_file()


def test_layer_responses_reuse_and_shape(smoke: dict[str, Path]) -> None:
    results = json.loads((smoke["layer-responses"] / "results.json").read_text())
    # plain-20/56 and ResNet-20/56 come from degradation; only ResNet-110 is trained here.
    assert sorted(results["reused_runs"]) == ["plain20-s0", "plain56-s0", "resnet20-s0", "resnet56-s0"]
    assert results["trained_in_this_invocation"] == ["resnet110-s0"]
    for name, depth in (("plain20", 20), ("resnet56", 56), ("resnet110", 110)):
        r = results["responses"][name]
        assert len(r["std"]) == depth - 1  # every 3x3 layer: the stem and two per unit
        assert r["std_sorted"] == sorted(r["std"], reverse=True)
    assert "reused" in (smoke["layer-responses"] / "report.md").read_text()


def test_the_gpu_job_script_resumes_finished_runs_and_packs_what_comes_back(smoke: dict[str, Path],
                                                                             tmp_path: Path) -> None:
    """scripts/gpu_train.sh end to end on the CPU over table6's finished smoke runs (their training is the
    smoke test's): reproduce reuses them, and every run and the report come back as archives under the limits."""
    import os
    import subprocess
    import sys
    import tarfile

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "out"
    env = {**os.environ, "BUDGET": "smoke", "DEVICE": "cpu", "GRAPHS": "0", "AMP": "none", "PARALLEL": "2",
           "DATA": SAMPLE, "OUT": str(out), "RUNS": str(smoke["table6"] / "runs"), "REPORT": str(tmp_path / "report"),
           "PYTHON": sys.executable, "RESNETLAB_DATA": str(smoke["table6"].parent.parent / "cache")}
    done = subprocess.run(["bash", str(root / "scripts" / "gpu_train.sh")], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert done.stdout.count("finished earlier; reusing") == 5
    names = sorted(p.name for p in out.iterdir())
    assert names == ["report.tar.gz"] + sorted(f"resnet{d}-s0.tar.gz" for d in (20, 32, 44, 56, 110))
    assert all(p.stat().st_size <= 16 * 2**20 for p in out.iterdir())
    with tarfile.open(out / "resnet110-s0.tar.gz") as t:
        # The final network (last.pt), not the one picked on the validation images (best.pt).
        assert sorted(t.getnames()) == ["config.json", "last.pt", "metrics.jsonl", "summary.json"]
    with tarfile.open(out / "report.tar.gz") as t:
        assert {"report/report.md", "report/results.json", "report/train.log"} <= set(t.getnames())
    env["DATA"] = str(tmp_path / "nowhere")
    missing = subprocess.run(["bash", str(root / "scripts" / "gpu_train.sh")], env=env, capture_output=True, text=True)
    assert missing.returncode == 2 and "no data at" in missing.stderr


def test_the_gpu_job_reads_finished_cpu_runs_under_the_data_path_they_name(tmp_path: Path) -> None:
    """At the full budget the job passes every finished docs/results/paper-cifar-* folder as --from, and names
    the data as the CPU runs did (../shared/...), linking that path to the carried .data/ copy where ../shared
    did not travel: otherwise reproduce refuses the runs (data differs) or trains ResNet-20/32 again."""
    import os
    import subprocess

    repo = tmp_path / "machine" / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy(Path(__file__).resolve().parents[1] / "scripts" / "gpu_train.sh", repo / "scripts")
    (repo / ".data" / "cifar10" / "train").mkdir(parents=True)
    for name, finished in (("resnet20", True), ("resnet44", False)):
        (repo / "docs" / "results" / f"paper-cifar-{name}").mkdir(parents=True)
        if finished:
            (repo / "docs" / "results" / f"paper-cifar-{name}" / "summary.json").write_text("{}")
    env = {**os.environ, "PRINT_ONLY": "1", "OUT": str(tmp_path / "out")}
    for key in ("DATA", "FROM", "BUDGET"):
        env.pop(key, None)
    done = subprocess.run(["bash", "scripts/gpu_train.sh"], cwd=repo, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    line = done.stdout.strip()
    assert "--data ../shared/data/cifar10/train " in line
    assert line.count("--from") == 1 and "--from docs/results/paper-cifar-resnet20" in line
    link = tmp_path / "machine" / "shared" / "data" / "cifar10"
    assert link.is_symlink() and link.resolve() == (repo / ".data" / "cifar10").resolve()
    smoke = subprocess.run(["bash", "scripts/gpu_train.sh"], cwd=repo, env={**env, "BUDGET": "smoke"},
                           capture_output=True, text=True)
    assert smoke.returncode == 0 and "--from" not in smoke.stdout  # full-budget runs would be refused there


def test_the_gpu_job_can_measure_concurrent_runs_alone(tmp_path: Path) -> None:
    """BENCH_PARALLEL=1 with TRAIN_SECONDS=0: only `bench parallel`, its JSON in the report that comes back."""
    import os
    import subprocess
    import sys
    import tarfile

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "out"
    env = {**os.environ, "BUDGET": "smoke", "DEVICE": "cpu", "GRAPHS": "0", "AMP": "none", "DATA": SAMPLE,
           "OUT": str(out), "RUNS": str(tmp_path / "runs"), "REPORT": str(tmp_path / "report"),
           "PYTHON": sys.executable, "BENCH_PARALLEL": "1", "TRAIN_SECONDS": "0", "BENCH_MODELS": "resnet20",
           "PROCS": "1", "BENCH_SECONDS": "0.3", "RESNETLAB_DATA": str(tmp_path / "cache")}
    done = subprocess.run(["bash", str(root / "scripts" / "gpu_train.sh")], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "reproduce" not in done.stdout and sorted(p.name for p in out.iterdir()) == ["report.tar.gz"]
    with tarfile.open(out / "report.tar.gz") as t:
        result = json.load(t.extractfile("report/parallel-resnet20.json"))
    assert result["model"] == "resnet20" and [p["procs"] for p in result["points"]] == [1]
    assert result["points"][0]["total_img_s"] > 0


def test_table6_and_preact_have_paper_columns(smoke: dict[str, Path]) -> None:
    t6 = json.loads((smoke["table6"] / "results.json").read_text())
    assert t6["paper_test_err_pct"]["110"] == 6.43 and "resnet1202" not in t6["runs"]
    assert t6["runs"]["resnet110"]["params"] == 1_727_962
    assert "the same validation images (split seed 0)" in (smoke["table6"] / "report.md").read_text()
    pre = json.loads((smoke["preact"] / "results.json").read_text())
    assert pre["paper_test_err_pct"]["preact_resnet164"] == 5.46
    # The original 164 has the pre-activation 164's layers (bottlenecks, projection shortcuts).
    assert set(pre["runs"]) == {"resnet110", "preact_resnet110", "resnet164", "preact_resnet164"}
    sc = json.loads((smoke["shortcuts"] / "results.json").read_text())
    assert sc["runs"]["resnet20-A"]["params"] < sc["runs"]["resnet20-B"]["params"] < sc["runs"]["resnet20-C"]["params"]


def _run_copy(src: Path, dest: Path, drop: str, **changes) -> Path:
    """A copy of a finished run folder under another name, without ``drop`` (``last.pt``: committed logs;
    ``summary.json``: an unfinished run), its config.json changed by ``changes`` (``resolved.amp`` nests)."""
    shutil.copytree(src, dest)
    (dest / drop).unlink()
    cfg = json.loads((dest / "config.json").read_text())
    for key, value in changes.items():
        *parents, leaf = key.split(".")
        node = cfg
        for k in parents:
            node = node[k]
        node[leaf] = value
    (dest / "config.json").write_text(json.dumps(cfg))
    return dest


def test_table6_reads_run_folders_and_lists_what_is_not_finished(smoke: dict[str, Path], tmp_path: Path) -> None:
    runs = smoke["table6"] / "runs"
    # ResNet-20 as committed logs (no last.pt), trained in bf16: precision may differ, the table says so. The
    # engine logs each session's precision; this run was started in fp32 and resumed in bf16 at iteration 1.
    sessions = json.loads((runs / "resnet20-s0" / "config.json").read_text())["resolved"]["sessions"]
    assert [s["amp"] for s in sessions] == ["none"]
    resumed = [sessions[0], dict(sessions[0], from_iteration=1, amp="bf16", hardware="cpu (another, native bf16)")]
    r20 = _run_copy(runs / "resnet20-s0", tmp_path / "paper-r20", "last.pt", amp="bf16",
                    **{"resolved.amp": "bf16", "resolved.sessions": resumed})
    r32 = _run_copy(runs / "resnet32-s0", tmp_path / "paper-r32", "summary.json")  # interrupted
    out = tmp_path / "t6"
    argv = ["reproduce", "table6", "--budget", "smoke", "--data", SAMPLE, "--from", str(r20), "--from", str(r32),
            "--finished-only", "--out", str(out)]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert list(results["runs"]) == ["resnet20"]
    assert results["runs"]["resnet20"]["precision"] == ["fp32, bf16 autocast from 1"]
    assert results["not_trained"] == ["resnet32", "resnet44", "resnet56", "resnet110"]
    assert results["trained_in_this_invocation"] == [] and not (out / "runs").exists()
    report = (out / "report.md").read_text()
    cells = f"| fp32, bf16 autocast from 1 | {sessions[0]['hardware']}; cpu (another, native bf16) | 0.00 |"
    assert "| ResNet-20 | 0.27M | 0.27M |" in report and cells in report
    assert f"- ResNet-32: in progress in `{r32}`, iteration 2 of 2;" in report and "- ResNet-44: no run yet." in report
    assert "Every run was read from `--from`, none trained by this command" in report
    assert "Training: none here; the 1 run(s) were read from " in report and "trained 0 of 1;" in report
    assert "Run folders (checkpoints" not in report  # there is no runs folder to point at
    config = json.loads((out / "config.json").read_text())
    assert config["reused_runs"] == {"resnet20-s0": str(r20)} and config["finished_only"] is True


def test_from_refuses_a_run_of_another_recipe_and_finished_only_needs_something(
        smoke: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    other = _run_copy(smoke["table6"] / "runs" / "resnet20-s0", tmp_path / "r20", "last.pt", iters=3)
    base = ["reproduce", "table6", "--budget", "smoke", "--data", SAMPLE, "--finished-only"]
    assert main(base + ["--from", str(other), "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert f"--from: {other} is not the run this experiment needs (iters: the folder's run has 3" in err
    assert err.count("\n") == 1
    assert main(base + ["--out", str(tmp_path / "b")]) == 2
    assert "--finished-only: no finished run of table6 in" in capsys.readouterr().err
    # The experiments whose claims compare every network with every other cannot leave one out.
    r20 = _run_copy(smoke["degradation"].parent / "degradation-runs" / "resnet20-s0", tmp_path / "d20", "last.pt")
    assert main(["reproduce", "degradation", "--budget", "smoke", "--data", SAMPLE, "--finished-only", "--from",
                 str(r20), "--out", str(tmp_path / "c")]) == 2
    assert "--finished-only: degradation compares all its networks, and plain-20, " in capsys.readouterr().err


def test_rerun_trains_nothing(smoke: dict[str, Path]) -> None:
    out = smoke["shortcuts"]
    before = (out / "runs" / "resnet20-A-s0" / "summary.json").stat().st_mtime_ns
    assert main(["reproduce", "shortcuts", "--budget", "smoke", "--data", SAMPLE, "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["trained_in_this_invocation"] == []
    assert [len(i["trained"]) for i in results["invocations"]] == [6, 0]  # both calls are on record
    assert (out / "runs" / "resnet20-A-s0" / "summary.json").stat().st_mtime_ns == before


def test_run_folders_from_before_split_seed_match_by_their_seed() -> None:
    """A config.json without split_seed drew its split with seed; it is the same run only where that agrees."""
    from resnetlab.experiments.runs import first_difference

    cfg = base_config(BUDGETS["smoke"], SAMPLE, None, "cpu").replace(seed=2)
    old = cfg.to_dict()
    del old["split_seed"]
    assert first_difference(old, cfg.replace(split_seed=2)) is None
    assert first_difference(old, cfg).startswith("split_seed:")
    assert first_difference(cfg.to_dict(), cfg) is None


@pytest.mark.parametrize("field,value", [
    ("iters", 3), ("warmup_iters", 7), ("milestones", (0.4, 0.8)), ("momentum", 0.8), ("weight_decay", 5e-4),
    ("augment", "flip"), ("amp", "bf16"), ("compile", True), ("data", "elsewhere"), ("split_seed", 9),
    ("normalize", "channel"), ("nesterov", True), ("label_smoothing", 0.1),
])
def test_a_run_is_reused_only_when_its_whole_identity_matches(field: str, value, tmp_path: Path) -> None:
    """One differing field (budget, recipe, augmentation, precision, compile, data, split) is refused, by name."""
    from resnetlab.experiments.runs import first_difference

    cfg = base_config(BUDGETS["smoke"], SAMPLE, None, "cpu")
    saved = cfg.replace(**{field: value}).to_dict()
    assert first_difference(saved, cfg).startswith(f"{field}: the folder's run has ")
    run_dir = tmp_path / "runs" / "a-s0"
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps({**saved, "model": "resnet20", "model_args": {}, "seed": 0}))
    (run_dir / "last.pt").write_bytes(b"")
    with pytest.raises(UserError, match=f"holds a different run \\({field}: "):
        ensure_run(RunSpec("a-s0", "resnet20", "a", 0), cfg, tmp_path / "runs", log=lambda _: None)


def test_reproduce_trains_in_fp32_by_default_and_says_what_it_used() -> None:
    cfg = base_config(BUDGETS["short"], None, None, "cpu")
    assert (cfg.amp, cfg.compile) == ("none", False)
    assert (base_config(BUDGETS["full"], None, None, "cpu", amp="bf16", compile=True).amp, True) == ("bf16", True)


@pytest.mark.parametrize("depth", [20, 56, 110])
def test_short_budget_ramps_every_depth_and_full_keeps_the_papers_warm_up(depth: int) -> None:
    from resnetlab.engine.schedule import lr_at

    short = train_mod.resolve_schedule(base_config(BUDGETS["short"], None, None, "cpu"), 351, depth)
    ramp = round(0.1 * BUDGETS["short"].iters)
    assert short.warmup_iters == ramp and short.warmup_lr is None
    assert lr_at(0, short) == pytest.approx(0.1 / ramp) and lr_at(ramp // 2 - 1, short) == pytest.approx(0.05)
    assert lr_at(ramp, short) == pytest.approx(0.1) and lr_at(short.milestones[0], short) == pytest.approx(0.01)
    full = train_mod.resolve_schedule(base_config(BUDGETS["full"], None, None, "cpu"), 351, depth)
    # Sec. 4.2: lr 0.01 for the first 400 iterations, only at 110 layers and deeper.
    assert (full.warmup_iters, lr_at(0, full)) == ((400, 0.01) if depth >= 110 else (0, 0.1))
    assert lr_at(400, full) == pytest.approx(0.1)


def test_invocations_of_another_budget_are_not_carried(tmp_path: Path) -> None:
    """A report rewritten at another budget or length must not add the old runs' hours to the new ones'."""
    from resnetlab.experiments.reproduce import previous_invocations

    old = {"wall_seconds": 2484.0, "trained": ["plain20-s0"]}
    (tmp_path / "results.json").write_text(json.dumps({"invocations": [old]}))
    same = {"budget": "short", "iters": 640, "seeds": 1, "data": "d", "val_split": 5000}
    (tmp_path / "config.json").write_text(json.dumps({"experiment": "degradation", **same}))
    assert previous_invocations(tmp_path, "degradation", same) == [old]
    assert previous_invocations(tmp_path, "degradation", {**same, "iters": 2000}) == []
    assert previous_invocations(tmp_path, "degradation", {**same, "budget": "full"}) == []
    assert previous_invocations(tmp_path, "table6", same) == []


# ----------------------------------------------------------------------------- resume


def test_interrupted_experiment_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGINT inside the second run stops the experiment; the next call skips the first and resumes the second."""
    monkeypatch.setenv("RESNETLAB_DATA", str(tmp_path / "cache"))
    torch.set_num_threads(1)
    cfg = base_config(BUDGETS["smoke"], SAMPLE, None, "cpu", iters=4).replace(eval_every=2)
    specs = [RunSpec("a-s0", "resnet20", "a", 0), RunSpec("b-s0", "resnet20", "b", 1)]
    real_lr_at = train_mod.lr_at
    calls = {"n": 0}

    def interrupt_in_second_run(step, schedule):
        calls["n"] += 1
        if calls["n"] == 4 + 3:  # the second run's third step (after 4 steps in the first run)
            signal.raise_signal(signal.SIGINT)
        return real_lr_at(step, schedule)

    monkeypatch.setattr(train_mod, "lr_at", interrupt_in_second_run)
    with pytest.raises(ExperimentInterrupted, match="run the same command again"):
        run_all(specs, cfg, tmp_path / "runs", log=lambda _: None)
    assert (tmp_path / "runs" / "a-s0" / "summary.json").is_file()
    assert (tmp_path / "runs" / "b-s0" / "last.pt").is_file()
    assert not (tmp_path / "runs" / "b-s0" / "summary.json").exists()
    stopped_at = torch.load(tmp_path / "runs" / "b-s0" / "last.pt", weights_only=True)["step"]
    assert stopped_at == 3

    monkeypatch.setattr(train_mod, "lr_at", real_lr_at)
    messages: list[str] = []
    records = run_all(specs, cfg, tmp_path / "runs", log=messages.append)
    assert [r.trained_now for r in records] == [False, True]
    assert any("continuing the interrupted run" in m for m in messages)
    assert any("resumed" in m and "at iteration 3" in m for m in messages)
    assert [m["iteration"] for m in records[1].history] == [2, 4]

    # A folder holding another configuration is refused, not mixed in.
    with pytest.raises(UserError, match="holds a different run"):
        ensure_run(RunSpec("a-s0", "resnet32", "a", 0), cfg, tmp_path / "runs", log=lambda _: None)


def test_bad_arguments(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["reproduce", "degradation", "--budget", "smoke", "--seeds", "0", "--out", str(tmp_path)]) == 2
    assert main(["reproduce", "degradation", "--budget", "smoke", "--from", str(tmp_path / "nowhere"), "--out",
                 str(tmp_path / "x")]) == 2
    assert "--from " + str(tmp_path / "nowhere") + ": no such folder" in capsys.readouterr().err
    assert main(["reproduce", "table6", "--budget", "smoke", "--parallel", "0", "--out", str(tmp_path / "p")]) == 2
    assert "--parallel must be at least 1" in capsys.readouterr().err


# ----------------------------------------------------------------------------- layer responses


def test_layer_stats_match_torch() -> None:
    x = torch.randn(6, 4, 5, 5) * torch.tensor([1.0, 2.0, 3.0, 0.5]).view(1, 4, 1, 1) + 1.5
    s = LayerStats("x")
    s.add(x[:2])
    s.add(x[2:].contiguous(memory_format=torch.channels_last))
    assert s.std() == pytest.approx(float(x.double().std(unbiased=False)), rel=1e-9)
    per_channel = x.double().transpose(0, 1).reshape(4, -1).std(1, unbiased=False).mean()
    assert s.channel_std() == pytest.approx(float(per_channel), rel=1e-9)


def test_response_layers_are_the_bns_after_3x3_convs() -> None:
    torch.manual_seed(0)
    model = create_model("resnet20")
    names = [n for n, _ in response_layers(model)]
    assert len(names) == 19 and names[:3] == ["bn1", "layer1.0.bn1", "layer1.0.bn2"] and names[-1] == "layer3.2.bn2"
    with pytest.raises(ValueError, match="post-activation"):
        response_layers(create_model("preact_resnet110"))
    # The hook sees BN's output before the in-place ReLU: on a fresh net in eval mode BN is the identity
    # (running mean 0, var 1, gamma 1, beta 0), so the stem's response is the stem conv's output.
    x = torch.randn(8, 3, 32, 32)
    res = measure_responses(model, [(x, torch.zeros(8))])
    with torch.no_grad():
        stem = model.conv1(x)
    assert res["std"][0] == pytest.approx(float(stem.double().std(unbiased=False)), rel=1e-4)
    assert model.training  # mode restored


# ----------------------------------------------------------------------------- verdicts are functions of results


def _degradation_summary(plain_train, plain_val, res_train, res_val) -> dict:
    out = {}
    for arch, train_errs, val_errs in (("plain", plain_train, plain_val), ("resnet", res_train, res_val)):
        for d, t, v in zip((20, 32, 44, 56), train_errs, val_errs):
            out[f"{arch}{d}"] = {"final_train_err": {"mean": t}, "final_val_err": {"mean": v}}
    return out


def test_degradation_checks_hold_for_the_papers_picture_and_fail_for_its_opposite() -> None:
    from resnetlab.experiments.reproduce import degradation_checks

    # Fig. 6: plain nets degrade with depth; ResNets improve; the residual gain grows with depth.
    paper = _degradation_summary([0.05, 0.06, 0.07, 0.08], [0.10, 0.11, 0.12, 0.13],
                                 [0.04, 0.03, 0.02, 0.01], [0.09, 0.08, 0.07, 0.06])
    assert all(degradation_checks(paper).values())
    # The opposite picture: every claim fails.
    opposite = _degradation_summary([0.08, 0.07, 0.06, 0.05], [0.06, 0.05, 0.04, 0.03],
                                    [0.09, 0.10, 0.11, 0.12], [0.10, 0.11, 0.12, 0.13])
    assert not any(degradation_checks(opposite).values())
    # One claim at a time: only plain-32 out of order breaks "rises with depth", nothing else.
    one = _degradation_summary([0.05, 0.09, 0.07, 0.08], [0.10, 0.11, 0.12, 0.13],
                               [0.04, 0.03, 0.02, 0.01], [0.09, 0.08, 0.07, 0.06])
    assert [k for k, v in degradation_checks(one).items() if not v] == ["plain_train_err_rises_with_depth"]


def test_start_up_reads_single_iteration_losses_and_best_run_is_by_final_error() -> None:
    from resnetlab.experiments.reproduce import run_summary, start_up
    from resnetlab.experiments.runs import RunRecord

    losses = [2.4, 9.0, 27.0] + [2.3] * 197
    recs = [RunRecord(RunSpec(f"resnet56-s{i}", "resnet56", "resnet56", i), Path("."),
                      [{"iteration": 100, "train_err": 0.5, "val_top1_err": err, **({"early_losses": losses}
                                                                                    if i == 0 else {})}],
                      {"best": {"val_top1_err": err - 0.01}}, {}, False) for i, err in enumerate((0.3, 0.2, 0.4))]
    assert start_up(recs) == {"resnet56": {"peak_1_20": 27.0, "at_40": 2.3, "at_200": 2.3}}
    summary = run_summary(recs)["resnet56"]
    assert summary["best_run_val_err"] == {"value": 0.2, "seed": 1}
    assert summary["final_val_err"]["mean"] == pytest.approx(0.3)


def test_response_checks_follow_the_means() -> None:
    from resnetlab.experiments.reproduce import response_checks

    paper = {"plain20": 1.0, "plain56": 1.2, "resnet20": 0.8, "resnet56": 0.6, "resnet110": 0.5}
    assert all(response_checks(paper).values())
    flipped = {"plain20": 0.5, "plain56": 0.6, "resnet20": 0.8, "resnet56": 1.0, "resnet110": 1.2}
    assert not any(response_checks(flipped).values())
    assert response_checks({**paper, "resnet110": 0.7}) == {"resnet20_below_plain20": True,
                                                             "resnet56_below_plain56": True,
                                                             "resnet_shrinks_20_56_110": False}


def test_parallel_runs_equal_sequential_ones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--parallel 2: two processes, one run folder each, and the same weights as training them one by one."""
    monkeypatch.setenv("RESNETLAB_DATA", str(tmp_path / "cache"))
    cfg = base_config(BUDGETS["smoke"], SAMPLE, None, "cpu")
    specs = [RunSpec("a-s0", "resnet20", "a", 0), RunSpec("b-s1", "resnet20", "b", 1)]
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        sequential = run_all(specs, cfg, tmp_path / "seq", log=lambda _: None)
    finally:
        torch.set_num_threads(before)
    parallel = run_all(specs, cfg, tmp_path / "par", log=lambda _: None, parallel=2, threads=1)
    assert [r.spec.name for r in parallel] == ["a-s0", "b-s1"] and all(r.trained_now for r in parallel)
    for s, p in zip(sequential, parallel):
        a = torch.load(s.out_dir / "last.pt", weights_only=True)["state_dict"]
        b = torch.load(p.out_dir / "last.pt", weights_only=True)["state_dict"]
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r.trained_now for r in run_all(specs, cfg, tmp_path / "par", log=lambda _: None, parallel=2)] == [
        False, False]
    with pytest.raises(UserError, match="--parallel must be at least 1"):
        run_all(specs, cfg, tmp_path / "par", parallel=0)


def test_invocations_text_lists_training_calls_and_counts_read_only_ones() -> None:
    """Regenerating a report from finished runs must not add one entry per call to its timing line."""
    from resnetlab.experiments.reproduce import invocations_text

    one = [{"wall_seconds": 120.0, "trained": ["a", "b"]}]
    assert invocations_text(one) == ""
    calls = one + [{"wall_seconds": 1.0, "trained": []}] * 4 + [{"wall_seconds": 30.0, "trained": ["c"]}]
    assert invocations_text(calls) == (" (all 6 invocations: 120 s training 2, 30 s training 1, "
                                       "4 that trained nothing, 4 s in all)")
    assert invocations_text([{"wall_seconds": 0.4, "trained": []}] * 2) == (
        " (all 2 invocations: 2 that trained nothing, 1 s in all)")
