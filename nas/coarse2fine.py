"""BigNAS coarse-to-fine selection as a search strategy (``nas search --sampler coarse2fine``).

Coarse: a grid of *uniform* children, where every stage takes the same relative depth, width, kernel and
expansion (each at ``levels`` evenly spaced positions of its choices, low to high) at every resolution level.
Fine: around the best child so far (first objective), every single-dimension step (one choice moved to an
adjacent value: resolution, stem, head, a stage's width or depth, a block's kernel or expansion), best first,
until the trial budget is spent. Nothing is evaluated twice; the state is re-derived from the study, so a
resumed search continues where it stopped.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from nas_ground.errors import UserInputError
from search_spaces.bignas import BigNASArch, BigNASSpace, Block, Stage


def _at(choices: Sequence[int], level: float) -> int:
    return choices[round(level * (len(choices) - 1))]


def uniform_arch(
    space: BigNASSpace, res: float, depth: float, width: float, kernel: float, expansion: float
) -> BigNASArch:
    """The child whose every choice sits at the same relative position (0 = smallest, 1 = largest)."""
    cfg = space.config
    stages = tuple(
        Stage(
            _at(s.width_choices, width),
            (Block(_at(s.kernels, kernel), _at(s.expansions, expansion)),) * _at(s.depth_choices, depth),
        )
        for s in cfg.stages
    )
    return BigNASArch(_at(cfg.resolutions, res), _at(cfg.stem_choices, width), stages, _at(cfg.head_choices, width))


def coarse_grid(space: BigNASSpace, levels: int = 2) -> list[BigNASArch]:
    """Uniform children at ``levels`` positions of resolution, depth, width, kernel and expansion (distinct)."""
    if levels < 2:
        raise UserInputError(f"coarse2fine levels={levels} must be >= 2")
    points = [i / (levels - 1) for i in range(levels)]
    grid = [uniform_arch(space, *p) for p in itertools.product(points, repeat=5)]
    return list(dict.fromkeys(grid))


def _adjacent(choices: Sequence[int], value: int) -> list[int]:
    i = list(choices).index(value)
    return [choices[j] for j in (i - 1, i + 1) if 0 <= j < len(choices)]


def neighbours(space: BigNASSpace, arch: BigNASArch) -> list[BigNASArch]:
    """Every child one adjacent step away in one dimension (a deeper stage repeats its last block)."""
    cfg = space.config
    out: list[BigNASArch] = []
    for name, choices in (("resolution", cfg.resolutions), ("stem", cfg.stem_choices), ("head", cfg.head_choices)):
        changes: list[dict[str, Any]] = [{name: v} for v in _adjacent(choices, getattr(arch, name))]
        out += [replace(arch, **change) for change in changes]
    for i, (stage, spec) in enumerate(zip(arch.stages, cfg.stages, strict=True)):

        def with_stage(new: Stage, i: int = i) -> BigNASArch:
            return replace(arch, stages=arch.stages[:i] + (new,) + arch.stages[i + 1 :])

        out += [with_stage(Stage(w, stage.blocks)) for w in _adjacent(spec.width_choices, stage.width)]
        for d in _adjacent(spec.depth_choices, stage.depth):
            out.append(with_stage(Stage(stage.width, stage.blocks[:d] + (stage.blocks[-1],) * (d - stage.depth))))
        for j, block in enumerate(stage.blocks):
            for field, choices in (("kernel", spec.kernels), ("expansion", spec.expansions)):
                for v in _adjacent(choices, getattr(block, field)):
                    blocks = list(stage.blocks)
                    blocks[j] = block._replace(**{field: v})
                    out.append(with_stage(Stage(stage.width, tuple(blocks))))
    return out


class CoarseToFine:
    """Proposes the next child from what the study has seen: ``history`` = (encoded arch, first objective or None)."""

    def __init__(self, space: Any, maximize: bool, levels: int = 2) -> None:
        if not isinstance(space, BigNASSpace):
            raise UserInputError(f"sampler coarse2fine needs a bignas space, not {space.name!r}")
        self.space, self.maximize = space, maximize
        self.grid = coarse_grid(space, levels)

    def next_arch(self, history: Sequence[tuple[str, float | None]]) -> BigNASArch | None:
        """The next child to evaluate, or None when the grid and every neighbourhood are exhausted."""
        seen = {encoded for encoded, _ in history}
        for arch in self.grid:
            if self.space.encode(arch) not in seen:
                return arch
        scored = sorted(((v, e) for e, v in history if v is not None), reverse=self.maximize)
        for _, encoded in scored:  # around the best first; further down when its neighbourhood is spent
            for arch in neighbours(self.space, self.space.decode(encoded)):
                if self.space.encode(arch) not in seen:
                    return arch
        return None
