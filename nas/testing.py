"""Aids for fault tests and chaos experiments; not registered under a name, reach them by import path:
``--evaluator nas.testing.SlowTableEvaluator``."""

from __future__ import annotations

import os
import time
from typing import Any

from nas.evaluators.table import TableEvaluator
from search_spaces import SearchSpace


class SlowTableEvaluator(TableEvaluator):
    """A testing aid: the `table` evaluator that sleeps ``delay_s`` seconds per evaluation, so that tests can
    kill a worker node or the driver while trials are in flight, that ends its own process (as a crash
    would) when it meets ``crash_arch``, raises an unexpected exception (as a bug would) on ``raise_arch`` and
    hangs ``stall_s`` seconds on ``stall_arch``."""

    def __init__(
        self,
        space: SearchSpace[Any],
        *,
        delay_s: float = 0.5,
        crash_arch: str | None = None,
        raise_arch: str | None = None,
        stall_arch: str | None = None,
        stall_s: float = 0.0,
        **options: Any,
    ) -> None:
        super().__init__(space, **options)
        self.stall_arch, self.stall_s = stall_arch, float(stall_s)
        self.delay_s = float(delay_s)
        self.crash_arch = crash_arch
        self.raise_arch = raise_arch

    def evaluate(self, arch: Any, *, seed: int | None = None) -> dict[str, float]:
        if self.space.encode(arch) == self.crash_arch:
            os._exit(1)
        if self.space.encode(arch) == self.raise_arch:
            raise ZeroDivisionError("an evaluator bug met on purpose")
        time.sleep(self.stall_s if self.space.encode(arch) == self.stall_arch else self.delay_s)
        return super().evaluate(arch, seed=seed)
