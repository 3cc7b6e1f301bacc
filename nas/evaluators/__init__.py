"""Evaluators by name: ``make_evaluator("train" | "table" | "proxy:synflow" | ..., space)``: architecture -> metrics.

An evaluator is built from plain configuration (names and numbers), so a worker process can rebuild it. A name
with a dot is an import path (``package.module.Factory``): an evaluator from outside this package plugs in that way.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from nas.evaluators.base import BUILD_KEYS, TEXT_BUILD_KEYS, Evaluator, Screened, TrialFailed, profile
from nas_ground.errors import UserInputError
from nas_ground.registry import Registry
from search_spaces import SearchSpace


def _load_builtin() -> None:
    from nas.evaluators import predictor, screen, supernet, table, train  # noqa: F401


EVALUATORS: Registry[Callable[..., Evaluator]] = Registry("evaluator", _load_builtin)
register = EVALUATORS.register


def evaluator_names() -> list[str]:
    return sorted([*EVALUATORS.names(), "proxy:NAME", "ensemble"])


def make_evaluator(name: str, space: SearchSpace[Any], **options: Any) -> Evaluator:
    if name == "ensemble" or name.startswith("proxy:"):
        from nas.evaluators.proxy import make_proxy_evaluator

        return make_proxy_evaluator(name, space, **options)
    if "." in name:
        return _imported(name)(space, **options)
    if name not in EVALUATORS:
        raise UserInputError(f"unknown evaluator {name!r}; valid: {', '.join(evaluator_names())}")
    return EVALUATORS.get(name)(space, **options)


def _imported(path: str) -> Callable[..., Evaluator]:
    module, _, attr = path.rpartition(".")
    try:
        factory = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise UserInputError(f"cannot import evaluator {path!r}: {exc}") from exc
    if not callable(factory):
        raise UserInputError(f"evaluator {path!r} is not a class or function")
    return factory  # type: ignore[no-any-return]


__all__ = [
    "BUILD_KEYS",
    "EVALUATORS",
    "TEXT_BUILD_KEYS",
    "Evaluator",
    "Screened",
    "TrialFailed",
    "evaluator_names",
    "make_evaluator",
    "profile",
    "register",
]
