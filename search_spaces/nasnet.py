"""The NASNet search space (Zoph et al. 2018) and its DARTS variant: genotypes, their text form, and the
CIFAR network built from them (DARTS NetworkCIFAR layout)."""

from __future__ import annotations

import dataclasses
import itertools
import random
import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from nas_ground.errors import UserInputError
from search_spaces import register
from search_spaces.base import InvalidArchitecture

if TYPE_CHECKING:
    import optuna

NASNET_OPS: tuple[str, ...] = (
    "identity",
    "conv_1x3_3x1",
    "conv_1x7_7x1",
    "dil_conv_3x3",
    "avg_pool_3x3",
    "max_pool_3x3",
    "max_pool_5x5",
    "max_pool_7x7",
    "conv_1x1",
    "conv_3x3",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "sep_conv_7x7",
)
DARTS_OPS: tuple[str, ...] = (
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
)
CELLS: tuple[str, str] = ("normal", "reduce")


class OpSet(NamedTuple):
    """What differs between the NASNet and DARTS flavours of the cell."""

    ops: tuple[str, ...]
    blocks: int
    distinct_inputs: bool  # DARTS: the two inputs of a node are different states
    concat_unused: bool  # NASNet: concat the blocks no block consumed; DARTS: concat every node


OP_SETS: dict[str, OpSet] = {
    "nasnet": OpSet(NASNET_OPS, blocks=5, distinct_inputs=False, concat_unused=True),
    "darts": OpSet(DARTS_OPS, blocks=4, distinct_inputs=True, concat_unused=False),
}


class Block(NamedTuple):
    """Two (input, op) edges whose outputs are added. Inputs: 0 = h_{i-1}, 1 = h_i, 2 + k = block k."""

    input1: int
    op1: str
    input2: int
    op2: str


@dataclasses.dataclass(frozen=True)
class Genotype:
    """One architecture: the blocks of the normal cell and of the reduction cell."""

    normal: tuple[Block, ...]
    reduce: tuple[Block, ...]


def concat_states(blocks: Sequence[Block], concat_unused: bool) -> tuple[int, ...]:
    """Indices of the states a cell concatenates into its output (2 + k for block k)."""
    consumed = {i for block in blocks for i in (block.input1, block.input2)}
    states = range(2, 2 + len(blocks))
    return tuple(s for s in states if s not in consumed) if concat_unused else tuple(states)


_EDGE = re.compile(r"([^~]+)~(0|[1-9][0-9]*)")


