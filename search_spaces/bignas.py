"""The BigNAS elastic MBConv space (arXiv 2003.11142) and its weight-sharing supernet; every child is a plain network.

An architecture chooses the input resolution, the stem and head widths and, per stage, its width (steps of 8) and
depth, and per block a depthwise kernel and an expansion ratio. It is written
``res32|stem24|24:k3e1,k5e1|32:k3e6,k7e4|...|head320``: one ``width:k<kernel>e<expansion>,...`` part per stage with
one ``k..e..`` per block (so the depth is the number of blocks). Blocks are MBConv (EfficientNet / BigNAS): 1x1
expand, depthwise kxk, squeeze-and-excitation (ratio 0.25 of the block's input channels), 1x1 project, BN after every
conv, SiLU (swish); the stride of a stage is on its first block's depthwise conv, and a block is residual when its
stride is 1 and its input and output widths are equal. A built network first resizes its input bilinearly to the
architecture's resolution (when the sizes differ), so it takes ``input_shape`` images and its ONNX file is
self-contained.

`ElasticSupernet` holds the largest child's weights; a child uses the first channels of every tensor, the centred
kxk window of every depthwise kernel and the first ``depth`` blocks of every stage (BN weights and running statistics
sliced alike). `ElasticSupernet.extract` copies a child out as the same plain network that `BigNASSpace.build` makes.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from nas_ground.errors import UserInputError
from search_spaces import register
from search_spaces.base import InvalidArchitecture

if TYPE_CHECKING:
    import optuna

WIDTH_STEP = 8
SE_RATIO = 0.25  # squeeze-and-excitation width, as a share of the block's input channels (EfficientNet)


@dataclass(frozen=True)
class StageSpec:
    """The elastic ranges of one MBConv stage; widths run from ``widths[0]`` to ``widths[1]`` in steps of 8."""

    widths: tuple[int, int]
    depths: tuple[int, int]
    kernels: tuple[int, ...]
    expansions: tuple[int, ...]  # (1,) means no expand conv: MobileNetV2's first stage
    stride: int

    @property
    def width_choices(self) -> tuple[int, ...]:
        return tuple(range(self.widths[0], self.widths[1] + 1, WIDTH_STEP))

    @property
    def depth_choices(self) -> tuple[int, ...]:
        return tuple(range(self.depths[0], self.depths[1] + 1))


@dataclass(frozen=True)
class BigNASConfig:
    """The fixed skeleton of a BigNAS space and the ranges of its elastic choices."""

    resolutions: tuple[int, ...]
    stem: tuple[int, int]  # width range, steps of 8
    stem_stride: int
    stages: tuple[StageSpec, ...]
    head: tuple[int, int]  # width range of the final 1x1 conv, steps of 8
    num_classes: int

    @property
    def stem_choices(self) -> tuple[int, ...]:
        return tuple(range(self.stem[0], self.stem[1] + 1, WIDTH_STEP))

    @property
    def head_choices(self) -> tuple[int, ...]:
        return tuple(range(self.head[0], self.head[1] + 1, WIDTH_STEP))


# CIFAR scale: 32x32 images, stem stride 1, feature maps 32 -> 32 -> 16 -> 8 -> 4 -> 4.
CIFAR = BigNASConfig(
    resolutions=(24, 28, 32),
    stem=(16, 24),
    stem_stride=1,
    stages=(
        StageSpec((16, 24), (1, 2), (3, 5, 7), (1,), 1),
        StageSpec((24, 32), (2, 3), (3, 5, 7), (3, 4, 6), 2),
        StageSpec((40, 48), (2, 3), (3, 5, 7), (3, 4, 6), 2),
        StageSpec((80, 96), (2, 4), (3, 5, 7), (3, 4, 6), 2),
        StageSpec((112, 128), (2, 4), (3, 5, 7), (3, 4, 6), 1),
    ),
    head=(256, 320),
    num_classes=10,
)
# The BigNAS ImageNet ranges (arXiv 2003.11142); feature maps r/2 -> r/2 -> r/4 -> r/8 -> r/16 -> r/16 -> r/32 -> r/32.
IMAGENET = BigNASConfig(
    resolutions=(192, 224, 256, 288, 320),
    stem=(32, 40),
    stem_stride=2,
    stages=(
        StageSpec((16, 24), (1, 2), (3,), (1,), 1),
        StageSpec((24, 32), (2, 3), (3,), (6,), 2),
        StageSpec((40, 48), (2, 3), (3, 5), (6,), 2),
        StageSpec((80, 88), (2, 4), (3, 5), (6,), 2),
        StageSpec((112, 128), (2, 6), (3, 5), (6,), 1),
        StageSpec((192, 216), (2, 6), (3, 5), (6,), 2),
        StageSpec((320, 352), (1, 2), (3, 5), (6,), 1),
    ),
    head=(1280, 1408),
    num_classes=1000,
)


class Block(NamedTuple):
    """One MBConv block's choices."""

    kernel: int
    expansion: int


