"""``resnetlab compare``: the fields two runs differ in, their final and best errors, unfinished runs, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from resnetlab.cli import main
from resnetlab.engine.config import recipe_config

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_run(root: Path, name: str, errors: list[float], total: int = 300, old: bool = False, **fields) -> Path:
    """A run folder as `resnetlab train` writes it: config.json (with its resolved record), metrics.jsonl."""
    run = root / name
    run.mkdir()
    config = {**recipe_config("fast-cifar", val_split=5000, **fields).to_dict(), "out": str(run),
              "resolved": {"total_iters": total, "amp": "bf16", "channels_last": True}}
    if old:  # written before cuda_graphs existed: it trained with the default
        config.pop("cuda_graphs")
    (run / "config.json").write_text(json.dumps(config))
    rows = [{"iteration": 100 * (i + 1), "epoch": 0.5 * (i + 1), "train_err": e + 0.01, "val_top1_err": e,
             "wall_time": 60.0 * (i + 1)} for i, e in enumerate(errors)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run


def test_the_table_names_the_differing_fields_and_the_final_and_best_errors(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    a = write_run(tmp_path, "plain", [0.5, 0.2, 0.25], old=True)
    b = write_run(tmp_path, "cutout", [0.6, 0.3], cutout=8, amp="bf16")  # amp: as `a` resolved it
    out = tmp_path / "cmp"
    assert main(["compare", str(a), str(b), "--labels", "fast,fast+cutout", "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == ("| run | cutout | final val err | best val err (iteration) | EMA final | iterations "
                        "| wall time |")
    assert lines[2] == "| fast | 0 | 25.00% | 20.00% (200) | - | 300 | 3.0 min |"
    assert lines[3] == "| fast+cutout | 8 | 30.00% | 30.00% (200) | - | 200 of 300 (unfinished) | 2.0 min |"
    results = json.loads((out / "results.json").read_text())
    assert results["differing_fields"] == ["cutout"]
    assert [r["finished"] for r in results["runs"]] == [True, False]
    assert results["runs"][0]["final_val_top1_err"] == 0.25 and results["runs"][0]["best_iteration"] == 200
    report = (out / "compare.md").read_text()
    assert f"resnetlab compare {a} {b} --labels fast,fast+cutout --out {out}" in report and lines[2] in report
    assert (out / "compare.png").read_bytes()[:8] == PNG_MAGIC


@pytest.mark.parametrize("case,message", [
    ("missing", "no such run folder"),
    ("no-metrics", "is not a run folder: it has no metrics.jsonl"),
    ("no-evaluation", "has no validation evaluation yet"),
    ("labels", "--labels names 1 runs, but 2 run folders were given"),
])
def test_bad_input_is_one_line(case: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    good = write_run(tmp_path, "good", [0.3])
    other = tmp_path / case
    argv = ["compare", str(good), str(other)]
    if case == "no-metrics":
        write_run(tmp_path, case, [0.3]).joinpath("metrics.jsonl").unlink()
    elif case == "no-evaluation":
        write_run(tmp_path, case, []).joinpath("metrics.jsonl").write_text('{"iteration": 10, "train_err": 0.9}\n')
    elif case == "labels":
        argv = ["compare", str(good), str(write_run(tmp_path, case, [0.3])), "--labels", "one"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("resnetlab: error:") and message in err[0]
