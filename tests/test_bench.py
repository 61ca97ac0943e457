"""``resnetlab bench``: the modes resolve, run and agree with eager-fp32. Never how fast they are."""

from __future__ import annotations

import json

import pytest
import torch

from resnetlab.bench import REFERENCE, TOLERANCE, default_mode, modes_for, resolve_modes, run_bench
from resnetlab.bench import runner as bench_runner
from resnetlab.bench.runner import format_result
from resnetlab import hardware
from resnetlab.cli import main
from resnetlab.engine.config import TrainConfig
from resnetlab.engine.train import fast_defaults
from resnetlab.errors import UserError

CPU = torch.device("cpu")
# Tiny and quick: a 16x16 input, one short repeat, a small matmul for the peak.
QUICK = dict(device=CPU, input_size=(3, 16, 16), repeats=1, min_time=0.01, warmup=1, peak_size=64)
QUICK_ARGS = ["--input-size", "3x16x16", "--repeats", "1", "--min-time", "0.01", "--warmup", "1",
              "--peak-size", "64", "--device", "cpu"]


@pytest.fixture(autouse=True)
def one_thread():
    """One thread: on a shared 2-core machine a second OpenMP thread waits on its neighbours' jobs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(params=[True, False], ids=["native-bf16", "emulated-bf16"])
def bf16_cpu(request, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Both answers of the capability check, whatever this machine's CPU is."""
    monkeypatch.setenv(hardware.ENV_VAR, "1" if request.param else "0")
    return request.param


def test_default_modes_are_those_that_can_win_here(bf16_cpu: bool) -> None:
    train = [m.name for m in resolve_modes("train", None, CPU)]
    bf16 = ["bf16", "channels-last+bf16"] if bf16_cpu else []
    assert train == ["eager-fp32", "channels-last", *bf16, "default"]
    infer = [m.name for m in resolve_modes("infer", None, CPU)]
    assert infer == ["eager-fp32", "channels-last", *bf16, "fused", "fused+channels-last",
                     *(["fused+channels-last+bf16"] if bf16_cpu else []), "onnxruntime", "default"]
    assert [m.name for m in resolve_modes("train", ["all"], CPU)] == modes_for("train", "cpu")
    assert resolve_modes("train", ["bf16"], CPU)[1].name == "bf16"  # emulated or not, available by name
    assert default_mode(CPU).amp == ("bf16" if bf16_cpu else "none")


