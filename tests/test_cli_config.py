"""``resnetlab train``'s flags are generated from TrainConfig: every field is a flag, and a config.json
read back (--config) or spelled out as flags gives the same config."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from resnetlab.cli import build_parser
from resnetlab.cli.train import _NOT_FLAGS, config_from_args
from resnetlab.engine.config import RECIPES, TrainConfig, recipe_config
from resnetlab.errors import UserError


def parse(argv: list[str]):
    return build_parser().parse_args(["train", *argv])


def as_flags(cfg: TrainConfig) -> list[str]:
    """The command line that spells out every field of ``cfg``."""
    argv: list[str] = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        flag = "--" + f.name.replace("_", "-")
        if f.name == "model_args":
            argv += [a for k, v in value.items() for a in ("--model-arg", f"{k}={json.dumps(v)}")]
        elif value is None:
            continue
        elif isinstance(value, bool):
            argv.append(flag if value else "--no-" + f.name.replace("_", "-"))
        elif isinstance(value, tuple):
            argv += [flag, *map(str, value)]
        else:
            argv += [flag, str(value)]
    return argv


def test_every_config_field_is_a_flag_with_help() -> None:
    parser = build_parser()
    train = parser._subparsers._group_actions[0].choices["train"]
    dests = {a.dest: a for a in train._actions}
    for f in dataclasses.fields(TrainConfig):
        if f.name in _NOT_FLAGS:
            continue
        assert f.name in dests, f.name
        assert dests[f.name].help and f.metadata["help"] in dests[f.name].help


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_config_round_trips_through_the_command_line(recipe: str) -> None:
    cfg = recipe_config(recipe, model="resnet56", model_args={"shortcut": "B"}, val_split=5000, seed=3,
                        nesterov=not RECIPES[recipe].values["nesterov"], out="runs/x")
    assert config_from_args(parse(as_flags(cfg))) == cfg


def test_config_file_round_trips_and_flags_win(tmp_path: Path) -> None:
    cfg = recipe_config("fast-cifar", model="resnet32", momentum=0.85, milestones=(0.3,), warmup_iters=7,
                        decay_norm_and_bias=True, tta_flip=False, out="runs/old")
    saved = {**cfg.to_dict(), "resolved": {"total_iters": 1}, "command": ["resnetlab", "train"]}
    (tmp_path / "config.json").write_text(json.dumps(saved))
    again = config_from_args(parse(["--config", str(tmp_path / "config.json")]))
    assert again == cfg.replace(out=None)  # a new run: not the old run's folder
    changed = config_from_args(parse(["--config", str(tmp_path / "config.json"), "--lr", "0.05", "--iters", "9"]))
    assert changed == cfg.replace(out=None, lr=0.05, iters=9, epochs=None)


def test_bad_config_lines_are_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no such file"):
        config_from_args(parse(["--config", str(tmp_path / "missing.json")]))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(UserError, match="is not JSON"):
        config_from_args(parse(["--config", str(tmp_path / "bad.json")]))
    with pytest.raises(UserError, match="not both"):
        config_from_args(parse(["--iters", "5", "--epochs", "2"]))
    with pytest.raises(UserError, match="--lr must not be negative"):
        config_from_args(parse(["--lr", "-1"]))