def _short(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


@register("nasnet")
class NASNetSpace:
    """Cells of B blocks (NASNet: 13 ops, 5 blocks; DARTS: 8 ops, 4 nodes), written
    ``normal=sep_conv_3x3~1+identity~0|...;reduce=...`` with one ``op~input+op~input`` per block."""

    name = "nasnet"
    input_shape = (3, 32, 32)

    def __init__(self, op_set: str = "nasnet") -> None:
        if op_set not in OP_SETS:
            raise UserInputError(f"unknown op set {op_set!r}; valid: {', '.join(OP_SETS)}")
        self.name = op_set
        self.spec = OP_SETS[op_set]

    def sample(self, rng: random.Random) -> Genotype:
        return Genotype(*(self._sample_cell(rng) for _ in CELLS))

    def _sample_cell(self, rng: random.Random) -> tuple[Block, ...]:
        blocks = []
        for b in range(self.spec.blocks):
            if self.spec.distinct_inputs:
                in1, in2 = rng.sample(range(b + 2), 2)
            else:
                in1, in2 = rng.randrange(b + 2), rng.randrange(b + 2)
            blocks.append(Block(in1, rng.choice(self.spec.ops), in2, rng.choice(self.spec.ops)))
        return tuple(blocks)

    def mutate(self, arch: Genotype, rng: random.Random) -> Genotype:
        """Change one op or one input of one block of one cell, picked uniformly among changeable choices."""
        self.validate(arch)
        choices: list[tuple[str, int, str, list[Any]]] = []  # (cell, block, field, alternatives)
        for cell in CELLS:
            for b, block in enumerate(getattr(arch, cell)):
                for field in Block._fields:
                    alternatives = self._alternatives(b, block, field)
                    if alternatives:
                        choices.append((cell, b, field, alternatives))
        cell, b, field, alternatives = rng.choice(choices)
        blocks = list(getattr(arch, cell))
        blocks[b] = blocks[b]._replace(**{field: rng.choice(alternatives)})
        return dataclasses.replace(arch, **{cell: tuple(blocks)})

    def _alternatives(self, b: int, block: Block, field: str) -> list[Any]:
        current = getattr(block, field)
        if field.startswith("op"):
            return [op for op in self.spec.ops if op != current]
        taken = {current}
        if self.spec.distinct_inputs:
            taken.add(block.input2 if field == "input1" else block.input1)
        return [i for i in range(b + 2) if i not in taken]

    def suggest(self, trial: optuna.Trial) -> Genotype:
        """A static Optuna space: ``{cell}_b{b}_in1/op1/in2/op2``; DARTS asks ``{cell}_b{b}_inputs`` "i,j"."""
        return Genotype(*(self._suggest_cell(trial, cell) for cell in CELLS))

    def _suggest_cell(self, trial: optuna.Trial, cell: str) -> tuple[Block, ...]:
        ops = list(self.spec.ops)
        blocks = []
        for b in range(self.spec.blocks):
            prefix = f"{cell}_b{b}_"
            if self.spec.distinct_inputs:
                pairs = [f"{i},{j}" for i, j in itertools.permutations(range(b + 2), 2)]
                in1, in2 = map(int, trial.suggest_categorical(prefix + "inputs", pairs).split(","))
                op1 = trial.suggest_categorical(prefix + "op1", ops)
                op2 = trial.suggest_categorical(prefix + "op2", ops)
            else:
                in1 = trial.suggest_categorical(prefix + "in1", list(range(b + 2)))
                op1 = trial.suggest_categorical(prefix + "op1", ops)
                in2 = trial.suggest_categorical(prefix + "in2", list(range(b + 2)))
                op2 = trial.suggest_categorical(prefix + "op2", ops)
            blocks.append(Block(in1, op1, in2, op2))
        return tuple(blocks)

    def encode(self, arch: Genotype) -> str:
        self.validate(arch)
        return ";".join(
            f"{cell}=" + "|".join(f"{b.op1}~{b.input1}+{b.op2}~{b.input2}" for b in getattr(arch, cell))
            for cell in CELLS
        )

    def decode(self, text: str) -> Genotype:
        parts = text.strip().split(";")
        if len(parts) != len(CELLS):
            raise InvalidArchitecture(f"malformed architecture {_short(text)}; expected 'normal=...;reduce=...'")
        cells = []
        for cell, part in zip(CELLS, parts, strict=True):
            name, sep, body = part.partition("=")
            if name != cell or not sep:
                raise InvalidArchitecture(f"malformed cell {_short(part)}; expected '{cell}=op~i+op~j|...'")
            cells.append(tuple(_parse_block(cell, b, s) for b, s in enumerate(body.split("|"))))
        arch = Genotype(*cells)
        self.validate(arch)
        return arch

    def validate(self, arch: Genotype) -> None:
        if not isinstance(arch, Genotype):
            raise InvalidArchitecture(f"expected a Genotype, got {type(arch).__name__}")
        for cell in CELLS:
            blocks = getattr(arch, cell)
            if not isinstance(blocks, tuple) or len(blocks) != self.spec.blocks:
                count = len(blocks) if isinstance(blocks, tuple) else type(blocks).__name__
                raise InvalidArchitecture(f"{cell} cell has {count} blocks; {self.name} cells have {self.spec.blocks}")
            for b, block in enumerate(blocks):
                self._validate_block(cell, b, block)

    def _validate_block(self, cell: str, b: int, block: Block) -> None:
        if not isinstance(block, tuple) or len(block) != len(Block._fields):
            raise InvalidArchitecture(f"{cell} block {b} is {block!r}; expected Block(input1, op1, input2, op2)")
        in1, op1, in2, op2 = block
        for op in (op1, op2):
            if op not in self.spec.ops:
                raise InvalidArchitecture(
                    f"{cell} block {b}: unknown op {op!r}; valid for {self.name}: {', '.join(self.spec.ops)}"
                )
        for i in (in1, in2):
            if type(i) is not int or not 0 <= i <= b + 1:
                raise InvalidArchitecture(f"{cell} block {b}: input {i!r} out of range; valid: 0..{b + 1}")
        if self.spec.distinct_inputs and in1 == in2:
            raise InvalidArchitecture(
                f"{cell} block {b}: input {in1} used twice; {self.name} needs two distinct inputs"
            )

    def build(
        self,
        arch: Genotype,
        *,
        channels: int = 16,
        layers: int = 2,
        num_classes: int = 10,
        drop_path: float = 0.0,
        auxiliary: bool = False,
        stem_multiplier: int = 3,
        **unknown: Any,
    ) -> NetworkCIFAR:
        """The CIFAR network: stem, then [N normal cells, reduction cell] x 2, N normal cells (N = layers)."""
        self.validate(arch)
        if unknown:
            raise UserInputError(
                f"unknown build option(s) {', '.join(sorted(unknown))} for {self.name}; valid: channels, "
                "layers, num_classes, drop_path, auxiliary, stem_multiplier"
            )
        for option, value, low in (
            ("channels", channels, 1),
            ("layers", layers, 1),
            ("num_classes", num_classes, 2),
            ("stem_multiplier", stem_multiplier, 1),
        ):
            if type(value) is not int or value < low:
                raise UserInputError(f"{option} must be an integer >= {low}, got {value!r}")
        if not isinstance(drop_path, int | float) or not 0.0 <= drop_path < 1.0:
            raise UserInputError(f"drop_path must be a probability in [0, 1), got {drop_path!r}")
        return NetworkCIFAR(
            arch,
            concat_unused=self.spec.concat_unused,
            channels=channels,
            layers=layers,
            num_classes=num_classes,
            drop_path=float(drop_path),
            auxiliary=auxiliary,
            stem_multiplier=stem_multiplier,
        )


@register("darts")
def darts_space() -> NASNetSpace:
    """The DARTS cell space: the NASNet skeleton with DARTS's 8 ops and 4 intermediate nodes."""
    return NASNetSpace(op_set="darts")


def _parse_block(cell: str, b: int, text: str) -> Block:
    edges = text.split("+")
    if len(edges) != 2:
        raise InvalidArchitecture(f"{cell} block {b}: malformed block {_short(text)}; expected op~i+op~j")
    parsed = []
    for edge in edges:
        match = _EDGE.fullmatch(edge)
        if match is None:
            raise InvalidArchitecture(f"{cell} block {b}: malformed edge {_short(edge)}; expected op~input")
        parsed.append((match[1], int(match[2])))
    (op1, in1), (op2, in2) = parsed
    return Block(in1, op1, in2, op2)


# ----------------------------------------------------------------------------------------------------------
# The network


class ReLUConvBN(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int) -> None:
        super().__init__(nn.ReLU(), nn.Conv2d(c_in, c_out, kernel, stride, padding, bias=False), nn.BatchNorm2d(c_out))


class FactorizedReduce(nn.Module):
    """Halve H and W without losing half the pixels: two stride-2 1x1 convs on inputs offset by one pixel."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.relu = nn.ReLU()
        self.conv1 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.conv2 = nn.Conv2d(c_in, c_out - c_out // 2, 1, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        shifted = F.pad(x, (0, 1, 0, 1))[:, :, 1:, 1:]  # same size as x, so odd H and W work too
        return self.bn(torch.cat([self.conv1(x), self.conv2(shifted)], dim=1))


class Zero(nn.Module):
    """DARTS's `none`: zeros shaped like the op's output."""

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, :: self.stride, :: self.stride].mul(0.0)


def sep_conv(c: int, kernel: int, stride: int) -> nn.Sequential:
    """Depthwise-separable conv applied twice; only the first is strided."""
    return nn.Sequential(
        *(
            layer
            for s in (stride, 1)
            for layer in (
                nn.ReLU(),
                nn.Conv2d(c, c, kernel, s, kernel // 2, groups=c, bias=False),
                nn.Conv2d(c, c, 1, bias=False),
                nn.BatchNorm2d(c),
            )
        )
    )


def dil_conv(c: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.ReLU(),
        nn.Conv2d(c, c, kernel, stride, padding=kernel - 1, dilation=2, groups=c, bias=False),
        nn.Conv2d(c, c, 1, bias=False),
        nn.BatchNorm2d(c),
    )


def conv_1xk_kx1(c: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.ReLU(),
        nn.Conv2d(c, c, (1, kernel), stride=(1, stride), padding=(0, kernel // 2), bias=False),
        nn.Conv2d(c, c, (kernel, 1), stride=(stride, 1), padding=(kernel // 2, 0), bias=False),
        nn.BatchNorm2d(c),
    )


def skip(c: int, stride: int) -> nn.Module:
    return nn.Identity() if stride == 1 else FactorizedReduce(c, c)


# Every op maps C channels to C channels; (channels, stride) -> module.
OPS: dict[str, Callable[[int, int], nn.Module]] = {
    "none": lambda c, s: Zero(s),
    "identity": skip,
    "skip_connect": skip,
    "avg_pool_3x3": lambda c, s: nn.AvgPool2d(3, s, padding=1, count_include_pad=False),
    "max_pool_3x3": lambda c, s: nn.MaxPool2d(3, s, padding=1),
    "max_pool_5x5": lambda c, s: nn.MaxPool2d(5, s, padding=2),
    "max_pool_7x7": lambda c, s: nn.MaxPool2d(7, s, padding=3),
    "conv_1x1": lambda c, s: ReLUConvBN(c, c, 1, s, 0),
    "conv_3x3": lambda c, s: ReLUConvBN(c, c, 3, s, 1),
    "conv_1x3_3x1": lambda c, s: conv_1xk_kx1(c, 3, s),
    "conv_1x7_7x1": lambda c, s: conv_1xk_kx1(c, 7, s),
    "dil_conv_3x3": lambda c, s: dil_conv(c, 3, s),
    "dil_conv_5x5": lambda c, s: dil_conv(c, 5, s),
    "sep_conv_3x3": lambda c, s: sep_conv(c, 3, s),
    "sep_conv_5x5": lambda c, s: sep_conv(c, 5, s),
    "sep_conv_7x7": lambda c, s: sep_conv(c, 7, s),
}


def drop_path_(x: torch.Tensor, p: float) -> torch.Tensor:
    """Zero whole samples with probability p, scaling the kept ones by 1 / (1 - p)."""
    keep = 1.0 - p
    mask = torch.empty(x.size(0), 1, 1, 1, dtype=x.dtype, device=x.device).bernoulli_(keep)
    return x / keep * mask


class Cell(nn.Module):
    """Preprocess both inputs to C channels, run the blocks, concatenate `concat` states."""

    def __init__(
        self,
        blocks: Sequence[Block],
        concat_unused: bool,
        c_prev_prev: int,
        c_prev: int,
        c: int,
        reduction: bool,
        reduction_prev: bool,
    ) -> None:
        super().__init__()
        self.preprocess0 = FactorizedReduce(c_prev_prev, c) if reduction_prev else ReLUConvBN(c_prev_prev, c, 1, 1, 0)
        self.preprocess1 = ReLUConvBN(c_prev, c, 1, 1, 0)
        self.inputs = [(block.input1, block.input2) for block in blocks]
        self.ops = nn.ModuleList(
            OPS[op](c, 2 if reduction and i < 2 else 1)
            for block in blocks
            for i, op in ((block.input1, block.op1), (block.input2, block.op2))
        )
        self.concat = concat_states(blocks, concat_unused)
        self.out_channels = c * len(self.concat)

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, drop_prob: float) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for b, (in1, in2) in enumerate(self.inputs):
            h = []
            for op, i in ((self.ops[2 * b], in1), (self.ops[2 * b + 1], in2)):
                out = op(states[i])
                if self.training and drop_prob > 0.0 and not isinstance(op, nn.Identity | Zero):
                    out = drop_path_(out, drop_prob)
                h.append(out)
            states.append(h[0] + h[1])
        return torch.cat([states[i] for i in self.concat], dim=1)


class AuxiliaryHeadCIFAR(nn.Sequential):
    """Classifier on the features after the second reduction cell (DARTS: 8x8 on CIFAR), pooled to 2x2 whatever
    the image size."""

    def __init__(self, c: int, num_classes: int) -> None:
        super().__init__(
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),  # (B, c, 2, 2)
            nn.Conv2d(c, 128, 1, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU(),
            nn.Conv2d(128, 768, 2, bias=False),  # (B, 768, 1, 1)
            nn.BatchNorm2d(768),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(768, num_classes),
        )


class NetworkCIFAR(nn.Module):
    """Stem, 3N + 2 cells with the channels doubled at each reduction, global pooling, linear classifier.

    `drop_path` is the drop-path probability used in training mode; a trainer may change it between epochs.
    """

    def __init__(
        self,
        genotype: Genotype,
        *,
        concat_unused: bool,
        channels: int,
        layers: int,
        num_classes: int,
        drop_path: float,
        auxiliary: bool,
        stem_multiplier: int,
    ) -> None:
        super().__init__()
        self.drop_path = drop_path
        c_stem = stem_multiplier * channels
        self.stem = nn.Sequential(nn.Conv2d(3, c_stem, 3, padding=1, bias=False), nn.BatchNorm2d(c_stem))
        c_prev_prev, c_prev, c = c_stem, c_stem, channels
        self.cells = nn.ModuleList()
        reduction_prev = False
        self.aux_after = 2 * layers + 1  # index of the second reduction cell
        for k, reduction in enumerate(([False] * layers + [True]) * 2 + [False] * layers):
            c = 2 * c if reduction else c
            blocks = genotype.reduce if reduction else genotype.normal
            cell = Cell(blocks, concat_unused, c_prev_prev, c_prev, c, reduction, reduction_prev)
            self.cells.append(cell)
            c_prev_prev, c_prev, reduction_prev = c_prev, cell.out_channels, reduction
            if k == self.aux_after:
                aux_channels = c_prev
        self.auxiliary_head = AuxiliaryHeadCIFAR(aux_channels, num_classes) if auxiliary else None
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_prev, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        s0 = s1 = self.stem(x)  # (B, stem_multiplier * C, H, W)
        aux_logits = None
        for k, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, self.drop_path)
            if k == self.aux_after and self.auxiliary_head is not None and self.training:
                aux_logits = self.auxiliary_head(s1)
        logits = self.classifier(torch.flatten(self.global_pooling(s1), 1))
        return logits if aux_logits is None else (logits, aux_logits)
