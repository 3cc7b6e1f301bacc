"""``nas train``: one chosen network trained for real, checkpointed every epoch, exported as float (and int8) ONNX.

The network comes from a finished search (a Pareto member of its run directory) or from a space and an encoded
architecture; it is built larger than during the search (``cells``, ``channels``) and trained with the NASNet/DARTS
recipe where it applies: cosine schedule, cutout, ScheduledDropPath and an auxiliary head; label smoothing and an EMA
of the weights as options. Everything lands in one output folder:

- ``checkpoint.pt``: written after every epoch; the same command resumes from it.
- ``model.onnx``: the trained network (EMA weights when on), checked by ``onnx.checker``, onnxruntime parity tested.
- ``model.int8.onnx`` (``int8``): statically quantised by onnxruntime, calibrated on training images.
- ``metrics.json``: validation and test accuracy, images/s, the data's normalisation, int8 accuracy and latency.
"""

from __future__ import annotations

import json
import logging
import math
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from nas.evaluators.train import adapt_space
from nas.train import TrainConfig, Trainer, resolve_device
from nas_ground.atomic import atomic_path, atomic_write
from nas_ground.data import ImageData, normalize
from nas_ground.errors import UserInputError
from search_spaces import SearchSpace, get_space
from search_spaces.base import arch_digest, example_input

logger = logging.getLogger(__name__)

# How ``cells`` and ``channels`` reach each space's builder, and the spaces the cell recipe (drop path, auxiliary
# head) applies to.
DEPTH_KEY = {"nasnet": "layers", "darts": "layers", "nb201": "cells_per_stage"}
CELL_SPACES = ("nasnet", "darts")
CALIBRATION_IMAGES = 256
CHECKPOINT = "checkpoint.pt"


@dataclass
class FinalSpec:
    """What to train, on what, how: everything a resume must find unchanged."""

    space: str
    arch: str
    dataset: str = "cifar10"
    space_options: dict[str, Any] = field(default_factory=dict)
    build: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    source: str | None = None  # "RUN_DIR trial N" for a Pareto member


def member_spec(run_dir: Path, member: str) -> tuple[FinalSpec, dict[str, Any]]:
    """The spec of Pareto member ``member`` (its trial number or short id) of a finished search in ``run_dir``, and
    the search's build options (channels, cells) as defaults."""
    pareto, config = run_dir / "pareto.json", run_dir / "config.yaml"
    if not pareto.is_file() or not config.is_file():
        raise UserInputError(f"{run_dir} holds no finished search (pareto.json and config.yaml expected)")
    try:
        members = json.loads(pareto.read_text())["members"]
        cfg = yaml.safe_load(config.read_text())
    except (OSError, ValueError, KeyError, TypeError, yaml.YAMLError) as exc:
        raise UserInputError(f"cannot read the search in {run_dir}: {str(exc).splitlines()[0]}") from exc
    chosen = [
        m
        for m in members
        if member == str(m["trial"]) or (len(member) >= 4 and arch_digest(m["arch"]).startswith(member))
    ]
    if len(chosen) != 1:
        valid = ", ".join(f"{m['trial']} ({arch_digest(m['arch'])[:8]})" for m in members)
        raise UserInputError(f"member {member!r} is not one Pareto member of {run_dir}; valid: {valid}")
    options = dict(cfg.get("evaluator_options") or {})
    build = {k: options[k] for k in ("channels", "layers", "cells_per_stage") if k in options}
    spec = FinalSpec(
        space=cfg["space"],
        arch=chosen[0]["arch"],
        dataset=cfg.get("dataset", "cifar10"),
        space_options=dict(cfg.get("space_options") or {}),
        source=f"{run_dir} trial {chosen[0]['trial']}",
    )
    return spec, build


def build_options(space: str, *, cells: int | None, channels: int | None, auxiliary: bool) -> dict[str, Any]:
    """The builder options of ``space`` for ``cells`` (normal cells per stage) and ``channels`` (initial width)."""
    options: dict[str, Any] = {}
    for name, value in (("cells", cells), ("channels", channels)):
        if value is None:
            continue
        if space not in DEPTH_KEY:
            raise UserInputError(f"--{name} applies to {', '.join(DEPTH_KEY)}, not to space {space!r}")
        if value < 1:
            raise UserInputError(f"--{name}={value} must be >= 1")
        options[DEPTH_KEY[space] if name == "cells" else "channels"] = value
    if space in CELL_SPACES:
        options["auxiliary"] = auxiliary
    return options


