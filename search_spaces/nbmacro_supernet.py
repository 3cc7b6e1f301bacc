"""The NAS-Bench-Macro weight-sharing supernet (BigNAS style): one MBConv k5 t6 per searchable layer, whose slices
are the k3 t3 choice; every child extracts as the plain network `NBMacroSpace.build` makes.

A layer's k3 t3 choice uses the first ``3 c_in`` expanded channels (the expand conv's first filters, the BNs' first
channels, the project conv's first input channels) and the centred 3x3 window of the 5x5 depthwise kernel. The
identity skips the layer, except at a stage's first (stride-2) layer, where it is a 1x1 stride-2 projection with
its own weights. A layer's input width does not depend on the earlier choices, so each layer has one set of weights.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn import functional as F

from search_spaces.nbmacro import (
    CHOICES,
    HEAD_CHANNELS,
    STAGE_CHANNELS,
    STEM_CHANNELS,
    MacroArch,
    MacroNetwork,
    MBConv,
    canonical,
    conv_bn,
    stage_slices,
)

if TYPE_CHECKING:
    from search_spaces.nbmacro import NBMacroSpace

KERNEL, EXPANSION = 5, 6  # the largest choice, whose weights every MBConv choice slices


def _batch_norm(x: torch.Tensor, bn: nn.BatchNorm2d, channels: int) -> torch.Tensor:
    """``bn`` on its first ``channels`` channels. In train mode the running statistics of those channels (views of the
    buffers, updated in place) move as `nn.BatchNorm2d` would move them, a ``momentum`` of None included."""
    mean, var, num_batches = bn.running_mean, bn.running_var, bn.num_batches_tracked
    assert mean is not None and var is not None and num_batches is not None
    momentum = 0.0
    if bn.training:
        num_batches.add_(1)
        momentum = 1.0 / float(num_batches) if bn.momentum is None else bn.momentum
    return F.batch_norm(
        x, mean[:channels], var[:channels], bn.weight[:channels], bn.bias[:channels], bn.training, momentum, bn.eps
    )


def _conv_and_bn(block: nn.Module) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    """The conv and the BN of a `conv_bn` block."""
    assert isinstance(block, nn.Sequential)
    conv, bn = block[0], block[1]
    assert isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
    return conv, bn


class SharedLayer(nn.Module):
    """One searchable layer: the MBConv k5 t6 that every MBConv choice slices, and the identity's stride-2
    projection where the layer changes the resolution."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.c_in, self.c_out, self.stride = c_in, c_out, stride
        self.mbconv = MBConv(c_in, c_out, KERNEL, EXPANSION, stride)
        self.projection = conv_bn(c_in, c_out, 1, stride, relu=False) if stride != 1 or c_in != c_out else None

    def forward(self, x: torch.Tensor, choice: int) -> torch.Tensor:
        spec = CHOICES[choice]
        if spec is None:
            return x if self.projection is None else self.projection(x)
        kernel, expansion = spec
        hidden = self.c_in * expansion
        start = (KERNEL - kernel) // 2  # the centred kernel x kernel window
        (expand, e_bn), (depthwise, d_bn), (project, p_bn) = (_conv_and_bn(b) for b in self.mbconv.body)
        h = F.relu(_batch_norm(F.conv2d(x, expand.weight[:hidden]), e_bn, hidden))  # (B, hidden, H, W)
        window = depthwise.weight[:hidden, :, start : start + kernel, start : start + kernel]
        h = F.conv2d(h, window, stride=self.stride, padding=kernel // 2, groups=hidden)
        h = F.relu(_batch_norm(h, d_bn, hidden))  # (B, hidden, H / stride, W / stride)
        out = _batch_norm(F.conv2d(h, project.weight[:, :hidden]), p_bn, self.c_out)
        return x + out if self.mbconv.residual else out


class MacroSupernet(nn.Module):
    """`MacroNetwork`'s stem, head and classifier around 8 `SharedLayer`; `set_active` picks the child that
    `forward` runs (default the largest). ``dropout`` (an `nn.Dropout` before the classifier, which the plain
    network does not have) is for training only. Strings of one network (`canonical`) run the same weights."""

    def __init__(self, space: NBMacroSpace, *, num_classes: int = 10, dropout: float = 0.0) -> None:
        super().__init__()
        self.space = space
        self.num_classes = num_classes
        self.stem = conv_bn(3, STEM_CHANNELS, 3, 1)
        layers = []
        c = STEM_CHANNELS
        for part, width in zip(stage_slices(), STAGE_CHANNELS, strict=True):
            for i in range(part.stop - part.start):
                layers.append(SharedLayer(c, width, 2 if i == 0 else 1))
                c = width
        self.layers = nn.ModuleList(layers)
        self.head = conv_bn(c, HEAD_CHANNELS, 1, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(HEAD_CHANNELS, num_classes)
        self._active: MacroArch = space.largest()

    @property
    def active(self) -> MacroArch:
        return self._active

    def set_active(self, arch: MacroArch) -> None:
        self.space.validate(arch)
        self._active = canonical(arch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, 3, 32, 32)
        x = self.stem(x)
        for layer, choice in zip(self.layers, self._active, strict=True):
            x = layer(x, choice)
        return self.classifier(self.dropout(self.pool(self.head(x)).flatten(1)))

    def extract(self, arch: MacroArch | None = None) -> MacroNetwork:
        """A standalone `MacroNetwork` of ``arch`` (default: the active child) with copies of the supernet's weights
        and BN statistics (sliced like the forward), on the supernet's device, in its train/eval mode."""
        if arch is None:
            arch = self._active
        self.space.validate(arch)
        with torch.device("meta"):
            child = MacroNetwork(canonical(arch), self.num_classes)
        shared = self.state_dict(keep_vars=True)
        tensors = {
            name: _slice_to(shared[_shared_name(name)], t.shape).detach().clone()
            for name, t in child.state_dict(keep_vars=True).items()
        }
        child.load_state_dict(tensors, assign=True)
        return child.train(self.training)


def _shared_name(name: str) -> str:
    """The supernet tensor behind a `MacroNetwork` tensor: ``layers.3.body.1.0.weight`` (an MBConv) is
    ``layers.3.mbconv.body.1.0.weight``, ``layers.2.0.weight`` (a stride-2 identity) ``layers.2.projection.0.weight``;
    the stem, head and classifier have the same names."""
    parts = name.split(".")
    if parts[0] != "layers":
        return name
    return ".".join([*parts[:2], "mbconv" if parts[2] == "body" else "projection", *parts[2:]])


def _slice_to(full: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """The first entries of every dim of ``full``, but the centred window of a conv kernel's spatial dims."""
    out = full
    for dim, (have, want) in enumerate(zip(full.shape, shape, strict=True)):
        start = (have - want) // 2 if full.dim() == 4 and dim >= 2 else 0
        out = out.narrow(dim, start, want)
    return out
