"""The one interface every search space follows, and the error of an architecture that is not in a space."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from nas_ground.errors import UserInputError

if TYPE_CHECKING:
    import optuna
    import torch
    from torch import nn

Arch = TypeVar("Arch")


class InvalidArchitecture(UserInputError):
    """An architecture string or value that does not belong to the space."""


class SearchSpace(Protocol[Arch]):
    """What `nas` needs of a space: sampling, mutation, Optuna suggestion, a canonical string, a builder.

    Architectures are small immutable values (tuples / frozen dataclasses): hashable and comparable, so
    ``decode(encode(a)) == a`` is the round-trip contract.
    """

    name: str

    @property
    def input_shape(self) -> tuple[int, ...]:
        """(C, H, W) of one input image; (T,) token ids of a text space."""
        ...

    # Optional: ``example_input(batch_size) -> torch.Tensor``, a fixed input batch (text spaces: token ids).

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


def example_input(space_or_shape: Any, batch_size: int = 1) -> torch.Tensor:
    """A fixed input batch for a space (or an input shape): the space's own ``example_input`` when it has one
    (token ids for a text space), else images of ``input_shape`` drawn from N(0, 1) with seed 0."""
    import torch

    make = getattr(space_or_shape, "example_input", None)
    if callable(make):
        return make(batch_size)  # type: ignore[no-any-return]
    shape = space_or_shape if isinstance(space_or_shape, tuple) else space_or_shape.input_shape
    return torch.randn(batch_size, *shape, generator=torch.Generator().manual_seed(0))
