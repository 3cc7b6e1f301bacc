"""NASWOT (Mellor et al.): ``naswot`` (final paper) and ``naswot_v1`` (first version; alias ``jacov``).

naswot: every ReLU's output on the batch gives each input a binary code c (unit active or not); the kernel
K = sum over ReLUs of (c c^T + (1 - c)(1 - c)^T) counts, for every pair of inputs, the units on which their codes
agree; the score is log|det K|. Networks are in train mode (batch-norm statistics of the batch), as in the
reference code.

naswot_v1 (the Jacobian-covariance score that Abdelfattah et al. call jacob_cov): J = d sum(f) / d input per
example; score = -sum_i (log(l_i + k) + 1 / (l_i + k)) over the eigenvalues l_i of the correlation matrix of J's
rows, k = 1e-5. Needs a float input (not token ids). As in the reference code (BayesWatch/nas-without-training,
whose NB201 network returns ``(logits, features)`` and whose ``get_batch_jacobian`` takes the second), f is the
penultimate features: the input of the network's last linear layer (its classifier); a network without a linear
layer uses its output. Differentiating the logits instead agrees less with the published scores
(`experiments/nb201_proxies.py` checks it).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from predictors.proxies import Context, ProxyError, logits, mode, register
from predictors.proxies.activations import collect


def logdet_score(kernel: torch.Tensor | None) -> float:
    if kernel is None:
        raise ProxyError("naswot needs ReLU activations; the network has none")
    return float(torch.linalg.slogdet(kernel)[1])


@register("naswot")
def naswot(ctx: Context) -> float:
    return logdet_score(collect(ctx).kernel)


def jacobian_score(jacobian: np.ndarray, k: float = 1e-5) -> float:
    with np.errstate(invalid="ignore", divide="ignore"):
        corrs = np.corrcoef(jacobian)
    if not np.isfinite(
        corrs
    ).all():  # an example whose gradient is constant (e.g. zero): undefined, as in the reference
        return float("nan")
    eigvals = np.linalg.eigvalsh(corrs)
    return float(-np.sum(np.log(eigvals + k) + 1.0 / (eigvals + k)))


def penultimate(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The input of the last linear layer that ``model(x)`` runs (its classifier), else the model's output."""
    seen: list[torch.Tensor] = []

    def hook(_m: nn.Module, inp: tuple[torch.Tensor, ...]) -> None:
        seen.append(inp[0])

    handles = [m.register_forward_pre_hook(hook) for m in model.modules() if isinstance(m, nn.Linear)]
    try:
        out = logits(model(x))
    finally:
        for handle in handles:
            handle.remove()
    return seen[-1] if seen else out


@register("naswot_v1", "jacov")
def naswot_v1(ctx: Context) -> float:
    if ctx.batch.is_tokens:
        raise ProxyError("naswot_v1 (jacov) needs an input gradient; token-id inputs have none")
    x = ctx.batch.inputs.clone().requires_grad_(True)
    with mode(ctx.model, train=ctx.config.train_mode):
        ctx.model.zero_grad(set_to_none=True)
        y = penultimate(ctx.model, x)
        y.backward(torch.ones_like(y))
        ctx.model.zero_grad(set_to_none=True)
    assert x.grad is not None
    return jacobian_score(x.grad.detach().reshape(x.shape[0], -1).double().cpu().numpy())
