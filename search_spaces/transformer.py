"""The W-PCA lightweight transformer space (arXiv 2504.15983): L layers, each a BERT or a MobileBERT block with one
of six FFN widths, under a parameter cap; written ``bert3-mobile1-bert6-...``.

Encoder: token embedding of size E projected to the hidden size H (MobileBERT / EfficientBERT factorisation, without
the trigram convolution), learned position embeddings, LayerNorm. Block ``bertj``: post-LN multi-head self-attention
(H) and FFN of width ``unit * j`` (GELU). Block ``mobilej``: Linear H -> bottleneck, post-LN attention and FFN of width
``unit * j`` in the bottleneck, Linear back to H, residual + LayerNorm. Head: mean of the non-padding tokens' final
states, then Linear -> classes. No token-type embeddings (single-sentence tasks).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from nas_ground.errors import UserInputError
from search_spaces import register
from search_spaces.base import InvalidArchitecture

if TYPE_CHECKING:
    import optuna

WIDTH_STEPS = 6
BLOCKS: tuple[str, ...] = tuple(f"{kind}{j}" for kind in ("bert", "mobile") for j in range(1, WIDTH_STEPS + 1))
PAD_ID, CLS_ID, SEP_ID = 0, 101, 102  # BERT WordPiece (uncased) special tokens
FIRST_WORD_ID = 999  # ids below are [PAD], [unused*], [UNK], [CLS], [SEP], [MASK]
MASKED = -1e9  # attention score bias of padding positions

Arch = tuple[str, ...]  # one block name per layer


@dataclass(frozen=True)
class TransformerConfig:
    """The fixed dimensions of a transformer space; the architecture only chooses each layer's block."""

    layers: int = 12
    hidden: int = 528
    unit: int = 132  # FFN width of a block ``*j`` is unit * j
    bottleneck: int = 132  # inner size of the MobileBERT blocks
    heads: int = 12  # attention heads of the BERT blocks (head size 44)
    bottleneck_heads: int = 4  # attention heads inside the MobileBERT bottleneck (head size 33)
    embed_size: int = 128
    vocab_size: int = 30522  # BERT uncased WordPiece
    max_len: int = 128
    num_classes: int = 2
    param_cap: int | None = 15_700_000

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name != "param_cap" and (not isinstance(value, int) or value < 1):
                raise UserInputError(f"transformer {f.name}={value!r} must be an integer >= 1")
        if self.param_cap is not None and (not isinstance(self.param_cap, int) or self.param_cap < 1):
            raise UserInputError(f"transformer param_cap={self.param_cap!r} must be an integer >= 1 or null")
        if self.hidden % self.heads:
            raise UserInputError(f"transformer hidden={self.hidden} is not divisible by heads={self.heads}")
        if self.bottleneck % self.bottleneck_heads:
            raise UserInputError(
                f"transformer bottleneck={self.bottleneck} is not divisible by bottleneck_heads={self.bottleneck_heads}"
            )
        if self.num_classes < 2:
            raise UserInputError(f"num_classes={self.num_classes} must be >= 2")


PAPER = TransformerConfig()
# One candidate trains on SST-2 in about a minute on one CPU thread (see experiments/transformer_sst2.py).
SMALL = TransformerConfig(
    layers=4, hidden=128, unit=32, bottleneck=32, heads=2, bottleneck_heads=2, embed_size=64, max_len=64, param_cap=None
)


def _width(block: str, cfg: TransformerConfig) -> int:
    return cfg.unit * int(block[-1])


def _linear(n_in: int, n_out: int) -> int:
    return n_in * n_out + n_out


def block_params(block: str, cfg: TransformerConfig) -> int:
    """Parameters of one layer: attention (4 linears), FFN (2 linears), LayerNorms, bottleneck projections."""
    w = _width(block, cfg)
    if block.startswith("bert"):
        h = cfg.hidden
        return 4 * _linear(h, h) + _linear(h, w) + _linear(w, h) + 2 * 2 * h
    b = cfg.bottleneck
    attention_ffn = 4 * _linear(b, b) + _linear(b, w) + _linear(w, b) + 2 * 2 * b
    return _linear(cfg.hidden, b) + attention_ffn + _linear(b, cfg.hidden) + 2 * cfg.hidden


def arch_params(arch: Arch, cfg: TransformerConfig) -> int:
    """Parameters of the built classifier, computed without building it."""
    embeddings = cfg.vocab_size * cfg.embed_size + _linear(cfg.embed_size, cfg.hidden) + cfg.max_len * cfg.hidden
    head = 2 * cfg.hidden + _linear(cfg.hidden, cfg.num_classes)  # embedding LayerNorm + classifier
    return embeddings + head + sum(block_params(b, cfg) for b in arch)