def test_the_capability_check_reads_cpu_flags_unless_forced(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(hardware.ENV_VAR, raising=False)
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx2", "avx512f"}))
    assert not hardware.native_bf16(CPU) and "emulated" in hardware.cpu_bf16().reason
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx2", "avx512_bf16"}))
    assert hardware.native_bf16(CPU) and "AVX512_BF16" in hardware.cpu_bf16().reason
    monkeypatch.setenv(hardware.ENV_VAR, "0")
    assert not hardware.native_bf16(CPU) and hardware.cpu_bf16().reason == "RESNETLAB_NATIVE_BF16=0"


@pytest.mark.parametrize("kernels,native", [("AVX2", False), ("AVX512", True)], ids=["zen3-like", "zen4-like"])
def test_device_name_tells_cpus_of_one_model_name_apart(kernels: str, native: bool,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(hardware.ENV_VAR, "1" if native else "0")
    monkeypatch.setattr(hardware, "cpu_name", lambda: "AMD EPYC")
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: kernels)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    want = f"cpu (AMD EPYC, {kernels} kernels, 2 threads, {'native bf16' if native else 'bf16 emulated'})"
    assert hardware.device_name(CPU) == want


def test_list_modes_marks_defaults_and_emulated_bf16(bf16_cpu: bool, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "train", "--list-modes", "--device", "cpu"]) == 0
    lines = {line[2:].split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    assert lines["channels-last"].startswith("*") and lines["compile"].startswith(" ")
    assert lines["channels-last+bf16"].startswith("*" if bf16_cpu else " ")
    assert ("emulated" in lines["channels-last+bf16"]) is not bf16_cpu


def test_the_bench_cli_restores_torch_threads(capsys: pytest.CaptureFixture[str]) -> None:
    before = torch.get_num_threads()
    assert main(["bench", "infer", "--model", "resnet20", "--batch-size", "2", "--modes", "eager-fp32",
                 "--threads", "2", *QUICK_ARGS]) == 0
    assert torch.get_num_threads() == before


def test_modes_resolve_reference_first_and_default_is_train_defaults() -> None:
    train = resolve_modes("train", ["all"], CPU)
    assert train[0].name == REFERENCE
    assert not any(m.fused or m.runtime != "torch" for m in train)  # inference-only modes stay out
    assert [m.name for m in train] == modes_for("train", "cpu")
    assert "channels-last+bf16+cudagraphs" in modes_for("train") and not any(m.cudagraphs for m in train)
    assert "onnxruntime" in modes_for("infer") and "fused" in modes_for("infer")

    default = default_mode(CPU)
    cfg = TrainConfig()
    assert (default.channels_last, default.amp) == fast_defaults(cfg, CPU)
    assert default.compile == bool(cfg.compile)

    picked = resolve_modes("infer", ["fused", "eager-fp32", "fused"], CPU)
    assert [m.name for m in picked] == ["eager-fp32", "fused"]
    assert resolve_modes("infer", ["bf16"], CPU)[0].name == REFERENCE


def test_bad_modes_are_user_errors() -> None:
    with pytest.raises(UserError, match="did you mean channels-last"):
        resolve_modes("train", ["channel-last"], CPU)
    with pytest.raises(UserError, match="inference-only"):
        resolve_modes("train", ["fused"], CPU)
    with pytest.raises(UserError, match="needs a CUDA device; this one is cpu"):
        resolve_modes("train", ["channels-last+bf16+cudagraphs"], CPU)


def test_matmul_peak_is_positive() -> None:
    assert bench_runner.matmul_peak(CPU, torch.float32, size=64, repeats=1) > 0


def test_infer_modes_agree_with_eager() -> None:
    modes = resolve_modes("infer", ["channels-last", "bf16", "fused", "fused+channels-last", "onnxruntime",
                                    "default"], CPU)
    result = run_bench("infer", "resnet20", modes, batch_size=4, **QUICK)
    by_name = {r.mode.name: r for r in result.results}
    assert by_name["eager-fp32"].measured.ratio == 1.0 and by_name["eager-fp32"].measured.error == 0.0
    for r in result.results:
        if r.measured.skipped:  # only onnxruntime may be missing, and the project's extras install it
            assert r.mode.name == "onnxruntime" and "onnxruntime" in r.measured.skipped
            continue
        assert r.measured.agrees, (r.mode.name, r.measured.error)
        assert r.measured.img_s > 0 and r.measured.gflops > 0 and r.measured.peak_pct > 0
        assert r.measured.data_pct is None  # inference times the model only
    assert by_name["fused"].measured.error < TOLERANCE["none"][0]
    assert result.agree and result.best in by_name
    text = bench_runner.format_result(result)
    assert "agreement: every mode" in text and "fused" in text


def test_train_modes_agree_and_time_the_data_path() -> None:
    modes = resolve_modes("train", ["channels-last", "bf16", "channels-last+bf16", "default"], CPU)
    result = run_bench("train", "resnet20", modes, batch_size=8, **QUICK)
    assert result.agree
    for r in result.results:
        assert r.measured.agrees and r.measured.img_s > 0 and 0 <= r.measured.data_pct < 100
        assert r.measured.grad_cosine is not None and r.measured.grad_cosine >= r.measured.grad_min_cosine
    payload = result.to_dict()
    json.dumps(payload)  # JSON-able
    assert payload["modes"]["eager-fp32"]["ratio"] == 1.0
    assert set(payload["peak_gflops"]) == {"fp32", "bf16"}
    # A training image costs three forward passes.
    assert result.flops_per_image == 6 * result.macs
    # ``default`` equals one of the listed modes: measured once, one record shared by reference.
    default = next(r for r in result.results if r.mode.name == "default")
    twin = next(r for r in result.results if r.mode.name != "default" and r.mode.flags == default.mode.flags)
    assert default.measured is twin.measured and len({id(r.measured) for r in result.results}) == len(modes) - 1


def test_limits_widen_only_for_an_ill_conditioned_reference() -> None:
    assert bench_runner.calibrated_limits("bf16", None) == TOLERANCE["bf16"]
    assert bench_runner.calibrated_limits("bf16", {"error": 1e-3, "grad_cosine": 0.9996}) == TOLERANCE["bf16"]
    tol, min_cos = bench_runner.calibrated_limits("bf16", {"error": 0.09, "grad_cosine": 0.58})
    assert tol == pytest.approx(0.9) and min_cos is None  # a limit of 0 or below could pass a sign error
    x = torch.randn(64)
    assert 0 < (bench_runner.rounded_like(x, "bf16") - x).abs().max() < 1e-2 * x.abs().max()
    assert torch.equal(bench_runner.rounded_like(x, "fp32").sub(x).ne(0), bench_runner.rounded_like(x, "fp32") != x)
    assert 0 < int((bench_runner.rounded_like(x, "fp32") != x).sum()) < 64


def _flip_gradients_of(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the mode named ``mode`` return its gradient with the wrong sign."""
    real_check = bench_runner._TrainRunner.check

    def flipped(self, x=None):
        out, grad = real_check(self, x)
        return out, (-grad if self.mode.name == mode else grad)

    monkeypatch.setattr(bench_runner._TrainRunner, "check", flipped)


def test_a_wrong_gradient_sign_fails_where_the_gradient_is_checkable(monkeypatch: pytest.MonkeyPatch) -> None:
    """ResNet-20 keeps the stated bf16 limits; a bf16 mode whose gradient has the wrong sign fails."""
    modes = resolve_modes("train", ["bf16"], CPU)
    quick = {**QUICK, "input_size": (3, 32, 32)}
    bf16 = run_bench("train", "resnet20", modes, batch_size=4, **quick).results[1]
    assert bf16.measured.agrees and (bf16.measured.tolerance, bf16.measured.grad_min_cosine) == TOLERANCE["bf16"]
    _flip_gradients_of("bf16", monkeypatch)
    assert not run_bench("train", "resnet20", modes, batch_size=4, **quick).results[1].measured.agrees


def test_an_ill_conditioned_check_leaves_the_gradient_unchecked_not_passed(monkeypatch: pytest.MonkeyPatch) -> None:
    """ResNet-50 at init, batch 4 at 32 px: rounding the reference's own input to bf16 turns its gradient by
    cosine ~0 (on AVX-512 and AVX2 CPUs alike), so bf16's gradient direction cannot be judged and is reported
    unchecked; fp32 stays well-conditioned there, so a sign error in an fp32 mode still fails.

    One run (ResNet-50 in emulated bf16 is slow): channels-last's gradient comes back with the wrong sign, so
    it must fail, and its cosine near -1 says the true one is near +1 (well-conditioned, checked)."""
    _flip_gradients_of("channels-last", monkeypatch)
    modes = resolve_modes("train", ["bf16", "channels-last"], CPU)
    quick = {**QUICK, "input_size": (3, 32, 32)}
    result = run_bench("train", "resnet50", modes, batch_size=4, **quick)
    bf16, cl = result.results[1], result.results[2]
    assert result.sensitivity["bf16"]["grad_cosine"] < 0.9 and bf16.measured.grad_min_cosine is None
    assert bf16.measured.tolerance == bench_runner.calibrated_limits("bf16", result.sensitivity["bf16"])[0]
    assert "gradients are unchecked" in format_result(result)
    assert cl.measured.grad_min_cosine is not None and cl.measured.grad_cosine < -0.99 and not cl.measured.agrees


def test_calibrated_limits_widen_then_give_up_on_the_gradient() -> None:
    tol, cos = TOLERANCE["bf16"]
    assert bench_runner.calibrated_limits("bf16", {"error": 1e-4, "grad_cosine": 0.9999}) == (tol, cos)
    assert bench_runner.calibrated_limits("bf16", {"error": 0.1, "grad_cosine": 0.95}) == (1.0, pytest.approx(0.5))
    assert bench_runner.calibrated_limits("bf16", {"error": 0.1, "grad_cosine": 0.85}) == (1.0, None)
    assert bench_runner.calibrated_limits("bf16", None) == (tol, cos)


def test_cli_json(capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["bench", "infer", "--model", "resnet20", "--batch-size", "2", "--modes", "channels-last",
                   "--json", *QUICK_ARGS])
    payload = json.loads(capsys.readouterr().out)
    assert status == 0
    assert payload["model"] == "resnet20" and payload["device"].startswith("cpu")
    assert list(payload["modes"]) == ["eager-fp32", "channels-last"]
    assert payload["modes"]["eager-fp32"]["ratio"] == 1.0
    assert payload["best"] in payload["modes"] and payload["agree"] is True
    for key in ("img_s", "ratio", "gflops"):
        assert payload["modes"]["channels-last"][key] > 0


def test_cli_profile_lists_each_modes_busiest_operators(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["bench", "train", "--model", "resnet20", "--batch-size", "4", "--modes", "channels-last,default",
            "--profile", "2", *QUICK_ARGS]
    assert main([*argv, "--json"]) == 0
    modes = json.loads(capsys.readouterr().out)["modes"]
    for name in ("eager-fp32", "channels-last"):
        rows = modes[name]["profile"]
        assert 0 < len(rows) <= bench_runner.PROFILE_TOP
        assert "aten::convolution_backward" in {r["op"] for r in rows}
        assert all(r["ms_per_step"] > 0 and r["calls_per_step"] > 0 for r in rows)
        assert 0 < sum(r["pct"] for r in rows) <= 100.01
        assert [r["pct"] for r in rows] == sorted((r["pct"] for r in rows), reverse=True)
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "profile of eager-fp32 (torch.profiler" in out and "profile of channels-last (" in out
    assert main(["bench", "train", "--profile", "-1", "--device", "cpu"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_cli_reports_disagreement(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    # With a zero tolerance bf16 cannot match fp32: the table says so and the exit status is 1.
    monkeypatch.setitem(bench_runner.TOLERANCE, "bf16", (0.0, 0.0))
    monkeypatch.setattr(bench_runner, "SENSITIVITY_FACTOR", 0.0)
    status = main(["bench", "infer", "--model", "resnet20", "--batch-size", "2", "--modes", "bf16", *QUICK_ARGS])
    out = capsys.readouterr().out
    assert status == 1
    assert "agreement: FAILED for bf16" in out


def test_cli_unknown_mode_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "train", "--modes", "fast", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("resnetlab: error: unknown benchmark mode 'fast'") and err.count("\n") == 1


def test_cli_list_modes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "infer", "--list-modes", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "onnxruntime" in out and "default" in out


@pytest.mark.slow
def test_compiled_training_agrees() -> None:
    # The compiled mode this CPU would use: bf16 where it is native, fp32 where bf16 would be emulated
    # (compiling emulated bf16 kernels on an AVX2 CPU takes minutes and proves nothing more).
    mode = "channels-last+bf16+compile" if hardware.native_bf16(CPU) else "channels-last+compile"
    result = run_bench("train", "resnet20", resolve_modes("train", [mode], CPU), batch_size=8, **QUICK)
    assert [r.measured.skipped for r in result.results] == [None, None] and result.agree


@pytest.mark.slow
def test_compiled_frozen_inference_agrees() -> None:
    mode = "fused+channels-last+bf16+compile" if hardware.native_bf16(CPU) else "channels-last+compile"
    result = run_bench("infer", "resnet20", resolve_modes("infer", [mode], CPU), batch_size=4, **QUICK)
    assert [r.measured.skipped for r in result.results] == [None, None] and result.agree


def test_augment_names_resolve_with_crop_flip_first() -> None:
    from resnetlab.bench.augment import AUGMENTATIONS, BASELINE, resolve_augmentations

    assert resolve_augmentations("all") == list(AUGMENTATIONS)
    assert resolve_augmentations("cutmix, cutout,cutmix") == [BASELINE, "cutmix", "cutout"]
    assert resolve_augmentations(BASELINE) == [BASELINE]
    with pytest.raises(UserError, match="unknown augmentation 'autoaug'"):
        resolve_augmentations("cutout,autoaug")


def test_augment_share_is_its_extra_cost_over_the_step_it_joins() -> None:
    from resnetlab.bench.augment import AugmentCost

    cost = AugmentCost("autoaugment", ms_per_batch=12.0, extra_ms=5.0)
    assert cost.share_pct(95.0) == 5.0  # 5 ms of a 100 ms augmented step
    assert AugmentCost("cutout", 7.0, -0.2).share_pct(95.0) == 0.0  # noise below crop+flip is no cost
    assert cost.to_dict(95.0)["step_share_pct"] == 5.0 and "step_share_pct" not in cost.to_dict(None)


def test_augment_timing_runs_each_augmentation_on_the_timed_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """A mixing step made 20 ms slower shows as at least that much extra for mixup and cutmix."""
    import time

    from resnetlab.bench import augment

    real = augment.mix_batch

    def slow_mix(*args, **kwargs):
        time.sleep(0.02)
        return real(*args, **kwargs)

    monkeypatch.setattr(augment, "mix_batch", slow_mix)
    costs = augment.time_augmentations(list(augment.AUGMENTATIONS), size=(3, 8, 8), batch_size=4, num_classes=10,
                                       device=CPU, channels_last=False, repeats=2, min_time=0.01, warmup=1)
    by_name = {c.name: c for c in costs}
    assert list(by_name) == list(augment.AUGMENTATIONS)
    assert by_name["crop+flip"].extra_ms == 0.0 and len(by_name["crop+flip"].repeats_ms) == 2
    assert by_name["mixup"].extra_ms >= 19 and by_name["cutmix"].extra_ms >= 19
    assert all(c.ms_per_batch > 0 for c in costs)
    with pytest.raises(ValueError, match="first augmentation"):
        augment.time_augmentations(["cutout"], size=(3, 8, 8), batch_size=4, num_classes=10, device=CPU,
                                   channels_last=False)


def test_cli_augment_reports_each_share_of_the_default_step(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["bench", "train", "--model", "resnet20", "--batch-size", "4", "--modes", "default",
            "--augment", "cutout,trivialaugment", *QUICK_ARGS]
    assert main([*argv, "--json"]) == 0
    aug = json.loads(capsys.readouterr().out)["augment"]
    assert aug["step_mode"] == "default" and aug["step_ms"] > 0
    assert set(aug) == {"step_mode", "step_ms", "crop+flip", "cutout", "trivialaugment"}
    assert "step_share_pct" not in aug["crop+flip"]
    for name in ("cutout", "trivialaugment"):
        extra = max(aug[name]["extra_ms"], 0.0)
        assert aug[name]["step_share_pct"] == pytest.approx(100 * extra / (aug["step_ms"] + extra), abs=0.01)
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "share of the step (default)" in out and "trivialaugment" in out
    assert main(["bench", "infer", "--augment", "all", "--device", "cpu"]) == 2
    assert "use it with `bench train`" in capsys.readouterr().err
    assert main(["bench", "train", "--augment", "colour", "--device", "cpu"]) == 2
