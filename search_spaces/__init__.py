"""Search spaces by name: ``get_space("nasnet")`` returns an object with the `SearchSpace` interface."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from nas_ground.errors import UserInputError
from nas_ground.registry import Registry
from search_spaces.base import InvalidArchitecture, SearchSpace


def _load_builtin() -> None:
    # Imported on first use so `import search_spaces` stays cheap and free of torch.
    from search_spaces import bignas, nasnet, nb201, nbmacro, transformer  # noqa: F401


SPACES: Registry[Callable[..., SearchSpace[Any]]] = Registry("search space", _load_builtin)
register = SPACES.register


def space_names() -> list[str]:
    return SPACES.names()


def get_space(name: str, **options: Any) -> SearchSpace[Any]:
    """The space registered as ``name``; unknown names raise `UserInputError` listing the valid ones."""
    return SPACES.get(name)(**options)


__all__ = ["SPACES", "InvalidArchitecture", "SearchSpace", "UserInputError", "get_space", "register", "space_names"]
