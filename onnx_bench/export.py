"""torch.nn.Module -> checked ONNX file, written atomically."""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

import onnx
import torch
from torch import nn

OPSET = 17


def export_onnx(model: nn.Module, path: str | Path, input_shape: tuple[int, ...], *, dynamo: bool = False) -> Path:
    """Export ``model`` in eval mode for a batch-1 input of ``input_shape``; check it; rename into place.

    The legacy exporter is the default (about 0.2 s for a small CNN against 2.5 s for dynamo). The file only
    appears at ``path`` once it passed `onnx.checker`, so a crash never leaves a file that looks complete.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval()
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # the legacy exporter is chosen on purpose
            torch.onnx.export(
                model,
                (torch.zeros(1, *input_shape),),
                tmp_name,
                opset_version=OPSET,
                input_names=["input"],
                output_names=["logits"],
                dynamo=dynamo,
            )
        onnx.checker.check_model(tmp_name, full_check=True)
        os.replace(tmp_name, path)
    finally:
        model.train(was_training)
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
    return path