class TransformerSpace:
    """12**L layer choices (6 BERT + 6 MobileBERT blocks); sample, mutate and suggest stay under ``param_cap``."""

    modality = "text"

    def __init__(self, name: str, config: TransformerConfig) -> None:
        self.name = name
        self.config = config
        self.max_len = config.max_len
        self.input_shape: tuple[int, ...] = (config.max_len,)  # token ids of one sequence
        smallest = arch_params(("mobile1",) * config.layers, config)
        if config.param_cap is not None and smallest > config.param_cap:
            raise UserInputError(
                f"transformer param_cap={config.param_cap:,} is below the smallest architecture ({smallest:,} params)"
            )

    def params(self, arch: Arch) -> int:
        return arch_params(arch, self.config)

    def _fits(self, arch: Arch) -> bool:
        return self.config.param_cap is None or self.params(arch) <= self.config.param_cap

    def sample(self, rng: random.Random) -> Arch:
        """Uniform over the layer choices, rejecting architectures over the cap (about half for the paper's)."""
        for _ in range(1000):
            arch = tuple(rng.choice(BLOCKS) for _ in range(self.config.layers))
            if self._fits(arch):
                return arch
        return self._shrink(arch)

    def mutate(self, arch: Arch, rng: random.Random) -> Arch:
        """Another block in one layer, uniform over the single-layer changes that stay under the cap."""
        self.validate(arch)
        moves = [
            arch[:i] + (b,) + arch[i + 1 :]
            for i in range(len(arch))
            for b in BLOCKS
            if b != arch[i] and self._fits(arch[:i] + (b,) + arch[i + 1 :])
        ]
        return rng.choice(moves) if moves else arch

    def suggest(self, trial: optuna.Trial) -> Arch:
        """One categorical per layer; a choice over the cap is shrunk (see `_shrink`), so the trial's params can
        differ from the architecture, which the search records as the trial's ``arch``."""
        arch = tuple(trial.suggest_categorical(f"layer_{i}", BLOCKS) for i in range(self.config.layers))
        return self._shrink(arch)

    def _shrink(self, arch: Arch) -> Arch:
        """Until under the cap: the widest BERT block (the last on ties) becomes the MobileBERT block of the same
        FFN width; with none left, the widest MobileBERT block loses one width step."""
        layers = list(arch)
        while not self._fits(tuple(layers)):
            berts = [i for i, b in enumerate(layers) if b.startswith("bert")]
            pool = berts or [i for i, b in enumerate(layers) if b != "mobile1"]
            i = max(reversed(pool), key=lambda k: int(layers[k][-1]))
            j = int(layers[i][-1])
            layers[i] = f"mobile{j}" if berts else f"mobile{j - 1}"
        return tuple(layers)

    def encode(self, arch: Arch) -> str:
        self.validate(arch)
        return "-".join(arch)

    def decode(self, text: str) -> Arch:
        parts = text.strip().split("-")
        if len(parts) != self.config.layers:
            raise InvalidArchitecture(
                f"{self.name} string {text!r} must have {self.config.layers} blocks joined by '-', got {len(parts)}"
            )
        arch = tuple(parts)
        self.validate(arch)  # names the first unknown block, then checks the cap
        return arch

    def validate(self, arch: Arch) -> None:
        if not isinstance(arch, tuple) or len(arch) != self.config.layers:
            raise InvalidArchitecture(
                f"{self.name} architecture must be a tuple of {self.config.layers} blocks, got {arch!r}"
            )
        for i, block in enumerate(arch):
            if block not in BLOCKS:
                raise InvalidArchitecture(
                    f"unknown {self.name} block {block!r} at layer {i}; valid: bert1..bert6, mobile1..mobile6"
                )
        if not self._fits(arch):
            raise InvalidArchitecture(
                f"{self.name} architecture {'-'.join(arch)} has {self.params(arch):,} parameters, "
                f"over the cap of {self.config.param_cap:,}"
            )

    def example_input(self, batch_size: int = 1) -> torch.Tensor:
        """Token ids (batch, max_len), int64: [CLS], seeded real-vocabulary ids, [SEP]; no padding."""
        gen = torch.Generator().manual_seed(0)
        ids = torch.randint(FIRST_WORD_ID, self.config.vocab_size, (batch_size, self.max_len), generator=gen)
        ids[:, 0], ids[:, -1] = CLS_ID, SEP_ID
        return ids

    def build(self, arch: Arch, *, dropout: float = 0.1, num_classes: int | None = None, **unknown: Any) -> nn.Module:
        self.validate(arch)
        if unknown:
            bad = sorted(unknown)[0]
            raise UserInputError(f"unknown {self.name} build option {bad!r}; valid: dropout, num_classes")
        if not 0.0 <= dropout < 1.0:
            raise UserInputError(f"dropout={dropout} must be in [0, 1)")
        cfg = self.config if num_classes is None else replace(self.config, num_classes=num_classes)
        return TransformerClassifier(arch, cfg, dropout)


def _space_factory(name: str, base: TransformerConfig) -> Any:
    def factory(**options: Any) -> TransformerSpace:
        valid = {f.name for f in fields(TransformerConfig)}
        unknown = sorted(set(options) - valid)
        if unknown:
            raise UserInputError(f"unknown {name} space option {unknown[0]!r}; valid: {', '.join(sorted(valid))}")
        return TransformerSpace(name, replace(base, **options))

    factory.__doc__ = f"The {name!r} space; options override fields of its `TransformerConfig`."
    return factory


