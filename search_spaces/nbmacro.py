"""NAS-Bench-Macro: 8 searchable MobileNetV2-style layers x {identity, MBConv k3 t3, MBConv k5 t6}, written as the
benchmark writes them (``"22212220"``: one digit per layer), with the benchmark's network skeleton."""

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

    from search_spaces.nbmacro_supernet import MacroSupernet

# Digit -> (kernel, expansion); 0 is the identity.
CHOICES: dict[int, tuple[int, int] | None] = {0: None, 1: (3, 3), 2: (5, 6)}
STAGES: tuple[int, ...] = (2, 3, 3)  # searchable layers per stage; each stage's first layer has stride 2
STAGE_CHANNELS: tuple[int, ...] = (64, 128, 256)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
LAYERS = sum(STAGES)

MacroArch = tuple[int, ...]  # one choice digit per searchable layer


def stage_slices() -> list[slice]:
    out, start = [], 0
    for n in STAGES:
        out.append(slice(start, start + n))
        start += n
    return out


def canonical(arch: MacroArch) -> MacroArch:
    """The one string of an equal network: inside each stage, the identities after its stride-2 first layer
    (no-ops) moved to the stage's end."""
    out: list[int] = []
    for part in stage_slices():
        first, rest = arch[part][0], arch[part][1:]
        kept = [c for c in rest if c != 0]
        out += [first, *kept, *([0] * (len(rest) - len(kept)))]
    return tuple(out)


@register("nbmacro")
class NBMacroSpace:
    """The NAS-Bench-Macro space: 3**8 = 6,561 strings, 3,969 distinct networks (`canonical`).

    ``encode`` writes the canonical string, so two strings of one network encode alike; ``decode`` accepts any of
    the 6,561 strings."""

    name = "nbmacro"
    input_shape = (3, 32, 32)

    def largest(self) -> MacroArch:
        """Every layer MBConv k5 t6."""
        return (2,) * LAYERS

    def smallest(self) -> MacroArch:
        """Every layer the identity (a 1x1 stride-2 projection at each stage's first layer)."""
        return (0,) * LAYERS

    def sample(self, rng: random.Random) -> MacroArch:
        return canonical(tuple(rng.choice(tuple(CHOICES)) for _ in range(LAYERS)))

    def mutate(self, arch: MacroArch, rng: random.Random) -> MacroArch:
        self.validate(arch)
        while True:
            k = rng.randrange(LAYERS)
            cand = list(arch)
            cand[k] = rng.choice([c for c in CHOICES if c != arch[k]])
            new = canonical(tuple(cand))
            if new != canonical(arch):
                return new

    def suggest(self, trial: optuna.Trial) -> MacroArch:
        return canonical(tuple(int(trial.suggest_categorical(f"layer_{k}", tuple(CHOICES))) for k in range(LAYERS)))

    def encode(self, arch: MacroArch) -> str:
        self.validate(arch)
        return "".join(str(c) for c in canonical(arch))

    def decode(self, text: str) -> MacroArch:
        text = text.strip()
        if len(text) != LAYERS or any(ch not in "012" for ch in text):
            raise InvalidArchitecture(
                f"NAS-Bench-Macro string {text!r} must be {LAYERS} digits of 0 (identity), 1 (k3 t3), 2 (k5 t6)"
            )
        return canonical(tuple(int(ch) for ch in text))

    def validate(self, arch: MacroArch) -> None:
        if not isinstance(arch, tuple) or len(arch) != LAYERS or any(c not in CHOICES for c in arch):
            raise InvalidArchitecture(
                f"NAS-Bench-Macro architecture must be a tuple of {LAYERS} of 0, 1, 2; got {arch!r}"
            )

    def build(self, arch: MacroArch, *, num_classes: int = 10, **unknown: Any) -> nn.Module:
        self.validate(arch)
        if unknown:
            raise UserInputError(f"unknown NAS-Bench-Macro build option {sorted(unknown)[0]!r}; valid: num_classes")
        if num_classes < 2:
            raise UserInputError(f"num_classes={num_classes} must be >= 2")
        return MacroNetwork(canonical(arch), num_classes)

    def supernet(self, *, num_classes: int = 10, dropout: float = 0.0, **unknown: Any) -> MacroSupernet:
        """The weight-sharing supernet (`search_spaces.nbmacro_supernet`), active on the largest child; ``dropout``
        is before the classifier."""
        from search_spaces.nbmacro_supernet import MacroSupernet

        if unknown:
            raise UserInputError(
                f"unknown NAS-Bench-Macro supernet option {sorted(unknown)[0]!r}; valid: num_classes, dropout"
            )
        if type(num_classes) is not int or num_classes < 2:
            raise UserInputError(f"num_classes={num_classes!r} must be an integer >= 2")
        if not isinstance(dropout, int | float) or not 0.0 <= dropout < 1.0:
            raise UserInputError(f"dropout={dropout!r} must be in [0, 1)")
        return MacroSupernet(self, num_classes=num_classes, dropout=float(dropout))


def conv_bn(c_in: int, c_out: int, kernel: int, stride: int, groups: int = 1, relu: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, kernel, stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand + BN + ReLU, kxk depthwise + BN + ReLU, 1x1 project + BN (+ input when the
    shape is kept)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, expansion: int, stride: int) -> None:
        super().__init__()
        hidden = c_in * expansion
        self.residual = stride == 1 and c_in == c_out
        self.body = nn.Sequential(
            conv_bn(c_in, hidden, 1, 1),
            conv_bn(hidden, hidden, kernel, stride, groups=hidden),
            conv_bn(hidden, c_out, 1, 1, relu=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        return x + out if self.residual else out


def make_layer(choice: int, c_in: int, c_out: int, stride: int) -> nn.Module:
    spec = CHOICES[choice]
    if spec is None:  # identity; at a stride-2 position a 1x1 stride-2 projection
        return nn.Identity() if stride == 1 and c_in == c_out else conv_bn(c_in, c_out, 1, stride, relu=False)
    return MBConv(c_in, c_out, spec[0], spec[1], stride)


class MacroNetwork(nn.Module):
    """Stem 3x3 conv 32 + BN + ReLU; 3 stages of 2, 3, 3 layers at 64, 128, 256 channels (first layer stride 2);
    1x1 conv to 1280 + BN + ReLU, global average pool, linear classifier."""

    def __init__(self, arch: MacroArch, num_classes: int) -> None:
        super().__init__()
        self.stem = conv_bn(3, STEM_CHANNELS, 3, 1)
        layers: list[nn.Module] = []
        c = STEM_CHANNELS
        for part, width in zip(stage_slices(), STAGE_CHANNELS, strict=True):
            for i, choice in enumerate(arch[part]):
                layers.append(make_layer(choice, c, width, 2 if i == 0 else 1))
                c = width
        self.layers = nn.Sequential(*layers)
        self.head = conv_bn(c, HEAD_CHANNELS, 1, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(HEAD_CHANNELS, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, 3, 32, 32)
        return self.classifier(self.pool(self.head(self.layers(self.stem(x)))).flatten(1))
