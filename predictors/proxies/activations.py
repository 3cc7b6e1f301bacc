"""One forward pass serves every activation proxy: the codes of rectifier-like activations for naswot, PCA sites
for vpca and wpca."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from predictors.proxies import Context, ProxyError, mode

# positive exactly where their input is (the ONNX side's `onnx_bench.activations.RECTIFIERS`, ReLU6 and swish)
RECTIFIERS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Hardswish, nn.SiLU, nn.ELU, nn.SELU, nn.CELU, nn.Mish)
ACTIVATIONS = (*RECTIFIERS, nn.GELU)


@dataclass
class Activations:
    kernel: torch.Tensor | None  # naswot's K (batch x batch, float64); None when the model has no ReLU
    pca_sites: list[torch.Tensor]  # samples x features, one per PCA site


def as_samples(h: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B*H*W, C); (B, T, D) -> (B*T, D); (B, D) stays."""
    if h.ndim == 4:
        return h.permute(0, 2, 3, 1).reshape(-1, h.shape[1])
    return h.reshape(-1, h.shape[-1])


def code_kernel(codes: torch.Tensor) -> torch.Tensor:
    """c c^T + (1 - c)(1 - c)^T for a binary code matrix (batch x units): units minus Hamming distance."""
    c = codes.to(torch.float32)
    ones = c.sum(dim=1, keepdim=True)
    # float32 counts are exact below 2**24 units per layer; the sum over layers is kept in float64
    return (c.shape[1] - ones - ones.T + 2.0 * (c @ c.T)).to(torch.float64)


def collect(ctx: Context) -> Activations:
    return ctx.memo("activations", lambda: _collect(ctx.model, ctx.batch.inputs, ctx.config.train_mode))


def _collect(model: nn.Module, inputs: torch.Tensor, train: bool) -> Activations:
    n = inputs.shape[0]
    kernel = torch.zeros(n, n, dtype=torch.float64)
    relus = 0
    sites: list[torch.Tensor] = []
    seen: set[tuple[int, tuple[int, ...]]] = set()
    alive: list[torch.Tensor] = []  # keeps seen tensors alive so their storage is not reused mid-forward
    explicit = getattr(model, "pca_sites", None)
    site_modules: list[nn.Module] = list(explicit()) if callable(explicit) else []

    def site_hook(_m: nn.Module, _inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        sites.append(as_samples(out.detach().float().cpu()))

    def pre_hook(_m: nn.Module, inp: tuple[torch.Tensor, ...]) -> None:
        x = inp[0]
        key = (x.data_ptr(), tuple(x.shape))
        if key not in seen:  # one tensor feeding several ReLUs (an NB201 node) is one site
            seen.add(key)
            alive.append(x)
            sites.append(as_samples(x.detach().float().cpu()).clone())  # clone: an inplace ReLU follows

    def relu_hook(_m: nn.Module, _inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal kernel, relus
        relus += 1
        kernel += code_kernel(out.detach().reshape(n, -1).cpu() > 0)

    handles = []
    for m in model.modules():
        if isinstance(m, RECTIFIERS):
            handles.append(m.register_forward_hook(relu_hook))
        if isinstance(m, ACTIVATIONS) and not site_modules:
            handles.append(m.register_forward_pre_hook(pre_hook))
    handles += [m.register_forward_hook(site_hook) for m in site_modules]
    try:
        with mode(model, train=train), torch.no_grad():
            model(inputs)
    finally:
        for h in handles:
            h.remove()
    return Activations(kernel if relus else None, sites)


def need_sites(acts: Activations) -> list[torch.Tensor]:
    if not acts.pca_sites:
        raise ProxyError("vpca/wpca need FFN or ReLU/GELU activations; the network has none")
    return acts.pca_sites
