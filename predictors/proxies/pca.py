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

from nas.profile import count_params
from predictors.proxies import Context, ProxyError, register
from predictors.proxies.activations import collect, need_sites


def pca_k(samples: torch.Tensor | np.ndarray, eta: float) -> int:
    """Smallest k whose top-k eigenvalues of the feature covariance exceed ``eta`` of the total variance."""
    h = torch.as_tensor(samples).to(torch.float64)
    if h.shape[0] < 2:
        raise ProxyError("PCA needs at least 2 samples")
    h = h - h.mean(dim=0, keepdim=True)
    cov = h.T @ h / (h.shape[0] - 1)
    return components_for(torch.linalg.eigvalsh(cov).numpy(), (eta,))[0]


def components_for(eigvals: np.ndarray, etas: tuple[float, ...]) -> list[int]:
    """For each eta, the smallest k whose top-k of the covariance eigenvalues ``eigvals`` (any order) exceed eta
    of their sum; 0 when there is no variance."""
    eig = np.clip(np.sort(np.asarray(eigvals, dtype=np.float64))[::-1], 0.0, None)
    total = float(eig.sum())
    if not np.isfinite(total):
        raise ProxyError("non-finite activations")
    if total <= 0.0:
        return [0 for _ in etas]
    ratio = np.cumsum(eig) / total
    return [min(int(np.searchsorted(ratio, eta, side="right")) + 1, len(ratio)) for eta in etas]


def vpca_value(sites: list[torch.Tensor], eta: float) -> int:
    return sum(pca_k(s, eta) for s in sites)


@register("vpca")
def vpca(ctx: Context) -> float:
    return float(ctx.memo("vpca", lambda: vpca_value(need_sites(collect(ctx)), ctx.config.eta)))


@register("wpca")
def wpca(ctx: Context) -> float:
    return float(count_params(ctx.model)) * vpca(ctx)
