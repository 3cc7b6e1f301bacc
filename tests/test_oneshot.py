"""Tests of the one-shot NASNet / DARTS supernet: exact extraction, single-path execution, isolated gradients,
ONNX export of the extracted child."""

from __future__ import annotations

import random

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from nas_ground.errors import UserInputError
from onnx_bench.export import export_bytes
from search_spaces import get_space
from search_spaces.base import InvalidArchitecture
from search_spaces.nasnet import Genotype, NASNetSpace, NetworkCIFAR
from search_spaces.oneshot import InputChannelSelect, MixedEdge, OneShotSupernet
from tests.test_nasnet import covering

OP_SETS = ("nasnet", "darts")
SMALL = {"channels": 8, "layers": 1}


def perturb(module: nn.Module, seed: int) -> None:
    """Move every weight and every BN running statistic away from its initial value."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                assert m.running_mean is not None and m.running_var is not None
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=gen))


def genotypes(space: NASNetSpace, count: int = 4) -> list[Genotype]:
    rng = random.Random(0)
    return [space.sample(rng) for _ in range(count)] + [covering(space)]


def active_candidates(supernet: OneShotSupernet) -> set[str]:
    """Qualified names of the candidate modules on the active path."""
    names = set()
    for name, edge in supernet.named_modules():
        if isinstance(edge, MixedEdge):
            assert edge.choice is not None
            names.add(f"{name}.candidates.{edge.choice[1]}")
    return names


def all_candidates(supernet: OneShotSupernet) -> dict[str, nn.Module]:
    return {
        f"{name}.candidates.{key}": op
        for name, edge in supernet.named_modules()
        if isinstance(edge, MixedEdge)
        for key, op in edge.candidates.items()
    }


def candidate_of(name: str) -> str | None:
    """``cells.K.edges.E.candidates.KEY`` for a parameter or buffer of a candidate, else None."""
    parts = name.split(".")
    return ".".join(parts[:6]) if len(parts) > 6 and parts[4] == "candidates" else None


@pytest.mark.parametrize("op_set", OP_SETS)
def test_extracted_child_equals_the_active_supernet(op_set: str) -> None:
    space = get_space(op_set)
    assert isinstance(space, NASNetSpace)
    supernet = OneShotSupernet(space, **SMALL)
    perturb(supernet, seed=1)
    supernet.eval()
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    widths = set()
    for genotype in genotypes(space):
        supernet.set_active(genotype)
        child = supernet.extract()
        assert isinstance(child, NetworkCIFAR)
        assert not child.training
        with torch.no_grad():
            diff = (supernet(x) - child(x)).abs().max().item()
        assert diff < 1e-5, (space.encode(genotype), diff)
        reference = space.build(genotype, **SMALL, auxiliary=False, drop_path=0.0)
        count = sum(p.numel() for p in child.parameters())
        assert count == sum(p.numel() for p in reference.parameters())
        assert count < sum(p.numel() for p in supernet.parameters())
        widths.add(child.classifier.in_features)
    if op_set == "nasnet":
        assert len(widths) > 1  # the cell output width varied with the genotype, and extraction followed it


def test_extract_of_another_genotype_leaves_the_active_path() -> None:
    space = get_space("nasnet")
    assert isinstance(space, NASNetSpace)
    supernet = OneShotSupernet(space, **SMALL).eval()
    perturb(supernet, seed=3)
    first, second = genotypes(space, count=2)[:2]
    supernet.set_active(first)
    child = supernet.extract(second)
    assert supernet.active == first
    x = torch.randn(2, 3, 32, 32)
    supernet.set_active(second)
    with torch.no_grad():
        assert (supernet(x) - child(x)).abs().max().item() < 1e-5


@pytest.mark.parametrize("op_set", OP_SETS)
def test_forward_runs_only_the_active_ops(op_set: str) -> None:
    space = get_space(op_set)
    assert isinstance(space, NASNetSpace)
    supernet = OneShotSupernet(space, **SMALL)
    calls: dict[str, int] = {}
    for name, op in all_candidates(supernet).items():
        op.register_forward_hook(lambda *_, name=name: calls.__setitem__(name, calls.get(name, 0) + 1))
    x = torch.randn(2, 3, 32, 32)
    rng = random.Random(4)
    for _ in range(4):
        supernet.sample_active(rng)
        calls.clear()
        supernet(x)
        assert calls == dict.fromkeys(active_candidates(supernet), 1)


@pytest.mark.parametrize("op_set", OP_SETS)
def test_a_gradient_step_changes_only_the_active_path(op_set: str) -> None:
    space = get_space(op_set)
    assert isinstance(space, NASNetSpace)
    supernet = OneShotSupernet(space, **SMALL).train()
    perturb(supernet, seed=5)
    rng = random.Random(6)
    for _ in range(4):
        genotype = supernet.sample_active(rng)
        active = active_candidates(supernet)
        before = {name: t.clone() for name, t in supernet.state_dict().items()}
        optimizer = torch.optim.SGD(supernet.parameters(), lr=0.5)
        optimizer.zero_grad(set_to_none=True)
        x = torch.randn(4, 3, 32, 32)
        nn.functional.cross_entropy(supernet(x), torch.tensor([0, 1, 2, 3])).backward()
        for name, p in supernet.named_parameters():
            candidate = candidate_of(name)
            if candidate is not None and candidate not in active:
                assert p.grad is None, name  # never ran (an active op may get none too: a cell nothing reads)
        optimizer.step()
        after = supernet.state_dict()
        changed = {name for name in before if not torch.equal(before[name], after[name])}
        # Weights and BN statistics of unselected ops stay as they were; the active path did learn.
        assert {candidate_of(name) for name in changed} - {None} <= active
        assert any(candidate_of(name) in active for name in changed)
        assert {"stem.0.weight", "classifier.layer.weight", "stem.1.running_mean"} <= changed
        # Input columns (preprocessing, classifier) of blocks the active cells do not concatenate are untouched.
        narrowed = 0
        for name, select in supernet.named_modules():
            if isinstance(select, InputChannelSelect) and select.index is not None:
                narrowed += 1
                for pname, p in select.layer.named_parameters():
                    if p.dim() >= 2:
                        key = f"{name}.layer.{pname}"
                        dropped = torch.ones(p.shape[1], dtype=torch.bool)
                        dropped[select.index] = False
                        assert torch.equal(before[key][:, dropped], after[key][:, dropped]), key
        assert narrowed > 0 or op_set == "darts"  # DARTS cells concatenate every node: nothing is narrowed
        supernet.eval()
        with torch.no_grad():
            assert (supernet(x) - supernet.extract(genotype)(x)).abs().max().item() < 1e-5
        supernet.train()


@pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript-based ONNX export")
@pytest.mark.parametrize("op_set", OP_SETS)
def test_extracted_child_exports_to_onnx(op_set: str) -> None:
    space = get_space(op_set)
    assert isinstance(space, NASNetSpace)
    supernet = OneShotSupernet(space, **SMALL)
    perturb(supernet, seed=7)
    supernet.sample_active(random.Random(8))
    supernet.eval()
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(9))
    data = export_bytes(supernet.extract(), example=x, parity=True)
    onnx.checker.check_model(onnx.load_model_from_string(data), full_check=True)
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        want = supernet(x).numpy()
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_misuse_is_reported() -> None:
    with pytest.raises(UserInputError, match="NASNet-family spaces"):
        OneShotSupernet(get_space("nb201"))  # type: ignore[arg-type]
    space = get_space("darts")
    assert isinstance(space, NASNetSpace)
    with pytest.raises(UserInputError, match="channels must be an integer >= 1, got 0"):
        OneShotSupernet(space, channels=0)
    supernet = OneShotSupernet(space, **SMALL)
    with pytest.raises(RuntimeError, match="no active path"):
        supernet(torch.randn(1, 3, 32, 32))
    with pytest.raises(RuntimeError, match="no active path"):
        supernet.extract()
    with pytest.raises(InvalidArchitecture):
        supernet.set_active(covering(NASNetSpace("nasnet")))  # NASNet ops are not DARTS ops