@dataclass(frozen=True)
class Stage:
    """One stage's choices: its output width and its blocks (the depth is ``len(blocks)``)."""

    width: int
    blocks: tuple[Block, ...]

    @property
    def depth(self) -> int:
        return len(self.blocks)


@dataclass(frozen=True)
class BigNASArch:
    """One child of the space."""

    resolution: int
    stem: int
    stages: tuple[Stage, ...]
    head: int


_STAGE = re.compile(r"(\d+):(k\d+e\d+(?:,k\d+e\d+)*)")
_BLOCK = re.compile(r"k(\d+)e(\d+)")


def _short(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def _valid(values: Iterable[int]) -> str:
    return ", ".join(map(str, values))


class BigNASSpace:
    """Elastic resolution, widths, depths, kernels and expansions of an MBConv network (see the module docstring)."""

    def __init__(self, name: str, config: BigNASConfig) -> None:
        self.name = name
        self.config = config
        side = max(config.resolutions)
        self.input_shape: tuple[int, ...] = (3, side, side)

    def largest(self) -> BigNASArch:
        cfg = self.config
        return BigNASArch(
            max(cfg.resolutions),
            cfg.stem[1],
            tuple(Stage(s.widths[1], (Block(max(s.kernels), max(s.expansions)),) * s.depths[1]) for s in cfg.stages),
            cfg.head[1],
        )

    def smallest(self) -> BigNASArch:
        cfg = self.config
        return BigNASArch(
            min(cfg.resolutions),
            cfg.stem[0],
            tuple(Stage(s.widths[0], (Block(min(s.kernels), min(s.expansions)),) * s.depths[0]) for s in cfg.stages),
            cfg.head[0],
        )

    def sample(self, rng: random.Random) -> BigNASArch:
        """Uniform over each choice: resolution, stem, head, then per stage width, depth and each block."""
        cfg = self.config
        stages = []
        for s in cfg.stages:
            width, depth = rng.choice(s.width_choices), rng.choice(s.depth_choices)
            stages.append(
                Stage(width, tuple(Block(rng.choice(s.kernels), rng.choice(s.expansions)) for _ in range(depth)))
            )
        return BigNASArch(
            rng.choice(cfg.resolutions), rng.choice(cfg.stem_choices), tuple(stages), rng.choice(cfg.head_choices)
        )

    def mutate(self, arch: BigNASArch, rng: random.Random) -> BigNASArch:
        """Change one choice, picked uniformly among those with alternatives, to another allowed value. A deeper stage
        repeats its last block's kernel and expansion; a shallower one drops its last blocks."""
        self.validate(arch)
        cfg = self.config
        slots: list[tuple[str, int, int, list[int]]] = []  # (field, stage, block, alternatives)
        for field, current, choices in (
            ("resolution", arch.resolution, cfg.resolutions),
            ("stem", arch.stem, cfg.stem_choices),
            ("head", arch.head, cfg.head_choices),
        ):
            slots.append((field, -1, -1, [c for c in choices if c != current]))
        for i, (stage, spec) in enumerate(zip(arch.stages, cfg.stages, strict=True)):
            slots.append(("width", i, -1, [w for w in spec.width_choices if w != stage.width]))
            slots.append(("depth", i, -1, [d for d in spec.depth_choices if d != stage.depth]))
            for j, block in enumerate(stage.blocks):
                slots.append(("kernel", i, j, [k for k in spec.kernels if k != block.kernel]))
                slots.append(("expansion", i, j, [e for e in spec.expansions if e != block.expansion]))
        field, i, j, alternatives = rng.choice([slot for slot in slots if slot[3]])
        value = rng.choice(alternatives)
        if i < 0:
            changes: dict[str, Any] = {field: value}
            return replace(arch, **changes)
        stage = arch.stages[i]
        if field == "width":
            stage = Stage(value, stage.blocks)
        elif field == "depth":
            blocks = stage.blocks[:value] + (stage.blocks[-1],) * (value - stage.depth)
            stage = Stage(stage.width, blocks)
        else:
            blocks_list = list(stage.blocks)
            blocks_list[j] = blocks_list[j]._replace(**{field: value})
            stage = Stage(stage.width, tuple(blocks_list))
        return BigNASArch(arch.resolution, arch.stem, arch.stages[:i] + (stage,) + arch.stages[i + 1 :], arch.head)

    def suggest(self, trial: optuna.Trial) -> BigNASArch:
        """A static Optuna space: ``resolution``, ``stem``, ``head``, ``stage{i}_width``, ``stage{i}_depth`` and
        ``stage{i}_block{j}_kernel`` / ``_expansion`` for every block up to the stage's largest depth (a child uses the
        first ``depth``); stages and blocks are numbered from 1, and choices with one value are not asked."""

        def ask(name: str, choices: tuple[int, ...]) -> int:
            return choices[0] if len(choices) == 1 else int(trial.suggest_categorical(name, choices))

        cfg = self.config
        resolution, stem, head = (
            ask("resolution", cfg.resolutions),
            ask("stem", cfg.stem_choices),
            ask("head", cfg.head_choices),
        )
        stages = []
        for i, s in enumerate(cfg.stages, start=1):
            width, depth = ask(f"stage{i}_width", s.width_choices), ask(f"stage{i}_depth", s.depth_choices)
            blocks = tuple(
                Block(ask(f"stage{i}_block{j}_kernel", s.kernels), ask(f"stage{i}_block{j}_expansion", s.expansions))
                for j in range(1, s.depths[1] + 1)
            )
            stages.append(Stage(width, blocks[:depth]))
        return BigNASArch(resolution, stem, tuple(stages), head)

    def encode(self, arch: BigNASArch) -> str:
        self.validate(arch)
        stages = [f"{s.width}:" + ",".join(f"k{b.kernel}e{b.expansion}" for b in s.blocks) for s in arch.stages]
        return "|".join([f"res{arch.resolution}", f"stem{arch.stem}", *stages, f"head{arch.head}"])

    def decode(self, text: str) -> BigNASArch:
        parts = text.strip().split("|")
        n = len(self.config.stages)
        if len(parts) != n + 3:
            raise InvalidArchitecture(
                f"{self.name} string {_short(text)} has {len(parts)} parts joined by '|'; expected {n + 3}: "
                f"res<r>|stem<w>|{n} stages written width:k<k>e<e>,...|head<w>"
            )
        resolution = _parse_int(parts[0], "res")
        stem = _parse_int(parts[1], "stem")
        head = _parse_int(parts[-1], "head")
        stages = []
        for i, part in enumerate(parts[2:-1], start=1):
            match = _STAGE.fullmatch(part)
            if match is None:
                raise InvalidArchitecture(f"malformed stage {i} {_short(part)}; expected width:k<k>e<e>,k<k>e<e>,...")
            blocks = tuple(Block(int(k), int(e)) for k, e in _BLOCK.findall(match[2]))
            stages.append(Stage(int(match[1]), blocks))
        arch = BigNASArch(resolution, stem, tuple(stages), head)
        self.validate(arch)
        return arch

    def validate(self, arch: BigNASArch) -> None:
        cfg = self.config
        if not isinstance(arch, BigNASArch):
            raise InvalidArchitecture(f"expected a BigNASArch, got {type(arch).__name__}")
        for what, value, choices in (
            ("resolution", arch.resolution, cfg.resolutions),
            ("stem width", arch.stem, cfg.stem_choices),
            ("head width", arch.head, cfg.head_choices),
        ):
            _check(value, choices, f"{self.name} {what}")
        if not isinstance(arch.stages, tuple) or len(arch.stages) != len(cfg.stages):
            count = len(arch.stages) if isinstance(arch.stages, tuple) else type(arch.stages).__name__
            raise InvalidArchitecture(f"{self.name} has {len(cfg.stages)} stages, got {count}")
        for i, (stage, spec) in enumerate(zip(arch.stages, cfg.stages, strict=True), start=1):
            if not isinstance(stage, Stage) or not isinstance(stage.blocks, tuple):
                raise InvalidArchitecture(f"{self.name} stage {i} is {stage!r}; expected Stage(width, blocks)")
            _check(stage.width, spec.width_choices, f"{self.name} stage {i} width")
            _check(stage.depth, spec.depth_choices, f"{self.name} stage {i} depth")
            for j, block in enumerate(stage.blocks, start=1):
                if not isinstance(block, tuple) or len(block) != 2:
                    raise InvalidArchitecture(f"{self.name} stage {i} block {j} is {block!r}; expected Block(k, e)")
                _check(block[0], spec.kernels, f"{self.name} stage {i} block {j} kernel")
                _check(block[1], spec.expansions, f"{self.name} stage {i} block {j} expansion")

    def build(
        self, arch: BigNASArch, *, num_classes: int | None = None, dropout: float = 0.0, **unknown: Any
    ) -> BigNASNetwork:
        """The plain network of ``arch`` (freshly initialised); ``dropout`` is before the classifier."""
        self.validate(arch)
        return BigNASNetwork(arch, self.config, *self._options(num_classes, dropout, unknown))

    def supernet(
        self, *, num_classes: int | None = None, dropout: float = 0.0, zero_init_residual: bool = True, **unknown: Any
    ) -> ElasticSupernet:
        """The weight-sharing supernet, active on the largest child."""
        n, p = self._options(num_classes, dropout, unknown)
        return ElasticSupernet(self, num_classes=n, dropout=p, zero_init_residual=zero_init_residual)

    def _options(self, num_classes: int | None, dropout: float, unknown: dict[str, Any]) -> tuple[int, float]:
        if unknown:
            raise UserInputError(
                f"unknown {self.name} build option {sorted(unknown)[0]!r}; valid: num_classes, dropout"
            )
        n = self.config.num_classes if num_classes is None else num_classes
        if type(n) is not int or n < 2:
            raise UserInputError(f"num_classes={n!r} must be an integer >= 2")
        if not isinstance(dropout, int | float) or not 0.0 <= dropout < 1.0:
            raise UserInputError(f"dropout={dropout!r} must be in [0, 1)")
        return n, float(dropout)


def _parse_int(part: str, prefix: str) -> int:
    if not (part.startswith(prefix) and part[len(prefix) :].isdigit()):
        raise InvalidArchitecture(f"malformed part {_short(part)}; expected {prefix}<integer>")
    return int(part[len(prefix) :])


def _check(value: Any, choices: tuple[int, ...], what: str) -> None:
    if type(value) is not int or value not in choices:
        raise InvalidArchitecture(f"{what} {value!r} is not allowed; valid: {_valid(choices)}")


def _space_factory(name: str, config: BigNASConfig) -> Any:
    def factory(**options: Any) -> BigNASSpace:
        if options:
            raise UserInputError(f"unknown {name} space option {sorted(options)[0]!r}; the space takes none")
        return BigNASSpace(name, config)

    factory.__doc__ = f"The {name!r} space."
    return factory


register("bignas")(_space_factory("bignas", CIFAR))
register("bignas-imagenet")(_space_factory("bignas-imagenet", IMAGENET))


# ----------------------------------------------------------------------------------------------------------
# The network


class ConvBN(nn.Sequential):
    """Conv (no bias), BN, then SiLU when ``act``."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(c_in, c_out, kernel, stride, padding=kernel // 2, groups=groups, bias=False),
            nn.BatchNorm2d(c_out),
        ]
        if act:
            layers.append(nn.SiLU())
        super().__init__(*layers)

    @property
    def bn(self) -> nn.BatchNorm2d:
        bn = self[1]
        assert isinstance(bn, nn.BatchNorm2d)
        return bn


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, squeezed: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, squeezed, 1)
        self.expand = nn.Conv2d(squeezed, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.expand(F.silu(self.reduce(x.mean((2, 3), keepdim=True))))  # (B, C, 1, 1)
        return x * scale.sigmoid()


class MBConv(nn.Module):
    """Inverted residual: [1x1 expand] -> depthwise kxk (stride) -> SE -> 1x1 project (BN, no activation)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, expansion: int, stride: int) -> None:
        super().__init__()
        mid = c_in * expansion
        self.expand = ConvBN(c_in, mid, 1) if expansion != 1 else nn.Identity()
        self.depthwise = ConvBN(mid, mid, kernel, stride, groups=mid)
        self.se = SqueezeExcite(mid, max(1, int(c_in * SE_RATIO)))
        self.project = ConvBN(mid, c_out, 1, act=False)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.se(self.depthwise(self.expand(x))))
        return x + out if self.residual else out


