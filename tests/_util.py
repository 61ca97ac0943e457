"""Helpers shared by the test modules (importable because pytest puts tests/ on sys.path)."""

from __future__ import annotations

from typing import Any, Iterator


def json_numbers(value: Any) -> Iterator[float]:
    """Every number in a JSON document (bools excluded), to check a results.json is all finite."""
    if isinstance(value, dict):
        for v in value.values():
            yield from json_numbers(v)
    elif isinstance(value, list):
        for v in value:
            yield from json_numbers(v)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield value
