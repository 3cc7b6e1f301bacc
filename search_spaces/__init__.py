"""Search spaces by name: ``get_space("nasnet")`` returns an object with the `SearchSpace` interface."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from search_spaces.base import InvalidArchitecture, SearchSpace, UserInputError

_REGISTRY: dict[str, Callable[..., SearchSpace[Any]]] = {}


def register(name: str) -> Callable[[Callable[..., SearchSpace[Any]]], Callable[..., SearchSpace[Any]]]:
    """Class decorator: make a space constructible by ``get_space(name)``."""

    def deco(factory: Callable[..., SearchSpace[Any]]) -> Callable[..., SearchSpace[Any]]:
        _REGISTRY[name] = factory
        return factory

    return deco


def space_names() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def get_space(name: str, **options: Any) -> SearchSpace[Any]:
    """The space registered as ``name``; unknown names raise `UserInputError` listing the valid ones."""
    _load_builtin()
    if name not in _REGISTRY:
        raise UserInputError(f"unknown search space {name!r}; valid: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name](**options)


def _load_builtin() -> None:
    # Imported on first use so `import search_spaces` stays cheap and free of torch.
    from search_spaces import bignas, nasnet, nb201, nbmacro, transformer  # noqa: F401


__all__ = ["InvalidArchitecture", "SearchSpace", "UserInputError", "get_space", "register", "space_names"]