class BigNASNetwork(nn.Module):
    """Resize to the resolution, stem conv3x3, the MBConv stages, 1x1 head conv, global average pool, linear."""

    def __init__(self, arch: BigNASArch, config: BigNASConfig, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.resolution = arch.resolution
        self.stem = ConvBN(3, arch.stem, 3, config.stem_stride)
        stages = []
        c = arch.stem
        for stage, spec in zip(arch.stages, config.stages, strict=True):
            blocks = []
            for j, block in enumerate(stage.blocks):
                blocks.append(MBConv(c, stage.width, block.kernel, block.expansion, spec.stride if j == 0 else 1))
                c = stage.width
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.head = ConvBN(c, arch.head, 1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(arch.head, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.resolution, self.resolution):
            x = F.interpolate(x, size=(self.resolution, self.resolution), mode="bilinear", align_corners=False)
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        x = self.head(x).mean((2, 3))  # (B, head)
        return self.classifier(self.dropout(x))


# ----------------------------------------------------------------------------------------------------------
# The supernet


def _slice_to(full: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """A view of ``full`` with ``shape``: the first entries of every dim, but the centred window of a conv kernel's
    spatial dims (dims 2 and 3 of a 4-D weight)."""
    out = full
    for dim, (have, want) in enumerate(zip(full.shape, shape, strict=True)):
        if want > have:
            raise ValueError(f"cannot slice {tuple(full.shape)} to {tuple(shape)}")
        if want < have:
            start = (have - want) // 2 if full.dim() == 4 and dim >= 2 else 0
            out = out.narrow(dim, start, want)
    return out


class ElasticSupernet(nn.Module):
    """The largest child's weights (``network``), shared by every child; `set_active` picks the child that `forward`
    runs. The active child is a weightless skeleton (meta device) run on views of the shared tensors, so gradients
    and BN running-statistic updates reach the shared tensors; its modules follow the train/eval mode, BN momentum
    and dropout rate of the shared modules of the same name (BigNAS drops out on the largest child only: set
    ``network.dropout.p`` per child). `extract` copies the views into a real network.

    With ``zero_init_residual`` the last BN scale of every block after the first of each stage (the blocks that are
    residual in every child) starts at 0, as in BigNAS.
    """

    _active: BigNASArch
    _skeleton: BigNASNetwork
    _mirrors: list[tuple[nn.Module, nn.Module]]

    def __init__(
        self, space: BigNASSpace, *, num_classes: int, dropout: float = 0.0, zero_init_residual: bool = True
    ) -> None:
        super().__init__()
        self.space = space
        self.num_classes = num_classes
        self.dropout = dropout
        self.network = BigNASNetwork(space.largest(), space.config, num_classes, dropout)
        if zero_init_residual:
            for stage in self.network.stages:
                for block in list(stage.children())[1:]:
                    assert isinstance(block, MBConv)
                    nn.init.zeros_(block.project.bn.weight)
        self.set_active(space.largest())

    @property
    def active(self) -> BigNASArch:
        return self._active

    def set_active(self, arch: BigNASArch) -> None:
        self.space.validate(arch)
        with torch.device("meta"):
            skeleton = self._network(arch)
        self._active = arch
        # Not a submodule: the skeleton's meta tensors must stay out of the state dict.
        object.__setattr__(self, "_skeleton", skeleton)
        shared = dict(self.network.named_modules())
        self._mirrors = [(m, shared[name]) for name, m in skeleton.named_modules()]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for mine, theirs in self._mirrors:
            mine.training = theirs.training
            if isinstance(mine, _BatchNorm) and isinstance(theirs, _BatchNorm):
                mine.momentum = theirs.momentum
            elif isinstance(mine, nn.Dropout) and isinstance(theirs, nn.Dropout):
                mine.p = theirs.p
        return functional_call(self._skeleton, self._child_tensors(self._skeleton), (x,), strict=True)

    def extract(self, arch: BigNASArch | None = None) -> BigNASNetwork:
        """A standalone copy of ``arch`` (default: the active child) with the supernet's weights and BN statistics,
        in the supernet's train/eval mode."""
        if arch is None:
            arch = self.active
        self.space.validate(arch)
        with torch.device("meta"):
            child = self._network(arch)
        tensors = {name: t.detach().clone() for name, t in self._child_tensors(child).items()}
        child.load_state_dict(tensors, assign=True)
        return child.train(self.training)

    def _network(self, arch: BigNASArch) -> BigNASNetwork:
        return BigNASNetwork(arch, self.space.config, self.num_classes, self.dropout)

    def _child_tensors(self, child: nn.Module) -> dict[str, torch.Tensor]:
        """Every parameter and buffer of ``child``, as a view of the shared tensor of the same name."""
        full = self.network.state_dict(keep_vars=True)
        return {name: _slice_to(full[name], t.shape) for name, t in child.state_dict(keep_vars=True).items()}


def recalibrate_bn(model: nn.Module, batches: Iterable[torch.Tensor | tuple[Any, ...] | list[Any]]) -> None:
    """Reset every BN layer's running statistics and re-estimate them as the plain average over ``batches`` (images,
    or (images, labels) pairs), in train mode without gradients; nothing but BN ``running_mean``, ``running_var`` and
    ``num_batches_tracked`` changes. A supernet is recalibrated for its active child (the statistics of the channels
    that child does not use are left reset)."""
    norms = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    modes = {m: m.training for m in model.modules()}
    momenta = [m.momentum for m in norms]
    try:
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative moving average
        model.train()
        with torch.no_grad():
            for batch in batches:
                model(batch[0] if isinstance(batch, tuple | list) else batch)
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        for module, mode in modes.items():
            module.training = mode
