"""Fine-tune the sentence-transformers encoder on a predictor's training texts (meant for a GPU).

The encoder and a temporary linear scorer on its embedding are trained together with the predictor's pairwise
margin ranking loss (pairs within a group only, standardised targets); long texts are embedded window by window
and token-weighted mean-pooled exactly as `predictors.encoder.Encoder` does, so training sees what scoring sees.
The result is a plain sentence-transformers model directory, written to a temporary directory and renamed into
place; a predictor trained on its embeddings names that directory as its encoder (the embedding cache keys on
the encoder's weights, so fine-tuned and stock embeddings, or two fine-tunings into one directory, never mix).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from nas_ground.errors import UserInputError
from nas_ground.training import backward_step, minibatches
from predictors.encoder import Encoder
from predictors.predictor import ranking_loss


@dataclass
class FinetuneOptions:
    epochs: int = 1
    batch_size: int = 16
    lr: float = 2e-5  # encoder
    head_lr: float = 1e-3  # temporary linear scorer
    margin: float = 0.1
    seed: int = 0
    device: str | None = None  # default: cuda when available, else cpu

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 2:
            raise UserInputError(f"finetune epochs={self.epochs} and batch_size={self.batch_size}: need >= 1, >= 2")


def finetune_encoder(
    encoder: Encoder,
    texts: Sequence[str],
    targets: Sequence[float] | np.ndarray,
    out_dir: str | Path,
    options: FinetuneOptions | None = None,
    groups: Sequence[int] | np.ndarray | None = None,
) -> Path:
    """Fine-tune ``encoder``'s model on (text, target) pairs and save it to ``out_dir``; returns the directory."""
    opts = options or FinetuneOptions()
    y = np.asarray(targets, dtype=np.float64)
    if len(y) != len(texts) or len(y) < 2:
        raise UserInputError(f"fine-tuning needs >= 2 aligned texts and targets, got {len(texts)} and {len(y)}")
    g = np.zeros(len(y), dtype=np.int64) if groups is None else np.asarray(groups, dtype=np.int64)
    z = np.empty_like(y)
    for label in np.unique(g):
        sel = g == label
        z[sel] = (y[sel] - y[sel].mean()) / (y[sel].std() or 1.0)
    device = opts.device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(opts.seed)
    model = encoder.model.to(device)
    windows = [encoder.windows(t) for t in texts]
    scorer = torch.nn.Linear(encoder.dim, 1).to(device)
    optim = torch.optim.AdamW(
        [{"params": model.parameters(), "lr": opts.lr}, {"params": scorer.parameters(), "lr": opts.head_lr}]
    )
    zt = torch.as_tensor(z, dtype=torch.float32, device=device)
    gt = torch.as_tensor(g, device=device)
    gen = torch.Generator().manual_seed(opts.seed)
    model.train()
    params = [*model.parameters(), *scorer.parameters()]
    for _ in range(opts.epochs):
        for batch in minibatches(len(y), opts.batch_size, gen, min_size=2):
            idx = batch.tolist()
            emb = _pooled(model, [windows[i] for i in idx], device)
            loss = ranking_loss(scorer(emb).squeeze(-1), zt[idx], opts.margin, gt[idx])
            backward_step(loss, optim, params, where="encoder fine-tuning")
    model.eval()
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        model.to("cpu").save(str(tmp))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    encoder._model = None  # the stock model was changed in place: load it afresh if used again
    return out


def _pooled(model: torch.nn.Module, texts: list[list[tuple[str, int]]], device: str) -> torch.Tensor:
    """Token-weighted mean of the window embeddings of each text, L2-normalised (as `Encoder.encode`)."""
    pieces = [p for windows in texts for p, _ in windows]
    weights = torch.tensor([max(n, 1) for windows in texts for _, n in windows], dtype=torch.float32, device=device)
    owner = torch.tensor([i for i, windows in enumerate(texts) for _ in windows], device=device)
    prepare = getattr(model, "preprocess", None) or model.tokenize  # newer sentence-transformers: preprocess
    features = prepare(pieces)  # type: ignore[operator]
    features = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in features.items()}
    vecs = model(features)["sentence_embedding"]
    sums = torch.zeros(len(texts), vecs.shape[1], device=device).index_add(0, owner, vecs * weights[:, None])
    return torch.nn.functional.normalize(sums, dim=1)