class FinalTraining:
    """Train ``spec`` into ``out_dir``; `run` resumes from the checkpoint there and is a no-op once finished."""

    def __init__(self, spec: FinalSpec, out_dir: Path, *, data_dir: str | None = None) -> None:
        from nas_ground.datasets import load_image_data

        self.spec, self.out_dir = spec, out_dir
        self.space: SearchSpace[Any] = get_space(spec.space, **spec.space_options)
        self.arch = self.space.decode(spec.arch)
        self.data: ImageData = load_image_data(spec.dataset, data_dir)
        adapt_space(self.space, self.data)
        self.cfg = TrainConfig(**spec.train)
        if self.cfg.drop_path and spec.space not in CELL_SPACES:
            raise UserInputError(f"drop_path applies to {', '.join(CELL_SPACES)}, not to space {spec.space!r}")
        torch.manual_seed(self.cfg.seed)
        self.model = self.space.build(self.arch, num_classes=self.data.num_classes, **spec.build)
        self.trainer = Trainer(self.model, self.data, self.cfg)
        self.history: list[dict[str, float]] = []
        self._resume()

    @property
    def checkpoint(self) -> Path:
        return self.out_dir / CHECKPOINT

    def _identity(self) -> dict[str, Any]:
        return {**asdict(self.spec), "source": None}

    def _resume(self) -> None:
        if not self.checkpoint.exists():
            return
        try:
            state = torch.load(self.checkpoint, weights_only=False, map_location="cpu")
        except Exception as exc:  # a truncated or foreign file: torch raises many kinds
            raise UserInputError(f"cannot read checkpoint {self.checkpoint}: {str(exc).splitlines()[0]}") from exc
        if state.get("spec") != self._identity():
            raise UserInputError(
                f"{self.out_dir} holds the training of another network or recipe ({state.get('spec', {}).get('arch')}"
                "); use another --out"
            )
        self.trainer.load_state_dict(state["trainer"])
        self.history = list(state["history"])

    def _save(self) -> None:
        state = {"spec": self._identity(), "trainer": self.trainer.state_dict(), "history": self.history}
        with atomic_path(self.checkpoint) as tmp:
            torch.save(state, tmp)

    def run(self, on_epoch: Callable[[dict[str, float]], None] | None = None, *, int8: bool = False) -> dict[str, Any]:
        """Train the remaining epochs (a checkpoint after each), then export and measure; returns ``metrics.json``."""
        while self.trainer.epoch < self.cfg.epochs:
            loss = self.trainer.run_epoch()
            row = {
                "epoch": self.trainer.epoch,
                "train_loss": loss,
                "val_accuracy": self.trainer.val_accuracy(),
                "seconds": self.trainer.seconds,
            }
            self.history.append(row)
            self._save()
            if on_epoch is not None:
                on_epoch(row)
        metrics_path = self.out_dir / "metrics.json"
        if metrics_path.exists():
            metrics: dict[str, Any] = json.loads(metrics_path.read_text())
            if not int8 or "int8" in metrics:
                return metrics
        else:
            metrics = self._float_metrics()
        if int8:
            metrics["int8"] = self._int8_metrics()
        atomic_write(metrics_path, json.dumps(metrics, indent=2) + "\n")
        return metrics

    def _float_metrics(self) -> dict[str, Any]:
        from nas_ground.cost import count_flops, count_params
        from onnx_bench.deploy import onnx_parity
        from onnx_bench.export import export_onnx

        trainer, data = self.trainer, self.data
        model = trainer.eval_model()
        test_accuracy = trainer.accuracy(data.test_x, data.test_y)
        cpu_model = model.cpu().eval()
        example = example_input(self.space)
        onnx_path = export_onnx(cpu_model, self.out_dir / "model.onnx", example, parity=True)
        with atomic_path(self.out_dir / "weights.pt") as tmp:
            torch.save(cpu_model.state_dict(), tmp)
        return {
            "spec": asdict(self.spec),
            "device": str(trainer.device),
            "machine": platform.node(),
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "epochs": trainer.epoch,
            "train_images": len(trainer.train_idx),
            "val_images": len(trainer.val_idx),
            "test_images": len(data.test_x),
            "params": count_params(cpu_model),
            "flops": count_flops(cpu_model, example),
            "val_accuracy": self.history[-1]["val_accuracy"] if self.history else trainer.val_accuracy(),
            "test_accuracy": test_accuracy,
            "train_seconds": trainer.seconds,
            "images_per_s": trainer.seen / max(trainer.seconds, 1e-9),
            "history": self.history,
            "data": data.summary(),
            "onnx": onnx_path.name,
            "onnx_parity_max_abs": onnx_parity(onnx_path, cpu_model, example),
        }

    def _int8_metrics(self) -> dict[str, Any]:
        """Static int8 quantisation calibrated on training images; accuracy on the test set and batch-1 CPU latency
        of both files, measured the same way."""
        from onnx_bench.deploy import onnx_accuracy, onnx_latency_ms, quantize_int8

        data, trainer = self.data, self.trainer
        float_path, int8_path = self.out_dir / "model.onnx", self.out_dir / "model.int8.onnx"
        pick = np.sort(np.random.default_rng(self.cfg.seed).permutation(trainer.train_idx)[:CALIBRATION_IMAGES])
        calibration = normalize(data.train_x[pick], data.mean, data.std).numpy()
        quantize_int8(float_path, int8_path, calibration)
        x_test = normalize(data.test_x, data.mean, data.std).numpy()
        example = calibration[:1]
        float_acc = onnx_accuracy(float_path, x_test, data.test_y)
        int8_acc = onnx_accuracy(int8_path, x_test, data.test_y)
        float_ms = onnx_latency_ms(float_path, example)
        int8_ms = onnx_latency_ms(int8_path, example)
        return {
            "onnx": int8_path.name,
            "calibration_images": len(calibration),
            "float_onnx_test_accuracy": float_acc,
            "int8_test_accuracy": int8_acc,
            "accuracy_drop": float_acc - int8_acc,
            "float_latency_ms": float_ms,
            "int8_latency_ms": int8_ms,
            "speedup": float_ms / int8_ms if int8_ms > 0 else math.nan,
            "float_bytes": float_path.stat().st_size,
            "int8_bytes": int8_path.stat().st_size,
            "latency": "median batch-1 onnxruntime CPU forward, 1 thread",
        }


def default_out_dir(spec: FinalSpec) -> Path:
    return Path("runs") / f"train-{spec.space}-{arch_digest(spec.arch)[:8]}" / "final"


def describe_device(device: str) -> str:
    """A line saying where training runs: the device and, on CUDA, its name and the precision."""
    resolved = resolve_device(device)
    if resolved.type == "cuda":
        return f"{resolved} ({torch.cuda.get_device_name(resolved)}), bf16 autocast, channels_last"
    return f"cpu ({torch.get_num_threads()} threads), float32"
