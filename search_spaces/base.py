"""The one interface every search space follows, and the errors a user can cause through a space."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:
    import optuna
    from torch import nn

Arch = TypeVar("Arch")


class UserInputError(ValueError):
    """A mistake the user can fix (bad name, malformed string, bad option); the CLI exits with code 2."""


class InvalidArchitecture(UserInputError):
    """An architecture string or value that does not belong to the space."""


class SearchSpace(Protocol[Arch]):
    """What `nas` needs of a space: sampling, mutation, Optuna suggestion, a canonical string, a builder.

    Architectures are small immutable values (tuples / frozen dataclasses): hashable and comparable, so
    ``decode(encode(a)) == a`` is the round-trip contract.
    """

    name: str
    input_shape: tuple[int, int, int]  # (C, H, W) of one input image

    def sample(self, rng: random.Random) -> Arch: ...

    def mutate(self, arch: Arch, rng: random.Random) -> Arch: ...

    def suggest(self, trial: optuna.Trial) -> Arch: ...

    def encode(self, arch: Arch) -> str: ...

    def decode(self, text: str) -> Arch: ...

    def validate(self, arch: Arch) -> None: ...

    def build(self, arch: Arch, **options: Any) -> nn.Module: ...


def arch_digest(encoded: str) -> str:
    """A short stable file-name key for an encoded architecture (16 hex digits of its SHA-1)."""
    import hashlib

    return hashlib.sha1(encoded.encode()).hexdigest()[:16]
