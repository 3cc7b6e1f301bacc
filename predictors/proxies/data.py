"""The fixed batch every proxy sees: real data, drawn by a seed, the same for every architecture."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from predictors.proxies import ProxyBatch, ProxyConfig


def image_batch(config: ProxyConfig, data_dir: str | Path | None = None) -> ProxyBatch:
    """``batch_size`` CIFAR-10 training images (normalised) and labels, chosen by ``seed``."""
    from nas_ground.data import load_cifar10, normalize

    data = load_cifar10(data_dir, progress=False)
    idx = np.sort(np.random.default_rng(config.seed).choice(len(data.train_x), config.batch_size, replace=False))
    return ProxyBatch(normalize(data.train_x[idx]), torch.as_tensor(data.train_y[idx], dtype=torch.long), 10)


def text_batch(config: ProxyConfig, max_len: int, data_dir: str | Path | None = None) -> ProxyBatch:
    """``batch_size`` SST-2 training sentences as WordPiece ids padded to ``max_len``, and their labels."""
    from nas_ground.text_data import load_sst2

    data = load_sst2(data_dir, max_len=max_len)
    n = len(data.train_y)
    idx = np.sort(np.random.default_rng(config.seed).choice(n, config.batch_size, replace=False))
    ids = torch.as_tensor(np.asarray(data.train_ids[idx]), dtype=torch.long)
    return ProxyBatch(ids, torch.as_tensor(np.asarray(data.train_y[idx]), dtype=torch.long), 2)


def space_batch(space: Any, config: ProxyConfig, data_dir: str | Path | None = None) -> ProxyBatch:
    """The batch for a search space: SST-2 tokens for text spaces, CIFAR-10 images otherwise."""
    if getattr(space, "modality", "image") == "text":
        return text_batch(config, int(space.max_len), data_dir)
    return image_batch(config, data_dir)
