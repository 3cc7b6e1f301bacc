"""Independent oracles the tests judge the package by (written here, not imported from it)."""

from __future__ import annotations

from collections.abc import Sequence


def dominates(a: Sequence[float], b: Sequence[float], directions: Sequence[str]) -> bool:
    """True if ``a`` is at least as good as ``b`` in every objective and strictly better in one."""
    better = False
    for x, y, d in zip(a, b, directions, strict=True):
        if d == "min":
            x, y = -x, -y
        if x < y:
            return False
        if x > y:
            better = True
    return better
