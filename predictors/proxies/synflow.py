"""``synflow`` (Tanaka et al. 2020, as scored by Abdelfattah et al. 2021).

On a copy of the network in double precision with every weight replaced by its absolute value, an all-ones
input (batch 1) is passed forward; R = sum of the output; synflow = sum over Conv/Linear weights of
|w * dR/dw|. Batch norm runs in eval mode with its initial statistics (mean 0, variance 1), i.e. as the
identity, which is what the reference's "no BN" copy computes. Token models get the first sequence of the
batch instead of ones (token ids cannot be ones-valued); their embeddings are made positive like any weight.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from predictors.proxies import Context, logits, register


@register("synflow")
def synflow(ctx: Context) -> float:
    net = copy.deepcopy(ctx.model).double().eval()
    with torch.no_grad():
        for p in net.parameters():
            p.abs_()
    inputs = ctx.batch.inputs
    x = inputs[:1] if ctx.batch.is_tokens else torch.ones_like(inputs[:1], dtype=torch.float64)
    net.zero_grad(set_to_none=True)
    torch.sum(logits(net(x))).backward()
    total = 0.0
    for m in net.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)) and m.weight.grad is not None:
            total += float((m.weight * m.weight.grad).abs().sum().item())
    return total
