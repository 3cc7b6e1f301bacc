"""A one-shot (SPOS single-path) supernet of NAS-Bench-201: every edge of every cell holds all five ops, one cell is
active at a time, and `extract` gives the network `NB201Space.build` makes; plus sampling one network per class."""

from __future__ import annotations

import csv
import random
from pathlib import Path
from typing import cast

import torch
from torch import nn

from nas_ground.errors import UserInputError
from search_spaces.nb201 import (
    EDGES,
    OPS,
    Cell,
    InferCell,
    NB201Network,
    NB201Space,
    ResNetBasicBlock,
    check_skeleton,
    make_op,
)


class MixedEdge(nn.Module):
    """All five ops of one edge (weights in the two convs); `forward` runs the chosen one."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.ops = nn.ModuleDict({op: make_op(op, c) for op in OPS})
        self.choice: str | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert self.choice is not None, "no active op"
        return self.ops[self.choice](x)  # type: ignore[no-any-return]


class MixedCell(InferCell):
    """`InferCell` (its forward) with a `MixedEdge` on each of the six edges."""

    def __init__(self, c: int) -> None:
        nn.Module.__init__(self)
        self.edges = nn.ModuleList(MixedEdge(c) for _ in EDGES)


class NB201Supernet(nn.Module):
    """Every network of the NB201 space in `NB201Network`'s skeleton: stem, 3 stages of ``cells_per_stage``
    `MixedCell` at C, 2C, 4C joined by the (unshared, always active) reduction blocks, BN-ReLU, pooling, linear.

    Weight sharing: one weight set per (cell position, edge, op); the 3 x N cells share none with each other, as
    in the child. ``set_active(cell)`` selects the op of each edge in every cell and ``forward`` runs
    only those; ``extract(cell)`` returns ``NB201Space().build(cell, ...)`` holding the supernet's weights.

    >>> supernet = NB201Supernet(channels=4, cells_per_stage=1)
    >>> cell = NB201Space().sample(random.Random(0))
    >>> supernet.set_active(cell)
    >>> child = supernet.extract(cell)  # an NB201Network, the same function as the active supernet
    """

    def __init__(
        self, *, channels: int = 16, cells_per_stage: int = 5, num_classes: int = 10, **unknown: object
    ) -> None:
        super().__init__()
        check_skeleton("supernet", channels, cells_per_stage, num_classes, unknown)
        self.space = NB201Space()
        self.options = {"channels": channels, "cells_per_stage": cells_per_stage, "num_classes": num_classes}
        self.stem = nn.Sequential(nn.Conv2d(3, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels))
        layers: list[nn.Module] = []
        c = channels
        for stage in range(3):
            if stage > 0:
                layers.append(ResNetBasicBlock(c, 2 * c))
                c *= 2
            layers.extend(MixedCell(c) for _ in range(cells_per_stage))
        self.cells = nn.Sequential(*layers)
        self.lastact = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(inplace=True))
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c, num_classes)
        self.active: Cell | None = None

    def set_active(self, arch: Cell) -> None:
        """Make ``arch`` (6 op names in `EDGES` order) the cell of every stage that `forward` runs."""
        self.space.validate(arch)
        for cell in self.cells:
            if isinstance(cell, MixedCell):
                for edge, op in zip(cell.edges, arch, strict=True):
                    cast(MixedEdge, edge).choice = op
        self.active = arch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.active is None:
            raise RuntimeError("the NB201 supernet has no active cell; call set_active first")
        out = self.lastact(self.cells(self.stem(x)))  # (B, 4C, 8, 8)
        return self.classifier(self.global_pooling(out).flatten(1))  # type: ignore[no-any-return]

    def extract(self, arch: Cell | None = None) -> NB201Network:
        """``NB201Space().build(arch, ...)`` (default: the active cell) holding the supernet's weights and BN
        statistics of that path; in the supernet's mode and on its device. The active cell is left as it is."""
        if arch is None:
            if self.active is None:
                raise RuntimeError("the NB201 supernet has no active cell; pass a cell or call set_active first")
            arch = self.active
        child = cast(NB201Network, self.space.build(arch, **self.options))
        for name in ("stem", "lastact", "classifier"):
            getattr(child, name).load_state_dict(getattr(self, name).state_dict())
        for block, child_block in zip(self.cells, child.cells, strict=True):
            if isinstance(block, MixedCell):
                child_edges = cast(InferCell, child_block).edges
                for edge, op, child_op in zip(block.edges, arch, child_edges, strict=True):
                    child_op.load_state_dict(cast(MixedEdge, edge).ops[op].state_dict())
            else:  # a reduction block
                child_block.load_state_dict(block.state_dict())
        return child.to(next(self.parameters()).device).train(self.training)


def distinct_cells(table_csv: str | Path) -> list[Cell]:
    """One cell per network of the NB201 table (per ``iso_unique_str``: isomorphic cells compute the same
    function), the first in file order: 6,466 of the 15,625 cells."""
    space = NB201Space()
    seen: set[str] = set()
    cells: list[Cell] = []
    try:
        with open(table_csv, newline="") as f:
            for row in csv.DictReader(f):
                if row["iso_unique_str"] not in seen:
                    seen.add(row["iso_unique_str"])
                    cells.append(space.decode(row["arch_str"]))
    except (OSError, KeyError) as exc:
        raise UserInputError(f"cannot read the NB201 table {table_csv}: {exc}") from exc
    return cells


def sample_distinct(rng: random.Random, cells: list[Cell]) -> Cell:
    """A uniformly random network (one of `distinct_cells`), not a uniformly random cell string."""
    return rng.choice(cells)
