"""Small argument helpers shared by the sub-commands."""

from __future__ import annotations

from ..errors import UserError


def parse_input_size(text: str) -> tuple[int, int, int]:
    """Parse ``3x32x32`` (C x H x W) or ``32`` (square, 3 channels) into a tuple."""
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        raise UserError(f"--input-size must look like 3x32x32, got {text!r}") from None
    if len(parts) == 1:
        parts = [3, parts[0], parts[0]]
    if len(parts) != 3 or min(parts) < 1:
        raise UserError(f"--input-size must look like 3x32x32, got {text!r}")
    return tuple(parts)  # type: ignore[return-value]
