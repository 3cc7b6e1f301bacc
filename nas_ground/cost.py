"""Cost of a network: parameters, multiply-accumulates of Conv/Linear layers, and measured CPU latency."""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn


def count_params(model: nn.Module) -> int:
    """Parameters of the inference network: an auxiliary head (training only) is not counted."""
    return sum(p.numel() for name, p in model.named_parameters() if not name.startswith("auxiliary_head."))


def count_flops(model: nn.Module, inputs: tuple[int, ...] | torch.Tensor) -> int:
    """Multiply-accumulates of Conv2d and Linear layers for one input (batch 1), as NAS-Bench-201 counts FLOPs.

    ``inputs``: the shape of one input (a zero image is used) or a batch-1 example (e.g. token ids, see
    `search_spaces.base.example_input`). Counted on the inference graph (eval mode), so auxiliary heads that only run in
    training are excluded. Matrix products that are not layers (attention scores) are not counted.
    """
    total = 0

    def conv_hook(module: nn.Module, _inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        assert isinstance(module, nn.Conv2d)
        k = module.kernel_size[0] * module.kernel_size[1] * (module.in_channels // module.groups)
        total += out.numel() * k

    def linear_hook(module: nn.Module, _inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        assert isinstance(module, nn.Linear)
        total += out.numel() * module.in_features

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            model(inputs if isinstance(inputs, torch.Tensor) else torch.zeros(1, *inputs))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return total


def measure_latency_ms(
    model: nn.Module, inputs: tuple[int, ...] | torch.Tensor, *, repeats: int = 20, warmup: int = 3
) -> float:
    """Median wall time in milliseconds of one batch-1 forward pass on the CPU, in eval mode; image inputs (an
    input shape, or a 4-D example) run channels_last."""
    was_training = model.training
    model.eval()
    x = inputs if isinstance(inputs, torch.Tensor) else torch.randn(1, *inputs)
    if x.dim() == 4:
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        x = x.contiguous(memory_format=torch.channels_last)
    times = []
    try:
        with torch.inference_mode():
            for i in range(warmup + repeats):
                start = time.perf_counter()
                model(x)
                if i >= warmup:
                    times.append((time.perf_counter() - start) * 1000.0)
    finally:
        model.train(was_training)
    return statistics.median(times)