register("transformer")(_space_factory("transformer", PAPER))
register("transformer-small")(_space_factory("transformer-small", SMALL))


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value, self.output = (nn.Linear(dim, dim) for _ in range(4))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        hs = d // self.heads

        def split(y: torch.Tensor) -> torch.Tensor:
            return y.reshape(b, t, self.heads, hs).transpose(1, 2)  # (B, nh, T, hs)

        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        scores = q @ k.transpose(-2, -1) / math.sqrt(hs) + bias  # (B, nh, T, T); bias is (B, 1, 1, T)
        att = self.dropout(scores.softmax(dim=-1))
        return self.output((att @ v).transpose(1, 2).reshape(b, t, d))


class FeedForward(nn.Module):
    def __init__(self, dim: int, width: int, dropout: float) -> None:
        super().__init__()
        self.up = nn.Linear(dim, width)  # its output is the FFN pre-activation H = X W1 + b1 (a W-PCA site)
        self.act = nn.GELU()
        self.down = nn.Linear(width, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.down(self.act(self.up(x))))


class AttentionFFN(nn.Module):
    """Post-LN transformer layer at width ``dim``: x = LN(x + Attn(x)); x = LN(x + FFN(x))."""

    def __init__(self, dim: int, heads: int, width: int, dropout: float) -> None:
        super().__init__()
        self.attention = SelfAttention(dim, heads, dropout)
        self.attention_norm = nn.LayerNorm(dim)
        self.ffn = FeedForward(dim, width, dropout)
        self.ffn_norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        x = self.attention_norm(x + self.dropout(self.attention(x, bias)))
        return self.ffn_norm(x + self.ffn(x))


class BertBlock(AttentionFFN):
    """``bertj``: attention and FFN (width unit * j) at the hidden size."""


class MobileBertBlock(nn.Module):
    """``mobilej``: H -> bottleneck, attention and FFN (width unit * j) in the bottleneck, -> H, residual + LN."""

    def __init__(self, hidden: int, bottleneck: int, heads: int, width: int, dropout: float) -> None:
        super().__init__()
        self.bottleneck_in = nn.Linear(hidden, bottleneck)
        self.inner = AttentionFFN(bottleneck, heads, width, dropout)
        self.bottleneck_out = nn.Linear(bottleneck, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.dropout = nn.Dropout(dropout)

    @property
    def ffn(self) -> FeedForward:
        return self.inner.ffn

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        z = self.inner(self.bottleneck_in(x), bias)
        return self.norm(x + self.dropout(self.bottleneck_out(z)))


def _init_weights(module: nn.Module) -> None:
    """As BERT and the W-PCA reference: Linear and Embedding ~ N(0, 0.02), biases 0, LayerNorm weight 1, bias 0."""
    if isinstance(module, nn.Linear | nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
    if isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class TransformerClassifier(nn.Module):
    """Sequence classifier: embeddings, one block per layer, masked mean pooling, linear head."""

    def __init__(self, arch: Arch, cfg: TransformerConfig, dropout: float) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.embed_size)
        self.embedding_projection = nn.Linear(cfg.embed_size, cfg.hidden)
        self.position_embedding = nn.Embedding(cfg.max_len, cfg.hidden)
        self.embedding_norm = nn.LayerNorm(cfg.hidden)
        self.dropout = nn.Dropout(dropout)
        self.layers = nn.ModuleList(
            BertBlock(cfg.hidden, cfg.heads, _width(b, cfg), dropout)
            if b.startswith("bert")
            else MobileBertBlock(cfg.hidden, cfg.bottleneck, cfg.bottleneck_heads, _width(b, cfg), dropout)
            for b in arch
        )
        self.classifier = nn.Linear(cfg.hidden, cfg.num_classes)
        self.apply(_init_weights)

    def pca_sites(self) -> list[nn.Module]:
        """Per layer, the first Linear of its FFN (output: the FFN pre-activation), as W-PCA hooks them."""
        return [m.up for m in self.layers.modules() if isinstance(m, FeedForward)]  # one per layer, in order

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``input_ids`` (B, T) int64 with T <= max_len; ``attention_mask`` (B, T), 1 for tokens, 0 for padding
        (default: ids != [PAD]). Returns logits (B, classes)."""
        if attention_mask is None:
            attention_mask = input_ids.ne(PAD_ID)
        keep = attention_mask.unsqueeze(-1).to(torch.float32)  # (B, T, 1)
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.embedding_projection(self.token_embedding(input_ids)) + self.position_embedding(positions)
        x = self.dropout(self.embedding_norm(x))  # (B, T, H)
        bias = ((1.0 - keep) * MASKED).transpose(1, 2).unsqueeze(1)  # (B, 1, 1, T)
        for layer in self.layers:
            x = layer(x, bias)
        pooled = (x * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1.0)
        return self.classifier(self.dropout(pooled))
