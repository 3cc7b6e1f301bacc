"""``vpca`` and ``wpca`` (W-PCA, arXiv 2504.15983), and their CNN analogue (our extension).

For every PCA site the activations H are reshaped to samples x features: (batch * tokens) x D' for a
transformer's FFN pre-activation (padding positions included, as the reference code), (batch * pixels) x
channels for a conv feature map. Columns are centred, C = Hc^T Hc / (n - 1), eigenvalues by ``eigh``; the
site's k is the smallest k whose top-k eigenvalues exceed ``eta`` of the total variance (0 for a site with no
variance). V-PCA = sum of k over sites (the reference divides by the fixed layer count; the ranking is the
same), W-PCA = #params x V-PCA.

Sites: a model's ``pca_sites()`` (the transformer space returns the first Linear of every FFN, whose output is
H = X W1 + b1); otherwise the distinct inputs of every ReLU/GELU (the pre-activations: in a CNN, each
ReLU-Conv-BN block's input), which is also the rule applied to ONNX files.
"""

from __future__ import annotations

import numpy as np
import torch

from nas_ground.cost import count_params
from onnx_bench.activations import components_for
from predictors.proxies import Context, ProxyError, register
from predictors.proxies.activations import collect, need_sites


def pca_k(samples: torch.Tensor | np.ndarray, eta: float) -> int:
    """Smallest k whose top-k eigenvalues of the feature covariance exceed ``eta`` of the total variance."""
    h = torch.as_tensor(samples).to(torch.float64)
    if h.shape[0] < 2:
        raise ProxyError("PCA needs at least 2 samples")
    h = h - h.mean(dim=0, keepdim=True)
    cov = h.T @ h / (h.shape[0] - 1)
    try:
        return components_for(torch.linalg.eigvalsh(cov).numpy(), (eta,))[0]
    except FloatingPointError as exc:
        raise ProxyError(str(exc)) from exc


def vpca_value(sites: list[torch.Tensor], eta: float) -> int:
    return sum(pca_k(s, eta) for s in sites)


@register("vpca")
def vpca(ctx: Context) -> float:
    return float(ctx.memo("vpca", lambda: vpca_value(need_sites(collect(ctx)), ctx.config.eta)))


@register("wpca")
def wpca(ctx: Context) -> float:
    return float(count_params(ctx.model)) * vpca(ctx)
