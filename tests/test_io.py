"""One atomic write for every writer: all or nothing, the mode open() gives, no temporary files left."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

import resnetlab
from resnetlab.io import atomic_write, atomic_write_text

PACKAGE = Path(resnetlab.__file__).parent


def test_atomic_write_replaces_on_success_and_keeps_the_old_file_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "f.json"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_write(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash while writing")
    assert target.read_text() == "old"
    assert sorted(p.name for p in target.parent.iterdir()) == ["f.json"]  # the temporary file is gone
    with atomic_write(target, suffix=".png") as tmp:
        assert tmp.parent == target.parent and tmp.suffix == ".png" and tmp.name.startswith(".f.json.")
        tmp.write_text("new")
    assert target.read_text() == "new"
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600


def test_no_writer_renames_files_into_place_by_itself() -> None:
    """Every write-then-rename goes through resnetlab.io (the one exception renames an extracted folder)."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "io.py" and path.parent == PACKAGE:
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"\bmkstemp\(|os\.replace\(|\.replace\(path\)|fsync\(", line) and "extracted, folder" not in line:
                offenders.append(f"{path.relative_to(PACKAGE)}:{n}: {line.strip()}")
    assert offenders == []


def test_a_crash_while_caching_decoded_images_leaves_no_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import Image

    from resnetlab.data import folder as folder_mod
    from resnetlab.data import open_data

    for cls in ("a", "b"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (8, 8), (i * 90, 0, 0)).save(tmp_path / "imgs" / cls / f"{i}.png")
    monkeypatch.setenv("RESNETLAB_DATA", str(tmp_path / "cache"))

    def crash(*_a, **_k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(folder_mod.torch, "save", crash)
    messages: list[str] = []
    data = open_data(str(tmp_path / "imgs"), log=messages.append)
    assert len(data.train) == 4 and any("not cached (No space left on device)" in m for m in messages)
    leftovers = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert leftovers == []
