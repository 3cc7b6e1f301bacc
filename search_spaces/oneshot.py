"""A one-shot (SPOS single-path) supernet of the NASNet / DARTS cell spaces: every candidate op holds its
own weights, one genotype is active at a time, and `extract` gives the child network built by the space."""

from __future__ import annotations

import random
from typing import cast

import torch
from torch import nn
from torch.func import functional_call

from nas_ground.errors import UserInputError
from search_spaces.nasnet import (
    OPS,
    Cell,
    FactorizedReduce,
    Genotype,
    NASNetSpace,
    NetworkCIFAR,
    OpSet,
    ReLUConvBN,
    concat_states,
)

# The (input state, candidate key) of one edge; edges are numbered 2 * block + slot, as `Cell.ops` is.
Choice = tuple[int, str]


def candidate_key(op: str, stride: int) -> str:
    """Name of an edge's candidate: the op, with ``_stride2`` for the strided copy of a reduction cell."""
    return op if stride == 1 else f"{op}_stride{stride}"


class MixedEdge(nn.Module):
    """Every candidate op of one (block, slot) of a cell, for every stride the edge can have; `forward`
    runs only the chosen one on the chosen input state."""

    def __init__(self, ops: tuple[str, ...], c: int, strides: tuple[int, ...]) -> None:
        super().__init__()
        self.candidates = nn.ModuleDict({candidate_key(op, s): OPS[op](c, s) for s in strides for op in ops})
        self.choice: Choice | None = None

    def forward(self, states: list[torch.Tensor]) -> torch.Tensor:
        assert self.choice is not None, "no active path"
        state, key = self.choice
        return self.candidates[key](states[state])  # type: ignore[no-any-return]


