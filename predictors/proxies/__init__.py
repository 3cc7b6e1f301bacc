"""Training-free proxies by name: ``compute_proxies(model, ["synflow", "naswot"], batch)``.

Each proxy is a short module that registers a function ``(model, batch, config) -> float`` (higher = the
network is predicted to be better, or bigger for ``params`` / ``flops``). Proxies never change the caller's
model: the ones that must (synflow makes weights positive and doubles them) work on a copy.

Activation proxies (``naswot``, ``vpca``, ``wpca``) also run on ONNX files, see `predictors.proxies.onnx_act`;
gradient proxies need a torch module (a space architecture).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from nas_ground.errors import UserInputError
from nas_ground.registry import Registry


class ProxyError(RuntimeError):
    """A proxy cannot be computed for this network or input (e.g. an input gradient of token ids)."""


@dataclass(frozen=True)
class ProxyConfig:
    """What every proxy shares: seed (weights and batch), batch size, PCA threshold, BN mode, device.

    ``train_mode`` (default, as the reference implementations): batch norm uses the batch's statistics;
    False: eval mode, which is what an exported ONNX file computes. synflow always runs in eval mode.
    """

    seed: int = 0
    batch_size: int = 64
    eta: float = 0.99
    device: str = "cpu"
    train_mode: bool = True

    def __post_init__(self) -> None:
        if self.batch_size < 2:
            raise UserInputError(f"proxy batch_size={self.batch_size} must be >= 2")
        if not 0.0 < self.eta <= 1.0:
            raise UserInputError(f"proxy eta={self.eta} must be in (0, 1]")


@dataclass
class ProxyBatch:
    """One fixed batch of real data: ``inputs`` (images float NCHW or token ids int64 NT) and ``targets``."""

    inputs: torch.Tensor
    targets: torch.Tensor
    num_classes: int

    @property
    def is_tokens(self) -> bool:
        return not torch.is_floating_point(self.inputs)


@dataclass
class Context:
    """Work shared by the proxies of one (model, batch): the cross-entropy gradients are computed once."""

    model: nn.Module
    batch: ProxyBatch
    config: ProxyConfig
    _grads: list[tuple[torch.Tensor, torch.Tensor]] | None = field(default=None, repr=False)
    _memo: dict[str, Any] = field(default_factory=dict, repr=False)

    def memo(self, key: str, compute: Callable[[], Any]) -> Any:
        """``compute()`` once per context (e.g. the activations that vpca and wpca both read)."""
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def weight_grads(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(weight, d loss / d weight) of every Conv/Linear layer after one cross-entropy backward."""
        if self._grads is None:
            model = self.model
            with mode(model, train=self.config.train_mode):
                model.zero_grad(set_to_none=True)
                loss = nn.functional.cross_entropy(logits(model(self.batch.inputs)), self.batch.targets)
                loss.backward()
                layers = [m for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear))]
                self._grads = [
                    (m.weight.detach().clone(), m.weight.grad.detach().clone())
                    for m in layers
                    if m.weight.grad is not None
                ]
                model.zero_grad(set_to_none=True)
        return self._grads


ProxyFn = Callable[[Context], float]
ACTIVATION_PROXIES = ("naswot", "vpca", "wpca")  # computable from forward activations alone (ONNX files too)


def _load_builtin() -> None:
    from predictors.proxies import grads, naswot, pca, size, synflow  # noqa: F401


PROXIES: Registry[ProxyFn] = Registry("proxy", _load_builtin)
register = PROXIES.register


def proxy_names() -> list[str]:
    return PROXIES.names()


def parse_proxy_names(text: str | Iterable[str]) -> list[str]:
    """``"synflow,naswot"`` -> canonical names, validated; aliases (``jacov``) map to their proxy."""
    names = [n.strip() for n in text.split(",")] if isinstance(text, str) else [n.strip() for n in text]
    out: list[str] = []
    for name in names:
        if not name:
            raise UserInputError(f"empty proxy name in {text!r}")
        canonical = PROXIES.canonical(name)
        if canonical not in out:
            out.append(canonical)
    return out


def compute_proxies(
    model: nn.Module,
    names: Sequence[str],
    batch: ProxyBatch,
    config: ProxyConfig | None = None,
    *,
    timings: dict[str, float] | None = None,
) -> dict[str, float]:
    """Every named proxy of ``model`` on ``batch``; ``timings`` (if given) receives seconds per proxy.

    A proxy that cannot be computed raises `ProxyError`; a non-finite value is returned as NaN.
    """
    config = config or ProxyConfig()
    model = model.to(config.device)
    batch = ProxyBatch(batch.inputs.to(config.device), batch.targets.to(config.device), batch.num_classes)
    ctx = Context(model, batch, config)
    out: dict[str, float] = {}
    for name in parse_proxy_names(names):
        start = time.perf_counter()
        torch.manual_seed(config.seed)
        value = float(PROXIES.get(name)(ctx))
        out[name] = value if math.isfinite(value) else math.nan
        if timings is not None:
            timings[name] = time.perf_counter() - start
    return out


def logits(output: Any) -> torch.Tensor:
    """The classifier output of a model that may also return auxiliary outputs (a tuple)."""
    return output[0] if isinstance(output, (tuple, list)) else output


@contextlib.contextmanager
def mode(model: nn.Module, *, train: bool) -> Iterator[nn.Module]:
    """Put a model in train/eval mode for the block and restore its previous mode afterwards."""
    was = model.training
    model.train(train)
    try:
        yield model
    finally:
        model.train(was)


__all__ = [
    "ACTIVATION_PROXIES",
    "Context",
    "ProxyBatch",
    "ProxyConfig",
    "ProxyError",
    "compute_proxies",
    "logits",
    "mode",
    "parse_proxy_names",
    "proxy_names",
    "register",
]
