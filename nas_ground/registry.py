"""Things found by name: spaces, evaluators and proxies each keep one `Registry`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from nas_ground.errors import UserInputError

T = TypeVar("T")


class Registry(Generic[T]):
    """Names (and aliases) -> constructors. ``load`` imports the built-in modules, whose ``@register`` lines
    fill the registry, on first use, so importing a package stays cheap.

    >>> SPACES: Registry[type] = Registry("search space")
    >>> @SPACES.register("toy")
    ... class Toy: ...
    >>> SPACES.get("toy") is Toy
    True
    """

    def __init__(self, kind: str, load: Callable[[], None] | None = None) -> None:
        self.kind = kind
        self._load = load
        self._loaded = load is None
        self._entries: dict[str, T] = {}
        self._aliases: dict[str, str] = {}

    def register(self, name: str, *aliases: str) -> Callable[[T], T]:
        """Decorator: make ``entry`` reachable as ``name`` (and each alias)."""

        def deco(entry: T) -> T:
            self._entries[name] = entry
            for alias in aliases:
                self._aliases[alias] = name
            return entry

        return deco

    def _ensure_loaded(self) -> None:
        if not self._loaded:
            self._loaded = True
            assert self._load is not None
            self._load()

    def names(self) -> list[str]:
        self._ensure_loaded()
        return sorted(self._entries)

    def canonical(self, name: str) -> str:
        """``name`` or the name its alias stands for; an unknown name raises `UserInputError` listing the valid."""
        self._ensure_loaded()
        canonical = self._aliases.get(name, name)
        if canonical not in self._entries:
            valid = ", ".join(sorted([*self._entries, *self._aliases]))
            raise UserInputError(f"unknown {self.kind} {name!r}; valid: {valid}")
        return canonical

    def get(self, name: str) -> T:
        return self._entries[self.canonical(name)]

    def __contains__(self, name: object) -> bool:
        self._ensure_loaded()
        return name in self._entries or name in self._aliases