class InputChannelSelect(nn.Module):
    """A layer built for the widest input a cell can give (every block's output concatenated, block k at
    channels [k C, (k + 1) C)), run on the channels of the blocks the active cell concatenates: its conv and
    linear weights (input channels on dim 1) are sliced to those channels, everything else is unchanged."""

    index: torch.Tensor | None  # the kept input channels; None keeps them all

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer
        self.register_buffer("index", None, persistent=False)

    def select(self, index: torch.Tensor | None) -> None:
        device = next(self.layer.parameters()).device
        self.index = None if index is None else index.to(device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.index is None:
            return self.layer(x)  # type: ignore[no-any-return]
        sliced = {name: p.index_select(1, self.index) for name, p in self.layer.named_parameters() if p.dim() >= 2}
        return functional_call(self.layer, sliced, (x,))  # type: ignore[no-any-return]

    def sliced_state(self, index: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """The layer's state dict for an input of the ``index`` channels (the narrow layer a child builds)."""
        state = self.layer.state_dict()
        if index is None:
            return state
        index = index.to(next(self.layer.parameters()).device)
        return {name: t.index_select(1, index) if t.dim() >= 2 else t for name, t in state.items()}


class SupernetCell(nn.Module):
    """`Cell` with a `MixedEdge` on every (block, slot) and preprocessing for the widest inputs."""

    def __init__(
        self, spec: OpSet, c_prev_prev: int, c_prev: int, c: int, reduction: bool, reduction_prev: bool
    ) -> None:
        super().__init__()
        self.reduction, self.c = reduction, c
        pre0 = FactorizedReduce(c_prev_prev, c) if reduction_prev else ReLUConvBN(c_prev_prev, c, 1, 1, 0)
        self.preprocess0 = InputChannelSelect(pre0)
        self.preprocess1 = InputChannelSelect(ReLUConvBN(c_prev, c, 1, 1, 0))
        # A reduction cell strides the ops that read a cell input (states 0, 1); block b >= 1 may also read a
        # block output at stride 1, so its edges hold both copies.
        self.edges = nn.ModuleList(
            MixedEdge(spec.ops, c, ((2, 1) if b > 0 else (2,)) if reduction else (1,))
            for b in range(spec.blocks)
            for _slot in range(2)
        )
        self.out_channels = c * spec.blocks  # the widest output: every block concatenated
        self.concat: tuple[int, ...] = ()

    def forward(self, s0: torch.Tensor, s1: torch.Tensor) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for e in range(0, len(self.edges), 2):
            states.append(self.edges[e](states) + self.edges[e + 1](states))
        return torch.cat([states[i] for i in self.concat], dim=1)


class OneShotSupernet(nn.Module):
    """All networks of a NASNet-family space (``get_space("nasnet")`` or ``get_space("darts")``) in one
    module with `NetworkCIFAR`'s skeleton: stem, [N normal cells, reduction cell] x 2, N normal cells, global
    pooling, linear classifier (no auxiliary head, no drop-path).

    Weight sharing: one weight set per (cell, block, slot, op), shared by every input the slot can read,
    except that a reduction cell's op is strided when it reads a cell input (states 0, 1) and not when it
    reads a block output, so there each op has a stride-2 and a stride-1 copy. Varying widths: a NASNet
    cell concatenates only its unused blocks, so the layers reading a cell output (the next cells'
    preprocessing, the classifier) hold weights for all blocks concatenated and use the input channels of
    the blocks the active cell concatenates; the child gets exactly those slices.

    ``set_active(genotype)`` (or ``sample_active(rng)``, uniform SPOS sampling) selects one path, and
    ``forward`` runs that path only. ``extract()`` returns ``space.build(genotype, ...)`` with the
    supernet's weights: the same function as the active supernet, exportable to ONNX.

    >>> from search_spaces import get_space
    >>> supernet = OneShotSupernet(get_space("darts"), channels=8, layers=1)
    >>> genotype = supernet.sample_active(random.Random(0))
    >>> child = supernet.extract()  # a NetworkCIFAR
    """

    def __init__(
        self,
        space: NASNetSpace,
        *,
        channels: int = 16,
        layers: int = 2,
        num_classes: int = 10,
        stem_multiplier: int = 3,
    ) -> None:
        super().__init__()
        if not isinstance(space, NASNetSpace):
            name = getattr(space, "name", space)
            raise UserInputError(f"one-shot supernets cover the NASNet-family spaces (nasnet, darts), not {name!r}")
        for option, value, low in (
            ("channels", channels, 1),
            ("layers", layers, 1),
            ("num_classes", num_classes, 2),
            ("stem_multiplier", stem_multiplier, 1),
        ):
            if type(value) is not int or value < low:
                raise UserInputError(f"{option} must be an integer >= {low}, got {value!r}")
        self.space = space
        self.options = {
            "channels": channels,
            "layers": layers,
            "num_classes": num_classes,
            "stem_multiplier": stem_multiplier,
        }
        c_stem = stem_multiplier * channels
        self.stem = nn.Sequential(nn.Conv2d(3, c_stem, 3, padding=1, bias=False), nn.BatchNorm2d(c_stem))
        c_prev_prev, c_prev, c = c_stem, c_stem, channels
        self.cells = nn.ModuleList()
        reduction_prev = False
        for reduction in ([False] * layers + [True]) * 2 + [False] * layers:
            c = 2 * c if reduction else c
            cell = SupernetCell(space.spec, c_prev_prev, c_prev, c, reduction, reduction_prev)
            self.cells.append(cell)
            c_prev_prev, c_prev, reduction_prev = c_prev, cell.out_channels, reduction
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = InputChannelSelect(nn.Linear(c_prev, num_classes))
        self.active: Genotype | None = None

    def _cells(self) -> list[SupernetCell]:
        return [cast(SupernetCell, cell) for cell in self.cells]

    def _route(self, genotype: Genotype) -> tuple[list[list[Choice]], list[torch.Tensor | None]]:
        """Per cell: the choice of every edge, and the channels of its widest output that the genotype's
        output keeps (None: all of them)."""
        self.space.validate(genotype)
        choices, kept = [], []
        for cell in self._cells():
            blocks = genotype.reduce if cell.reduction else genotype.normal
            choices.append(
                [
                    (i, candidate_key(op, 2 if cell.reduction and i < 2 else 1))
                    for block in blocks
                    for i, op in ((block.input1, block.op1), (block.input2, block.op2))
                ]
            )
            concat = concat_states(blocks, self.space.spec.concat_unused)
            channels = [torch.arange((s - 2) * cell.c, (s - 1) * cell.c) for s in concat]
            kept.append(None if len(concat) == len(blocks) else torch.cat(channels))
        return choices, kept

    @staticmethod
    def _cell_inputs(kept: list[torch.Tensor | None], k: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Kept channels of cell k's inputs s0 and s1 (the stem's output, for the first cells, keeps all)."""
        return (kept[k - 2] if k >= 2 else None), (kept[k - 1] if k >= 1 else None)

    def set_active(self, genotype: Genotype) -> None:
        """Make ``genotype``'s inputs and ops (normal and reduction cells) the path `forward` runs."""
        choices, kept = self._route(genotype)
        for k, cell in enumerate(self._cells()):
            for edge, choice in zip(cell.edges, choices[k], strict=True):
                cast(MixedEdge, edge).choice = choice
            blocks = genotype.reduce if cell.reduction else genotype.normal
            cell.concat = concat_states(blocks, self.space.spec.concat_unused)
            in0, in1 = self._cell_inputs(kept, k)
            cell.preprocess0.select(in0)
            cell.preprocess1.select(in1)
        self.classifier.select(kept[-1])
        self.active = genotype

    def sample_active(self, rng: random.Random) -> Genotype:
        """Activate a uniformly random genotype (the space's `sample`) and return it."""
        genotype: Genotype = self.space.sample(rng)
        self.set_active(genotype)
        return genotype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.active is None:
            raise RuntimeError("the supernet has no active path; call set_active or sample_active first")
        s0 = s1 = self.stem(x)  # (B, stem_multiplier * C, H, W)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1)
        return self.classifier(torch.flatten(self.global_pooling(s1), 1))  # type: ignore[no-any-return]

    def extract(self, genotype: Genotype | None = None) -> NetworkCIFAR:
        """``space.build(genotype, ...)`` (default: the active genotype) holding the supernet's weights of that
        path; in the supernet's mode and on its device. The active path is left as it is."""
        if genotype is None:
            if self.active is None:
                raise RuntimeError("the supernet has no active path; pass a genotype or call set_active first")
            genotype = self.active
        choices, kept = self._route(genotype)
        child = self.space.build(genotype, **self.options, auxiliary=False, drop_path=0.0)
        child.stem.load_state_dict(self.stem.state_dict())
        for k, (cell, child_cell) in enumerate(zip(self._cells(), child.cells, strict=True)):
            child_cell = cast(Cell, child_cell)
            in0, in1 = self._cell_inputs(kept, k)
            child_cell.preprocess0.load_state_dict(cell.preprocess0.sliced_state(in0))
            child_cell.preprocess1.load_state_dict(cell.preprocess1.sliced_state(in1))
            for edge, op, (_, key) in zip(cell.edges, child_cell.ops, choices[k], strict=True):
                op.load_state_dict(cast(MixedEdge, edge).candidates[key].state_dict())
        child.classifier.load_state_dict(self.classifier.sliced_state(kept[-1]))
        return child.to(next(self.parameters()).device).train(self.training)
