"""NAS-Bench-201 cells (6 edges x 5 ops), the official string format, and the benchmark's network skeleton."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from nas_ground.errors import UserInputError
from search_spaces import register
from search_spaces.base import InvalidArchitecture

if TYPE_CHECKING:
    import optuna

OPS: tuple[str, ...] = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
# Edge k connects node EDGES[k][0] -> node EDGES[k][1], in the order of the official string.
EDGES: tuple[tuple[int, int], ...] = ((0, 1), (0, 2), (1, 2), (0, 3), (1, 3), (2, 3))

Cell = tuple[str, str, str, str, str, str]  # one op per edge, in EDGES order


def _edge_name(k: int) -> str:
    i, j = EDGES[k]
    return f"edge_{i}_{j}"


@register("nb201")
class NB201Space:
    """The NAS-Bench-201 topology space: 5**6 = 15,625 cells, written ``|op~0|+|op~0|op~1|+|op~0|op~1|op~2|``."""

    name = "nb201"
    input_shape = (3, 32, 32)

    def sample(self, rng: random.Random) -> Cell:
        return tuple(rng.choice(OPS) for _ in EDGES)  # type: ignore[return-value]

    def distinct_archs(self) -> list[Cell]:
        """One cell per network (isomorphism class of the benchmark table in the data directory): 6,466 cells."""
        from nas_ground.data import resolve_data_dir
        from search_spaces.nb201_supernet import distinct_cells

        return distinct_cells(resolve_data_dir(None) / "nb201" / "nb201.csv")

    def fair_archs(self, rng: random.Random) -> list[Cell]:
        """Strict fairness (FairNAS, arXiv 1907.01845): ``len(OPS)`` cells in which every edge takes every op exactly
        once (an independent random permutation of the ops per edge)."""
        columns = [rng.sample(OPS, len(OPS)) for _ in EDGES]
        return [tuple(col[i] for col in columns) for i in range(len(OPS))]  # type: ignore[misc]

    def mutate(self, arch: Cell, rng: random.Random) -> Cell:
        self.validate(arch)
        k = rng.randrange(len(EDGES))
        cell = list(arch)
        cell[k] = rng.choice([op for op in OPS if op != arch[k]])
        return tuple(cell)  # type: ignore[return-value]

    def suggest(self, trial: optuna.Trial) -> Cell:
        return tuple(trial.suggest_categorical(_edge_name(k), OPS) for k in range(len(EDGES)))  # type: ignore[return-value]

    def encode(self, arch: Cell) -> str:
        self.validate(arch)
        nodes = []
        for j in (1, 2, 3):
            parts = [f"{arch[k]}~{EDGES[k][0]}" for k in range(len(EDGES)) if EDGES[k][1] == j]
            nodes.append("|" + "|".join(parts) + "|")
        return "+".join(nodes)

    def decode(self, text: str) -> Cell:
        nodes = text.strip().split("+")
        if len(nodes) != 3:
            raise InvalidArchitecture(f"NB201 string {text!r} must have 3 nodes joined by '+', got {len(nodes)}")
        ops: list[str] = []
        for j, node in enumerate(nodes, start=1):
            if not (node.startswith("|") and node.endswith("|")):
                raise InvalidArchitecture(f"NB201 node {node!r} must be written |op~i|...|")
            edges = node[1:-1].split("|")
            if len(edges) != j:
                raise InvalidArchitecture(f"NB201 node {node!r} must have {j} edge(s), got {len(edges)}")
            for i, edge in enumerate(edges):
                op, sep, src = edge.partition("~")
                if not sep or src != str(i):
                    raise InvalidArchitecture(f"NB201 edge {edge!r} must read op~{i}")
                if op not in OPS:
                    raise InvalidArchitecture(f"unknown NB201 op {op!r} in {edge!r}; valid: {', '.join(OPS)}")
                ops.append(op)
        return tuple(ops)  # type: ignore[return-value]

    def validate(self, arch: Cell) -> None:
        if not isinstance(arch, tuple) or len(arch) != len(EDGES):
            raise InvalidArchitecture(f"NB201 cell must be a tuple of {len(EDGES)} ops, got {arch!r}")
        for op in arch:
            if op not in OPS:
                raise InvalidArchitecture(f"unknown NB201 op {op!r}; valid: {', '.join(OPS)}")

    def build(
        self,
        arch: Cell,
        *,
        channels: int = 16,
        cells_per_stage: int = 5,
        num_classes: int = 10,
        **unknown: Any,
    ) -> nn.Module:
        self.validate(arch)
        check_skeleton("build", channels, cells_per_stage, num_classes, unknown)
        return NB201Network(arch, channels, cells_per_stage, num_classes)

    def supernet(self, **options: Any) -> nn.Module:
        """The SPOS weight-sharing supernet of the skeleton (options as `build`): `nb201_supernet.NB201Supernet`."""
        from search_spaces.nb201_supernet import NB201Supernet

        return NB201Supernet(**options)


def check_skeleton(what: str, channels: int, cells_per_stage: int, num_classes: int, unknown: dict[str, Any]) -> None:
    """Raise `UserInputError` on an unknown option or an out-of-range value of a ``what`` (build, supernet)."""
    if unknown:
        bad = sorted(unknown)[0]
        raise UserInputError(f"unknown NB201 {what} option {bad!r}; valid: channels, cells_per_stage, num_classes")
    for key, value, low in (("channels", channels, 1), ("cells_per_stage", cells_per_stage, 1)):
        if value < low:
            raise UserInputError(f"NB201 {key}={value} must be >= {low}")
    if num_classes < 2:
        raise UserInputError(f"num_classes={num_classes} must be >= 2")


class ReLUConvBN(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int) -> None:
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_out, kernel, stride, padding=kernel // 2, bias=False),
            nn.BatchNorm2d(c_out),
        )


class Zero(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mul(0.0)


def make_op(op: str, c: int) -> nn.Module:
    """The module of one edge op at ``c`` channels (stride 1; only the two convs hold weights)."""
    if op == "none":
        return Zero()
    if op == "skip_connect":
        return nn.Identity()
    if op == "nor_conv_1x1":
        return ReLUConvBN(c, c, 1, 1)
    if op == "nor_conv_3x3":
        return ReLUConvBN(c, c, 3, 1)
    return nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)


class InferCell(nn.Module):
    """Node j = sum over i < j of op_ij(node i); the cell's output is node 3."""

    def __init__(self, arch: Cell, c: int) -> None:
        super().__init__()
        self.edges = nn.ModuleList(make_op(op, c) for op in arch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nodes = [x]
        for j in (1, 2, 3):
            nodes.append(sum(self.edges[k](nodes[i]) for k, (i, t) in enumerate(EDGES) if t == j))  # type: ignore[arg-type]
        return nodes[3]


class ResNetBasicBlock(nn.Module):
    """The benchmark's stride-2 reduction block: two ReLU-Conv-BN plus an avg-pool + 1x1 conv shortcut."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv_a = ReLUConvBN(c_in, c_out, 3, 2)
        self.conv_b = ReLUConvBN(c_out, c_out, 3, 1)
        self.downsample = nn.Sequential(
            nn.AvgPool2d(kernel_size=2, stride=2, padding=0),
            nn.Conv2d(c_in, c_out, kernel_size=1, stride=1, padding=0, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.downsample(x) + self.conv_b(self.conv_a(x))


class NB201Network(nn.Module):
    """Stem conv3x3 + BN; 3 stages of N cells at C, 2C, 4C joined by reduction blocks; BN-ReLU, GAP, linear."""

    def __init__(self, arch: Cell, channels: int, cells_per_stage: int, num_classes: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels))
        layers: list[nn.Module] = []
        c = channels
        for stage in range(3):
            if stage > 0:
                layers.append(ResNetBasicBlock(c, 2 * c))
                c *= 2
            layers.extend(InferCell(arch, c) for _ in range(cells_per_stage))
        self.cells = nn.Sequential(*layers)
        self.lastact = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(inplace=True))
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.lastact(self.cells(self.stem(x)))
        return self.classifier(self.global_pooling(out).flatten(1))
