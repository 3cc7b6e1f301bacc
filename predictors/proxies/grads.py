"""``snip`` and ``grad_norm`` (Abdelfattah et al. 2021): one cross-entropy backward on the fixed batch.

Both read the gradients of every Conv/Linear weight (the layers the reference code scores):
snip = sum |w * dL/dw| (connection sensitivity), grad_norm = sum over layers of ||dL/dw||_2.
"""

from __future__ import annotations

from predictors.proxies import Context, register


@register("snip")
def snip(ctx: Context) -> float:
    return float(sum((w * g).abs().sum().item() for w, g in ctx.weight_grads()))


@register("grad_norm")
def grad_norm(ctx: Context) -> float:
    return float(sum(g.norm().item() for _, g in ctx.weight_grads()))
