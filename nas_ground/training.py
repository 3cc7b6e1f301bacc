"""The shape every training loop here shares: seeded minibatches, a finite loss, one clipped optimizer step.

>>> gen = torch.Generator().manual_seed(0)
>>> [len(b) for b in minibatches(10, 4, gen)]
[4, 4, 2]
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from torch import nn


class Diverged(RuntimeError):
    """Training produced a NaN or infinite loss; a trial fails with this reason and the search goes on."""


def minibatches(n: int, batch_size: int, generator: torch.Generator, *, min_size: int = 1) -> Iterator[torch.Tensor]:
    """One epoch: a permutation of ``range(n)`` drawn from ``generator``, cut into batches of ``batch_size``
    (the last one shorter; batches under ``min_size`` are dropped)."""
    order = torch.randperm(n, generator=generator)
    for start in range(0, n, batch_size):
        batch = order[start : start + batch_size]
        if len(batch) >= min_size:
            yield batch


def check_finite(loss: torch.Tensor, where: str) -> None:
    if not torch.isfinite(loss):
        raise Diverged(f"loss became {loss.item()} at {where}")


def apply_gradients(
    optimizer: torch.optim.Optimizer,
    params: Iterable[nn.Parameter],
    *,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    grad_clip: float | None = None,
) -> None:
    """Clip the accumulated gradients (when ``grad_clip``), step the optimizer and the schedule. The gradients stay
    (for inspection) until the next step clears them."""
    if grad_clip is not None:
        nn.utils.clip_grad_norm_(list(params), grad_clip)
    optimizer.step()
    if scheduler is not None:
        scheduler.step()


def backward_step(
    loss: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    params: Iterable[nn.Parameter],
    *,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    grad_clip: float | None = None,
    where: str = "",
) -> None:
    """One optimisation step on ``loss``: a non-finite loss raises `Diverged`, else backward and `apply_gradients`."""
    check_finite(loss, where)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    apply_gradients(optimizer, params, scheduler=scheduler, grad_clip=grad_clip)
