"""``params`` and ``flops``: the baselines every proxy must beat (parameters; multiply-accumulates, batch 1)."""

from __future__ import annotations

from nas_ground.cost import count_flops, count_params
from predictors.proxies import Context, register


@register("params")
def params(ctx: Context) -> float:
    return float(count_params(ctx.model))


@register("flops")
def flops(ctx: Context) -> float:
    return float(count_flops(ctx.model, ctx.batch.inputs[:1]))
