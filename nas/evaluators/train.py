"""``train``: each candidate trained on CIFAR-10 (or SST-2 for a text space); its weights kept for the front."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nas.evaluators import register
from nas.evaluators.base import BUILD_KEYS, TEXT_BUILD_KEYS, TrialFailed, profile, weights_path
from nas.text_train import TextTrainConfig, text_accuracy, text_train_config, train_text_model
from nas.train import TrainConfig, Trainer, evaluate_accuracy, resolve_device, train_model
from nas_ground.atomic import atomic_path
from nas_ground.data import ImageData
from nas_ground.errors import UserInputError
from nas_ground.text_data import SST2
from nas_ground.training import Diverged
from search_spaces import SearchSpace
from search_spaces.base import example_input


@register("train")
class TrainEvaluator:
    """Train each candidate on a subset of an image data set (``dataset``: CIFAR-10 by default, CIFAR-100, a folder
    or an ``.npz`` file, see `nas_ground.datasets`); report validation accuracy, params, FLOPs, CPU latency. The
    networks are built for the data's classes and image size.

    For a text space (``modality = "text"``) the data set is SST-2 (`nas.text_train`: AdamW, dev accuracy);
    the metrics keep their names, ``accuracy`` in percent on the dev sentences.
    """

    metrics: tuple[str, ...] = ("accuracy", "params", "flops", "latency_ms", "train_seconds", "train_loss")

    def __init__(
        self,
        space: SearchSpace[Any],
        *,
        data_dir: str | None = None,
        artifacts_dir: str | None = None,
        test_images: int = 10_000,
        dataset: str = "cifar10",
        **options: Any,
    ) -> None:
        from nas_ground.datasets import load_image_data

        self.space = space
        self.artifacts_dir = Path(artifacts_dir) if artifacts_dir else None
        if getattr(space, "modality", "image") == "text":
            if dataset != "cifar10":
                raise UserInputError(f"dataset={dataset!r}: the text space {space.name} trains on SST-2 only")
            self._init_text(data_dir, test_images, options)
            return
        self.build_options = {k: options.pop(k) for k in BUILD_KEYS if k in options}
        train_keys = set(TrainConfig.__dataclass_fields__)
        unknown = sorted(set(options) - train_keys)
        if unknown:
            valid = ", ".join(sorted(train_keys | set(BUILD_KEYS) | {"dataset", "test_images"}))
            raise UserInputError(f"unknown train evaluator option {unknown[0]!r}; valid: {valid}")
        self.config: TrainConfig | TextTrainConfig = TrainConfig(**options)
        data = load_image_data(dataset, data_dir)
        self.data: ImageData | SST2 = data
        adapt_space(space, data)
        self.build_options.setdefault("num_classes", data.num_classes)
        if not test_images >= 1:
            raise UserInputError(f"test_images={test_images} must be >= 1")
        self.test_images = min(test_images, len(data.test_x))
        self.build(space.sample(random.Random(0)))  # bad build options fail here, not mid-run

    def _init_text(self, data_dir: str | None, test_images: int, options: dict[str, Any]) -> None:
        """SST-2 at the space's sequence length; the CLI's image-named budget options count sentences."""
        from nas_ground.text_data import load_sst2

        self.build_options = {k: options.pop(k) for k in TEXT_BUILD_KEYS if k in options}
        self.config = text_train_config(options)
        self.data = load_sst2(data_dir, max_len=self.space.max_len)  # type: ignore[attr-defined]
        if test_images < 1:
            raise UserInputError(f"test_images={test_images} must be >= 1")
        self.test_images = min(test_images, len(self.data.test_y))  # SST-2 test: 1,821 sentences
        self.build(self.space.sample(random.Random(0)))

    def build(self, arch: Any, seed: int | None = None) -> nn.Module:
        """The untrained network, its initial weights seeded by ``seed`` (default: the training config's)."""
        torch.manual_seed(self.config.seed if seed is None else seed)
        return self.space.build(arch, **self.build_options)

    def evaluate(self, arch: Any, *, seed: int | None = None) -> dict[str, float]:
        model = self.build(arch, seed)
        return {**profile(model, example_input(self.space)), **self.fit(arch, model, seed)}

    def fit(self, arch: Any, model: nn.Module, seed: int | None = None) -> dict[str, float]:
        """Train ``model`` (built by `build`) with data order and augmentation seeded by ``seed``; save its weights;
        accuracy, seconds and loss."""
        config = self.config if seed is None else dataclasses.replace(self.config, seed=seed)
        try:
            if isinstance(self.data, SST2) and isinstance(config, TextTrainConfig):
                result: Any = train_text_model(model, self.data, config)
            else:
                assert isinstance(self.data, ImageData) and isinstance(config, TrainConfig)
                result = train_model(model, self.data, config)
        except Diverged as exc:
            raise TrialFailed(f"diverged: {exc}") from exc
        if self.artifacts_dir is not None:
            with atomic_path(weights_path(self.artifacts_dir, self.space.encode(arch))) as tmp:
                torch.save(model.cpu().state_dict(), tmp)
        return {"accuracy": result.val_accuracy, "train_seconds": result.seconds, "train_loss": result.train_loss}

    def evaluate_rung(
        self, arch: Any, *, seed: int | None, budget: int, top: int, first: bool, checkpoint: Path
    ) -> dict[str, float]:
        """Multi-fidelity (`nas.search.fidelity`): train ``arch`` until ``budget`` epochs of a ``top``-epoch schedule
        (the cosine schedule and drop path span the top rung, so a candidate that reaches it has trained exactly as a
        single ``top``-epoch evaluation would), continuing from ``checkpoint`` when it holds this candidate's state,
        and writing it after every epoch. ``first``: the candidate's first rung, which also measures the untrained
        costs (params, FLOPs, latency). ``resumed_from`` says how many epochs came from the checkpoint."""
        if isinstance(self.data, SST2) or not isinstance(self.config, TrainConfig):
            raise TrialFailed("multi-fidelity training is for image spaces")
        model = self.build(arch, seed)
        metrics = profile(model, example_input(self.space)) if first else {}
        config = dataclasses.replace(self.config, seed=self.config.seed if seed is None else seed, epochs=top)
        trainer = Trainer(model, self.data, config)
        key: dict[str, Any] = {"arch": self.space.encode(arch), "seed": config.seed, "top": top}
        state = _load_checkpoint(checkpoint, key)
        if state is not None:
            trainer.load_state_dict(state)
        resumed = trainer.epoch
        try:
            while trainer.epoch < budget:
                trainer.run_epoch()
                with atomic_path(checkpoint) as tmp:
                    torch.save({**key, "trainer": trainer.state_dict()}, tmp)
        except Diverged as exc:
            raise TrialFailed(f"diverged: {exc}") from exc
        result = trainer.result()
        if self.artifacts_dir is not None:
            with atomic_path(weights_path(self.artifacts_dir, key["arch"])) as tmp:
                torch.save({k: v.detach().cpu() for k, v in trainer.eval_model().state_dict().items()}, tmp)
        return {
            **metrics,
            "accuracy": result.val_accuracy,
            "train_seconds": trainer.seconds,
            "train_loss": trainer.last_loss,
            "rung": float(budget),
            "resumed_from": float(resumed),
        }

    def model(self, arch: Any) -> nn.Module:
        model = self.build(arch)
        if self.artifacts_dir is not None:
            path = weights_path(self.artifacts_dir, self.space.encode(arch))
            if path.exists():
                model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()

    def artifacts(self, arch: Any) -> list[Path]:
        """The files `evaluate` writes for ``arch`` (its trained weights), which the front's export needs."""
        return [] if self.artifacts_dir is None else [weights_path(self.artifacts_dir, self.space.encode(arch))]

    def final_metrics(self, arch: Any) -> dict[str, float]:
        """Test accuracy on the first ``test_images`` CIFAR-10 test images (all 10,000 by default; SST-2: all
        1,821 test sentences), from the weights saved by evaluate()."""
        if self.artifacts_dir is None:
            return {}
        path = weights_path(self.artifacts_dir, self.space.encode(arch))
        if not path.exists():
            return {}
        model = self.model(arch).to(resolve_device(self.config.device))
        n, data = self.test_images, self.data
        if isinstance(data, SST2):
            return {"test_accuracy": text_accuracy(model, data.test_ids[:n], data.test_mask[:n], data.test_y[:n])}
        return {
            "test_accuracy": evaluate_accuracy(model, data.test_x[:n], data.test_y[:n], mean=data.mean, std=data.std)
        }


def _load_checkpoint(path: Path, key: dict[str, Any]) -> dict[str, Any] | None:
    """The trainer state in ``path`` when it is this candidate's (architecture, seed, top rung), else None (no file,
    another candidate's, or unreadable: training starts from zero)."""
    if not path.is_file():
        return None
    try:
        saved = torch.load(path, weights_only=True)
    except Exception:  # a torn or foreign file is not a reason to fail the trial: retrain from zero
        return None
    if not isinstance(saved, dict) or any(saved.get(k) != v for k, v in key.items()):
        return None
    state: dict[str, Any] = saved["trainer"]
    return state


def adapt_space(space: SearchSpace[Any], data: ImageData) -> None:
    """Make ``space`` describe networks for ``data``'s images: its ``input_shape`` (what profiling, export and the
    example input use) becomes theirs. The classifier follows from the ``num_classes`` build option."""
    if tuple(space.input_shape) != data.input_shape:
        space.input_shape = data.input_shape  # type: ignore[misc]
