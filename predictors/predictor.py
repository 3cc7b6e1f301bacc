"""The zero-shot predictor: text embedding (+ graph-summary features) -> a small MLP head -> a score.

The head has two views of each network, each an ensemble of MLPs: the *core* view reads the embedding and the
compact features (scale, activation statistics, operator shares: `predictors.features.CORE_FEATURES`), the
*full* view also the 512 hashed Weisfeiler-Lehman counts. The score is ``core_weight * core + (1 - core_weight)
* full`` (both on the standardised target scale): the core view generalises from a few hundred examples, the
full view adds structure once there are more.

Training uses a pairwise margin ranking loss over the pairs of a batch whose targets differ (as ONNX-Net,
margin 0.1 on standardised targets), or MSE on standardised targets. A predictor is one safetensors file: the
head's tensors, and JSON metadata (encoder, text format, feature standardisation, training data, its own
evaluation figures) in the safetensors header. Loading it never executes code from the file.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nas_ground.errors import UserInputError
from nas_ground.training import backward_step, minibatches
from predictors.encoder import DEFAULT_ENCODER, Encoder
from predictors.features import CORE_FEATURES, FEATURE_NAMES, UNIVERSAL_FEATURES, feature_matrix

FORMAT_VERSION = 1
METADATA_KEY = "nas_predictor"
LOSSES = ("ranking", "mse")
CORE_VIEWS = ("compact", "universal")  # the core view's graph features: CORE_FEATURES or UNIVERSAL_FEATURES
# the monotone prior's inputs, each a training-free ranking: size and V-PCA (and, optionally, V-PCA as a share of
# each layer's width, `act_rank_share`: any of the UNIVERSAL_FEATURES may be named)
PRIOR_FEATURES = ("log_params", "log_flops", "act_vpca")
PRIOR_FITS = ("reproducible", "all")  # which training families the prior is fitted to
RESIDUAL_GRID = (0.0, 0.125, 0.25, 0.5, 1.0)  # residual weights tried by the inner leave-one-family-out


@dataclass
class TrainOptions:
    loss: str = "ranking"
    margin: float = 0.1
    hidden: tuple[int, ...] = (256, 64)
    dropout: float = 0.1
    epochs: int = 300
    max_steps: int = 2000  # optimizer steps per head at most: large training sets get fewer epochs
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-3
    use_features: bool = True
    use_embedding: bool = True
    ensemble: int = 1  # MLPs per view
    core_weight: float = 0.5  # weight of the core view (0: full view only, 1: core view only)
    core_view: str = "compact"  # `CORE_VIEWS`: which graph features the core view reads beside the embedding
    monotone: bool = False  # positive weights: the score never falls when a (standardised) input rises
    # prior: the score is a monotone prior (positive weights on PRIOR_FEATURES, fitted to the worst training
    # family) plus residual_weight x the MLPs' residual; residual_weight None: chosen by an inner
    # leave-one-family-out on the training families (`choose_residual_weight`)
    prior: bool = False
    residual_weight: float | None = None
    prior_features: tuple[str, ...] = PRIOR_FEATURES
    prior_fit: str = "reproducible"  # `PRIOR_FITS`: the families whose labels reproduce (noise ceiling >= 0.5), or all
    seed: int = 0

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise UserInputError(f"unknown loss {self.loss!r}; valid: {', '.join(LOSSES)}")
        if not (self.use_features or self.use_embedding):
            raise UserInputError("a predictor needs the embedding, the graph features, or both")
        if self.core_view not in CORE_VIEWS:
            raise UserInputError(f"unknown core view {self.core_view!r}; valid: {', '.join(CORE_VIEWS)}")
        if not 0.0 <= self.core_weight <= 1.0:
            raise UserInputError(f"core_weight={self.core_weight} must be in [0, 1]")
        if self.ensemble < 1:
            raise UserInputError(f"ensemble={self.ensemble} must be >= 1")
        if self.residual_weight is not None and not (self.residual_weight >= 0.0):
            raise UserInputError(f"residual_weight={self.residual_weight} must be >= 0")
        self.prior_features = tuple(self.prior_features)
        bad = [f for f in self.prior_features if f not in UNIVERSAL_FEATURES]
        if bad or not self.prior_features:
            valid = ", ".join(UNIVERSAL_FEATURES)
            raise UserInputError(f"prior feature {(bad or [''])[0]!r} is not a scale or activation feature: {valid}")
        if self.prior_fit not in PRIOR_FITS:
            raise UserInputError(f"unknown prior fit {self.prior_fit!r}; valid: {', '.join(PRIOR_FITS)}")
        if self.epochs < 1 or self.batch_size < 2:
            raise UserInputError(f"epochs={self.epochs} and batch_size={self.batch_size} must be >= 1 and >= 2")
        self.hidden = tuple(int(h) for h in self.hidden)


class PositiveLinear(nn.Module):
    """A linear layer whose weights are softplus(raw) > 0: stacked with ReLUs, a score that can only rise with
    each input (a monotone head)."""

    def __init__(self, inputs: int, outputs: int) -> None:
        super().__init__()
        self.raw = nn.Parameter(torch.empty(outputs, inputs))
        self.bias = nn.Parameter(torch.empty(outputs))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # softplus(raw) starts near 1 / fan-in, so that a stack keeps its scale
        nn.init.normal_(self.raw, mean=float(np.log(np.expm1(1.0 / self.raw.shape[1]))), std=0.1)
        nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, nn.functional.softplus(self.raw), self.bias)


def _mlp(inputs: int, hidden: Sequence[int], dropout: float, monotone: bool = False) -> nn.Sequential:
    linear = PositiveLinear if monotone else nn.Linear
    layers: list[nn.Module] = []
    width = inputs
    for h in hidden:
        layers += [linear(width, h), nn.ReLU(), nn.Dropout(dropout)]
        width = h
    layers.append(linear(width, 1))
    return nn.Sequential(*layers)


class Head(nn.Module):
    """Two ensembles of MLPs (each member trained with its own seed): ``members`` on all ``inputs`` (the full
    view) and ``core_members`` on the first ``core_inputs`` columns (the core view). The MLPs' score is
    ``core_weight`` x the core members' mean + (1 - ``core_weight``) x the full members' mean.

    With ``prior_columns`` (input columns of `PRIOR_FEATURES`), the score is ``prior + residual_weight x`` the
    MLPs' score, where the prior is a linear map with positive weights of those columns: a ranking that can only
    rise with the network's size and V-PCA, which the MLPs correct where they were shown to transfer."""

    def __init__(
        self,
        inputs: int,
        hidden: Sequence[int],
        dropout: float,
        members: int = 1,
        *,
        core_inputs: int = 0,
        core_members: int = 0,
        core_weight: float = 0.0,
        monotone: bool = False,
        prior_columns: Sequence[int] = (),
        residual_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.inputs, self.hidden, self.dropout = inputs, [int(h) for h in hidden], dropout
        self.core_inputs, self.core_weight, self.monotone = core_inputs, float(core_weight), monotone
        self.members = nn.ModuleList(_mlp(inputs, hidden, dropout, monotone) for _ in range(members))
        self.core = nn.ModuleList(_mlp(core_inputs, hidden, dropout, monotone) for _ in range(core_members))
        self.prior_columns = [int(c) for c in prior_columns]
        self.residual_weight = float(residual_weight)
        self.prior = PositiveLinear(len(self.prior_columns), 1) if self.prior_columns else None

    def prior_score(self, x: torch.Tensor) -> torch.Tensor:
        """(n,): the monotone prior (zeros without one)."""
        if self.prior is None:
            return torch.zeros(x.shape[0], dtype=x.dtype)
        return self.prior(x[:, self.prior_columns]).squeeze(-1)

    def member_scores(self, x: torch.Tensor) -> torch.Tensor:
        """(members, n): every MLP's own score, each on the standardised target scale."""
        outs = [m(x).squeeze(-1) for m in self.members]
        outs += [m(x[:, : self.core_inputs]).squeeze(-1) for m in self.core]
        return torch.stack(outs) if outs else torch.zeros((0, x.shape[0]), dtype=x.dtype)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """(n,): the MLPs' score (their residual over the prior when there is one)."""
        # `train_predictor` leaves a view empty exactly when its weight is 0
        scores = self.member_scores(x)
        full, core = scores[: len(self.members)], scores[len(self.members) :]
        score = torch.zeros(x.shape[0], dtype=x.dtype)
        if len(full):
            score = score + (1.0 - self.core_weight) * full.mean(0)
        if len(core):
            score = score + self.core_weight * core.mean(0)
        return score

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.prior is None:
            return self.residual(x)
        return self.prior_score(x) + self.residual_weight * self.residual(x)


def ranking_loss(
    scores: torch.Tensor, targets: torch.Tensor, margin: float, groups: torch.Tensor | None = None
) -> torch.Tensor:
    """Margin ranking loss over all ordered pairs (i, j) of the batch with targets[i] > targets[j]; with
    ``groups``, only pairs within one group (targets of different groups, e.g. spaces trained with different
    budgets, are not comparable)."""
    diff_t = targets[:, None] - targets[None, :]
    diff_s = scores[:, None] - scores[None, :]
    mask = diff_t > 0
    if groups is not None:
        mask &= groups[:, None] == groups[None, :]
    if not bool(mask.any()):
        return scores.sum() * 0.0
    return torch.relu(margin - diff_s[mask]).mean()


@dataclass
class Predictor:
    """A trained head with everything needed to score a text + graph summary."""

    head: Head
    encoder_name: str = DEFAULT_ENCODER
    text_format: str = "compact"
    use_features: bool = True
    use_embedding: bool = True
    feature_mean: list[float] = field(default_factory=list)
    feature_std: list[float] = field(default_factory=list)
    target_mean: float = 0.0
    target_std: float = 1.0
    meta: dict[str, Any] = field(default_factory=dict)  # training data, options, evaluation figures

    def inputs(self, embeddings: np.ndarray, summaries: Sequence[Mapping[str, Any]]) -> torch.Tensor:
        n = len(summaries)
        parts = [np.asarray(embeddings, dtype=np.float32)] if self.use_embedding else [np.zeros((n, 0), np.float32)]
        if self.use_features:
            feats = feature_matrix(list(summaries))
            parts.append((feats - np.asarray(self.feature_mean)) / np.asarray(self.feature_std))
        return torch.from_numpy(np.concatenate(parts, axis=1).astype(np.float32))

    @torch.no_grad()
    def score_embeddings(self, embeddings: np.ndarray, summaries: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Scores on the target's scale (exact for MSE heads; monotone, roughly scaled, for ranking heads)."""
        self.head.eval()
        out = self.head(self.inputs(embeddings, summaries)).numpy().astype(np.float64)
        return out * self.target_std + self.target_mean

    @torch.no_grad()
    def spread(self, embeddings: np.ndarray, summaries: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """The ensemble's disagreement on each network: the standard deviation of its members' scores, on the
        target's scale (0 for a single-member head)."""
        self.head.eval()
        members = self.head.member_scores(self.inputs(embeddings, summaries)).numpy().astype(np.float64)
        weight = self.head.residual_weight if self.head.prior is not None else 1.0  # the residual's share
        return members.std(axis=0) * self.target_std * weight if len(members) > 1 else np.zeros(members.shape[1])

    def novelty(self, summaries: Sequence[Mapping[str, Any]]) -> list[tuple[str, float]]:
        """For each network, the graph feature lying farthest outside the range the predictor was trained on,
        and how far, in training standard deviations (0.0 inside the range)."""
        lows, highs = self.meta.get("feature_low"), self.meta.get("feature_high")
        if not (self.use_features and lows and highs) or not summaries:
            return [("", 0.0)] * len(summaries)
        n = len(lows)  # the head's graph features: a prefix of CORE_FEATURES
        z = feature_matrix(list(summaries))[:, :n] - np.asarray(self.feature_mean)[:n]
        z = z / np.asarray(self.feature_std)[:n]
        below, above = np.asarray(lows) - z, z - np.asarray(highs)
        gap = np.maximum(np.maximum(below, above), 0.0)
        worst = gap.argmax(axis=1)
        return [(CORE_FEATURES[k] if gap[i, k] > 0 else "", float(gap[i, k])) for i, k in enumerate(worst)]

    def embed(self, texts: Sequence[str], encoder: Encoder | None = None) -> np.ndarray:
        """The embeddings this predictor reads (empty for a graph-features-only head, which never loads the
        encoder); the encoder must be the one it was trained with."""
        if not self.use_embedding:
            return np.zeros((len(texts), 0), dtype=np.float32)
        encoder = encoder or Encoder(self.encoder_name)
        if encoder.name != self.encoder_name:
            raise UserInputError(f"predictor was trained with encoder {self.encoder_name!r}, not {encoder.name!r}")
        return encoder.encode(list(texts))

    def score(
        self, texts: Sequence[str], summaries: Sequence[Mapping[str, Any]], encoder: Encoder | None = None
    ) -> np.ndarray:
        return self.score_embeddings(self.embed(texts, encoder), summaries)

    # -- file format -------------------------------------------------------------------------------------------

    def metadata(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "encoder": self.encoder_name,
            "text_format": self.text_format,
            "use_features": self.use_features,
            "feature_names": list(FEATURE_NAMES),
            "feature_mean": self.feature_mean,
            "feature_std": self.feature_std,
            "target_mean": self.target_mean,
            "target_std": self.target_std,
            "use_embedding": self.use_embedding,
            "head": {
                "inputs": self.head.inputs,
                "hidden": self.head.hidden,
                "dropout": self.head.dropout,
                "members": len(self.head.members),
                "core_inputs": self.head.core_inputs,
                "core_members": len(self.head.core),
                "core_weight": self.head.core_weight,
                "monotone": self.head.monotone,
                "prior_columns": self.head.prior_columns,
                "residual_weight": self.head.residual_weight,
            },
            **self.meta,
        }

    def save(self, path: str | Path) -> Path:
        """Write the file atomically (temp file, then rename)."""
        from safetensors.torch import save

        from nas_ground.atomic import atomic_write

        tensors = {k: v.detach().contiguous().cpu() for k, v in self.head.state_dict().items()}
        data = save(tensors, metadata={METADATA_KEY: json.dumps(self.metadata(), sort_keys=True)})
        return atomic_write(path, data)

    @classmethod
    def load(cls, path: str | Path) -> Predictor:
        from safetensors import SafetensorError, safe_open

        path = Path(path)
        if not path.is_file():
            raise UserInputError(f"predictor file not found: {path}")
        try:
            with safe_open(str(path), framework="pt") as f:
                raw = (f.metadata() or {}).get(METADATA_KEY)
                tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118  # safe_open has no __iter__
        except (SafetensorError, OSError, ValueError) as exc:
            raise UserInputError(f"not a predictor file: {path}: {str(exc).splitlines()[0]}") from exc
        if raw is None:
            raise UserInputError(f"not a predictor file: {path}: no {METADATA_KEY!r} metadata")
        meta = json.loads(raw)
        if meta.get("format_version") != FORMAT_VERSION:
            raise UserInputError(f"predictor {path} has format {meta.get('format_version')!r}, need {FORMAT_VERSION}")
        spec = meta["head"]
        head = Head(
            int(spec["inputs"]),
            [int(h) for h in spec["hidden"]],
            float(spec["dropout"]),
            int(spec["members"]),
            core_inputs=int(spec.get("core_inputs", 0)),
            core_members=int(spec.get("core_members", 0)),
            core_weight=float(spec.get("core_weight", 0.0)),
            monotone=bool(spec.get("monotone", False)),
            prior_columns=[int(c) for c in spec.get("prior_columns", [])],
            residual_weight=float(spec.get("residual_weight", 1.0)),
        )
        try:
            head.load_state_dict(tensors)
        except RuntimeError as exc:
            raise UserInputError(f"predictor {path}: weights do not match its metadata") from exc
        head.eval()
        if list(meta["feature_names"]) != list(FEATURE_NAMES):
            raise UserInputError(f"predictor {path} was made with other graph features; retrain it")
        predictor = cls(
            head=head,
            encoder_name=meta["encoder"],
            text_format=meta["text_format"],
            use_features=bool(meta["use_features"]),
            use_embedding=bool(meta["use_embedding"]),
            feature_mean=list(meta["feature_mean"]),
            feature_std=list(meta["feature_std"]),
            target_mean=float(meta["target_mean"]),
            target_std=float(meta["target_std"]),
        )
        predictor.meta = {k: v for k, v in meta.items() if k not in predictor.metadata()}  # what `save` adds
        return predictor


def train_predictor(
    embeddings: np.ndarray,
    summaries: Sequence[Mapping[str, Any]],
    targets: Sequence[float] | np.ndarray,
    options: TrainOptions | None = None,
    *,
    encoder_name: str = DEFAULT_ENCODER,
    text_format: str = "compact",
    meta: dict[str, Any] | None = None,
    groups: Sequence[int] | np.ndarray | None = None,
    blocks: Sequence[str] | np.ndarray | None = None,
    vetoes: Sequence[bool] | np.ndarray | None = None,
) -> Predictor:
    """Fit a head on (embedding, features) -> target; seeded, CPU. ``groups`` (an int per sample) keeps
    ranking pairs within a group and standardises MSE targets per group. With a prior whose residual weight is
    left to choose, ``blocks`` (a label per sample, e.g. its space) says which groups share networks: the inner
    leave-one-family-out holds a group out together with every group of its block (default: each group alone), and
    ``vetoes`` (a flag per sample: its family's labels are reproducible, run-to-run tau >= 0.5 or unknown) says which
    held-out groups judge the residual weight (default: all)."""
    opts = options or TrainOptions()
    if opts.prior and not opts.use_features:
        raise UserInputError("a prior reads the graph features (params, FLOPs, V-PCA): use_features must be on")
    y = np.asarray(targets, dtype=np.float64)
    if len(y) < 2 or len(y) != len(embeddings) or len(y) != len(summaries):
        raise UserInputError(f"need >= 2 aligned samples to train a predictor, got {len(y)}")
    if not np.isfinite(y).all():
        raise UserInputError("training targets contain NaN or inf; drop those rows first")
    feats = feature_matrix(list(summaries))
    mean, std = feats.mean(axis=0), feats.std(axis=0)
    std = np.where(std < 1e-6, 1.0, std)
    t_mean, t_std = float(y.mean()), float(y.std() or 1.0)
    g = np.zeros(len(y), dtype=np.int64) if groups is None else np.asarray(groups, dtype=np.int64)
    if len(g) != len(y):
        raise UserInputError(f"groups has {len(g)} entries for {len(y)} samples")
    z = np.empty_like(y)
    for label in np.unique(g):  # per-group standardisation (one group: the plain z-score)
        sel = g == label
        z[sel] = (y[sel] - y[sel].mean()) / (y[sel].std() or 1.0)
    torch.manual_seed(opts.seed)
    emb_width = embeddings.shape[1] if opts.use_embedding else 0
    width = emb_width + (len(FEATURE_NAMES) if opts.use_features else 0)
    core_weight = opts.core_weight if opts.use_features else 0.0  # without features both views are the same
    mlps = 0 if opts.prior and opts.residual_weight == 0.0 else opts.ensemble  # the prior alone: no MLP to fit
    predictor = Predictor(
        head=Head(
            width,
            opts.hidden,
            opts.dropout,
            mlps if core_weight < 1.0 else 0,
            core_inputs=emb_width + len(CORE_FEATURES if opts.core_view == "compact" else UNIVERSAL_FEATURES),
            core_members=mlps if core_weight > 0.0 else 0,
            core_weight=core_weight,
            monotone=opts.monotone,
            prior_columns=[emb_width + FEATURE_NAMES.index(f) for f in opts.prior_features] if opts.prior else (),
            residual_weight=1.0 if opts.residual_weight is None else opts.residual_weight,
        ),
        encoder_name=encoder_name,
        text_format=text_format,
        use_features=opts.use_features,
        use_embedding=opts.use_embedding,
        feature_mean=mean.tolist(),
        feature_std=std.tolist(),
        target_mean=t_mean,
        target_std=t_std,
        meta={"train_options": asdict(opts), **(meta or {})},
    )
    if opts.use_features:  # the training range of the compact features it reads, in standard units: `novelty`
        universal_only = opts.core_view == "universal" and core_weight >= 1.0
        n = len(UNIVERSAL_FEATURES if universal_only else CORE_FEATURES)
        core = (feats[:, :n] - mean[:n]) / std[:n]
        predictor.meta["feature_low"] = (np.floor(core.min(axis=0) * 1e4) / 1e4).tolist()
        predictor.meta["feature_high"] = (np.ceil(core.max(axis=0) * 1e4) / 1e4).tolist()
    x = predictor.inputs(embeddings, summaries)
    yt = torch.from_numpy(z.astype(np.float32))
    gt = torch.from_numpy(g.copy())
    head = predictor.head
    offset = torch.zeros(len(yt))
    if head.prior is not None:
        steer = torch.ones(len(yt), dtype=torch.bool)
        if opts.prior_fit == "reproducible" and vetoes is not None and np.asarray(vetoes, dtype=bool).any():
            steer = torch.from_numpy(np.asarray(vetoes, dtype=bool))  # noisy families do not steer the prior
        _fit_prior(head.prior, x[steer][:, head.prior_columns], yt[steer], gt[steer], opts)
        offset = head.prior_score(x).detach()
        predictor.meta["prior"] = {
            "features": list(opts.prior_features),
            "fitted_to": sorted(int(v) for v in torch.unique(gt[steer])),
            "weights": nn.functional.softplus(head.prior.raw).detach().reshape(-1).tolist(),
        }
    for k, member in enumerate(head.members):
        _fit_member(member, x, yt, gt, opts, opts.seed + k, offset)
    xc = x[:, : head.core_inputs]
    for k, member in enumerate(head.core):
        _fit_member(member, xc, yt, gt, opts, opts.seed + 1000 + k, offset)
    head.eval()
    if head.prior is not None and opts.residual_weight is None:
        weight, choice = choose_residual_weight(embeddings, summaries, y, opts, groups=g, blocks=blocks, vetoes=vetoes)
        head.residual_weight = weight
        predictor.meta["prior"]["residual_choice"] = choice
    return predictor


PRIOR_STEPS = 150
PRIOR_BATCH = 128  # records per family per step of the prior's fit (it has three weights)
ROBUST_SHARPNESS = 20.0  # the prior's loss: a soft maximum (logsumexp / this) of the training families' losses
RESIDUAL_TOLERANCE = 0.02  # a residual weight may cost an inner held-out family at most this much tau


def _fit_prior(prior: PositiveLinear, x: torch.Tensor, yt: torch.Tensor, gt: torch.Tensor, opts: TrainOptions) -> None:
    """Fit the prior's positive weights to the worst family: each step, the ranking loss of every group on a
    sample of its records, combined by a soft maximum, so that no training family is given up for the others."""
    torch.manual_seed(opts.seed + 2000)
    prior.reset_parameters()
    optim = torch.optim.Adam(prior.parameters(), lr=0.05)
    gen = torch.Generator().manual_seed(opts.seed + 2000)
    members = [torch.nonzero(gt == label).reshape(-1) for label in torch.unique(gt)]
    members = [m for m in members if len(m) >= 2]
    if not members:
        return
    for _ in range(PRIOR_STEPS):
        picks = [idx[torch.randperm(len(idx), generator=gen)[:PRIOR_BATCH]] for idx in members]
        pick = torch.cat(picks)
        owner = torch.cat([torch.full((len(p),), k) for k, p in enumerate(picks)])
        scores = prior(x[pick]).squeeze(-1)
        mask = ((yt[pick][:, None] - yt[pick][None, :]) > 0) & (owner[:, None] == owner[None, :])
        hinge = torch.relu(opts.margin - (scores[:, None] - scores[None, :])) * mask
        per_row = torch.zeros(len(picks)).index_add_(0, owner, hinge.sum(1))
        pairs = torch.zeros(len(picks)).index_add_(0, owner, mask.sum(1).float())
        losses = per_row / pairs.clamp(min=1.0)  # each family's mean hinge over its ordered pairs
        loss = torch.logsumexp(losses * ROBUST_SHARPNESS, 0) / ROBUST_SHARPNESS
        optim.zero_grad()
        loss.backward()
        optim.step()
    prior.eval()


def choose_residual_weight(
    embeddings: np.ndarray,
    summaries: Sequence[Mapping[str, Any]],
    targets: np.ndarray,
    options: TrainOptions,
    *,
    groups: np.ndarray,
    blocks: Sequence[str] | np.ndarray | None = None,
    vetoes: Sequence[bool] | np.ndarray | None = None,
) -> tuple[float, dict[str, Any]]:
    """How much of the MLPs' residual transfers to a family they never saw: an inner leave-one-family-out on the
    training data. Each group (with its block) is held out in turn, a prior + residual head is trained on the
    rest, and every weight of `RESIDUAL_GRID` is scored by its Kendall tau on the held-out group. The weight kept
    has the best mean tau among those that cost no held-out group more than `RESIDUAL_TOLERANCE` against the
    prior alone (weight 0, always admissible); only groups flagged in ``vetoes`` (families whose labels are
    reproducible) count, unless none is; with fewer than two blocks there is no out-of-family evidence and the
    weight is 1."""
    from dataclasses import replace

    from predictors.metrics import kendall_tau

    labels = np.unique(groups)
    block = np.asarray(groups if blocks is None else blocks).astype(str)
    if len(np.unique(block)) < 2:
        return 1.0, {"grid": list(RESIDUAL_GRID), "chosen": 1.0, "why": "one family: no out-of-family evidence"}
    inner = replace(options, residual_weight=1.0)
    veto = np.ones(len(groups), dtype=bool) if vetoes is None else np.asarray(vetoes, dtype=bool)
    taus: dict[str, list[float]] = {}
    for label in labels:
        held = np.flatnonzero(groups == label)
        train = np.flatnonzero(block != block[held[0]])
        if len(held) < 2 or len(np.unique(groups[train])) < 1 or len(train) < 2:
            continue
        sub = train_predictor(
            embeddings[train],
            [summaries[int(i)] for i in train],
            targets[train],
            inner,
            groups=groups[train],
            vetoes=veto[train],
        )
        x = sub.inputs(embeddings[held], [summaries[int(i)] for i in held])
        with torch.no_grad():
            prior, residual = sub.head.prior_score(x).numpy(), sub.head.residual(x).numpy()
        taus[str(int(label))] = [kendall_tau(prior + w * residual, targets[held]) for w in RESIDUAL_GRID]
    if not taus:
        return 1.0, {"grid": list(RESIDUAL_GRID), "chosen": 1.0, "why": "no group could be held out"}
    judges = [k for k in taus if veto[groups == int(k)].all()] or list(taus)
    table = np.asarray([taus[k] for k in judges])  # judging groups x weights
    table = np.where(np.isfinite(table), table, 0.0)
    admissible = (table - table[:, :1]).min(axis=0) >= -RESIDUAL_TOLERANCE
    means = np.where(admissible, table.mean(axis=0), -np.inf)
    chosen = float(RESIDUAL_GRID[int(np.argmax(means))])
    return chosen, {"grid": list(RESIDUAL_GRID), "chosen": chosen, "inner_tau": taus, "judges": judges}


def _fit_member(
    net: nn.Module,
    x: torch.Tensor,
    yt: torch.Tensor,
    gt: torch.Tensor,
    opts: TrainOptions,
    seed: int,
    offset: torch.Tensor | None = None,
) -> None:
    """Fit one MLP; with ``offset`` (the prior's scores), the MLP learns the residual: the loss is taken on
    offset + its score."""
    torch.manual_seed(seed)
    for module in net.modules():  # each member starts from its own seeded initialisation
        if isinstance(module, nn.Linear | PositiveLinear):
            module.reset_parameters()
    optim = torch.optim.AdamW(net.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)
    steps_per_epoch = max(1, -(-len(yt) // opts.batch_size))
    epochs = max(1, min(opts.epochs, opts.max_steps // steps_per_epoch))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(optim, T_max=epochs * steps_per_epoch)
    gen = torch.Generator().manual_seed(seed)
    net.train()
    for _ in range(epochs):
        for idx in minibatches(len(yt), opts.batch_size, gen, min_size=2):
            scores = net(x[idx]).squeeze(-1)
            if offset is not None:
                scores = scores + offset[idx]
            if opts.loss == "ranking":
                loss = ranking_loss(scores, yt[idx], opts.margin, gt[idx])
            else:
                loss = nn.functional.mse_loss(scores, yt[idx])
            backward_step(loss, optim, net.parameters(), scheduler=sched, where="predictor head")
    net.eval()
