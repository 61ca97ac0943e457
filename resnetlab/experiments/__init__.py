"""Experiments and analyses: each writes a figure, ``report.md``, ``results.json`` and ``config.json``.

:mod:`.analyze` holds the analyses that need no training (gradients at
initialisation, shattered gradients, multiply-adds); :mod:`.plots` the shared
figure helpers (every figure carries a provenance caption); :mod:`.report` the
report writer. matplotlib is imported only when a figure is drawn.
"""

from .report import markdown_table, write_report

__all__ = ["markdown_table", "write_report"]
