"""One folder per experiment: ``report.md`` to read, ``results.json`` with every number, ``config.json``.

JSON has no NaN or infinity (``json.dumps`` writes the invalid tokens ``NaN`` and
``Infinity`` unless told not to), so non-finite values are recorded as ``null``
with a note naming where they were and what they were; the final dump still runs
with ``allow_nan=False`` so nothing slips through unnoticed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

from ..errors import UserError
from ..io import atomic_write_text

NON_FINITE_KEY = "non_finite"


def to_jsonable(value: Any, where: str = "", notes: list[str] | None = None) -> Any:
    """Plain JSON types from ``value`` (dicts, lists, numbers, numpy/torch scalars and arrays, paths).

    Non-finite floats become ``None`` and, when ``notes`` is given, add a line
    ``"<where>: nan"`` to it.
    """
    if isinstance(value, bool) or value is None or isinstance(value, (str, int)):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        if notes is not None:
            notes.append(f"{where or '<root>'}: {value}")
        return None
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {str(k): to_jsonable(v, f"{where}.{k}" if where else str(k), notes) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v, f"{where}[{i}]", notes) for i, v in enumerate(value)]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_jsonable(dataclasses.asdict(value), where, notes)
    if hasattr(value, "tolist"):  # numpy and torch scalars/arrays, without importing either
        return to_jsonable(value.tolist(), where, notes)
    raise TypeError(f"cannot write {type(value).__name__} at {where or '<root>'} to JSON")


def dump_json(value: Any, path: str | Path) -> list[str]:
    """Write ``value`` as indented JSON; returns the notes about non-finite values made ``null``."""
    notes: list[str] = []
    clean = to_jsonable(value, notes=notes)
    if notes:
        if not isinstance(clean, dict):
            raise ValueError(f"non-finite values in a non-dict JSON document: {notes}")
        if NON_FINITE_KEY in clean:
            raise ValueError(f"key {NON_FINITE_KEY!r} is reserved for notes about non-finite values")
        clean[NON_FINITE_KEY] = notes
    # allow_nan=False: the check above must have caught everything; fail loudly if not.
    atomic_write_text(path, json.dumps(clean, indent=2, allow_nan=False) + "\n")
    return notes


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], align: str | None = None) -> str:
    """A GitHub-markdown table; ``align`` is one letter per column (``l``/``r``), default left then right."""
    align = align or "l" + "r" * (len(headers) - 1)
    if len(align) != len(headers) or any(len(r) != len(headers) for r in rows):
        raise ValueError("every row and the alignment need one entry per header")
    rule = ["---:" if a == "r" else ":---" for a in align]
    lines = ["| " + " | ".join(map(str, headers)) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in rows]
    return "\n".join(lines)


def write_report(
    out_dir: str | Path,
    title: str,
    command: str,
    config: dict[str, Any],
    results: dict[str, Any],
    sections: list[tuple[str, str]],
    figures: list[str],
) -> Path:
    """Write ``report.md``, ``results.json`` and ``config.json`` into ``out_dir``; returns the report path.

    ``sections`` are (heading, markdown body) pairs, e.g. a :func:`markdown_table`;
    ``figures`` are image paths (absolute or relative to ``out_dir``) that must
    already exist; they are embedded with paths relative to the report.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"output folder {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)

    embedded = []
    for fig in figures:
        fig_path = Path(fig) if Path(fig).is_absolute() else out / fig
        if not fig_path.is_file():
            raise FileNotFoundError(f"figure {fig_path} does not exist; save it before writing the report")
        embedded.append(Path(os.path.relpath(fig_path.resolve(), out.resolve())).as_posix())

    notes = dump_json(results, out / "results.json")
    config_notes = dump_json(config, out / "config.json")

    md = [f"# {title}", "", "Produced by:", "", "```", command, "```", ""]
    for heading, body in sections:
        md += [f"## {heading}", "", body.strip(), ""]
    if embedded:
        md += ["## Figures", ""]
        for rel in embedded:
            md += [f"![{Path(rel).stem}]({rel})", ""]
    if notes or config_notes:
        md += ["## Non-finite values", "",
               "Recorded as `null` in the JSON files (JSON has no NaN/inf):", ""]
        md += [f"- `{n}`" for n in notes + [f"config: {n}" for n in config_notes]] + [""]
    md += ["All numbers are in `results.json`; the settings in `config.json`.", ""]
    path = out / "report.md"
    atomic_write_text(path, "\n".join(md))
    return path
