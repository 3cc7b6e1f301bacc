"""Tests of the NASNet and DARTS cell spaces: text form, sampling, mutation, Optuna, network, ONNX export."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import optuna
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nas_ground.errors import UserInputError
from search_spaces import get_space
from search_spaces.base import InvalidArchitecture
from search_spaces.nasnet import (
    DARTS_OPS,
    NASNET_OPS,
    Block,
    Genotype,
    NASNetSpace,
    NetworkCIFAR,
    concat_states,
)

OP_SETS = ("nasnet", "darts")
seeds = st.integers(min_value=0, max_value=2**32 - 1)
op_sets = st.sampled_from(OP_SETS)


def covering(space: NASNetSpace) -> Genotype:
    """A genotype using every op of the space, each cell reading both cell inputs and earlier blocks."""
    ops = space.spec.ops
    edges = 2 * space.spec.blocks
    cells = []
    for shift in (0, len(ops) - edges % len(ops)):  # the reduction cell gets the ops the normal cell missed
        names = [ops[(shift + k) % len(ops)] for k in range(edges)]
        inputs = [(0, 1)] + [(b % 2, b + 1) for b in range(1, space.spec.blocks)]
        cells.append(tuple(Block(i, names[2 * b], j, names[2 * b + 1]) for b, (i, j) in enumerate(inputs)))
    return Genotype(*cells)


def choices(arch: Genotype) -> list[object]:
    return [value for cell in (arch.normal, arch.reduce) for block in cell for value in block]


def test_registry_gives_both_op_sets() -> None:
    nasnet, darts = get_space("nasnet"), get_space("darts")
    assert isinstance(nasnet, NASNetSpace)
    assert isinstance(darts, NASNetSpace)
    assert (nasnet.name, nasnet.spec.ops) == ("nasnet", NASNET_OPS)
    assert (darts.name, darts.spec.ops) == ("darts", DARTS_OPS)


def test_unknown_op_set_names_it_and_the_valid_ones() -> None:
    with pytest.raises(UserInputError, match="enas.*nasnet, darts"):
        NASNetSpace(op_set="enas")


def test_covering_uses_every_op() -> None:
    for op_set in OP_SETS:
        space = NASNetSpace(op_set)
        arch = covering(space)
        space.validate(arch)
        assert set(choices(arch)) >= set(space.spec.ops)


def test_encoding_format() -> None:
    darts_v2 = Genotype(
        normal=(
            Block(0, "sep_conv_3x3", 1, "sep_conv_3x3"),
            Block(0, "sep_conv_3x3", 1, "sep_conv_3x3"),
            Block(1, "sep_conv_3x3", 0, "skip_connect"),
            Block(0, "skip_connect", 2, "dil_conv_3x3"),
        ),
        reduce=(
            Block(0, "max_pool_3x3", 1, "max_pool_3x3"),
            Block(2, "skip_connect", 1, "max_pool_3x3"),
            Block(0, "max_pool_3x3", 2, "skip_connect"),
            Block(2, "skip_connect", 1, "max_pool_3x3"),
        ),
    )
    text = (
        "normal=sep_conv_3x3~0+sep_conv_3x3~1|sep_conv_3x3~0+sep_conv_3x3~1|sep_conv_3x3~1+skip_connect~0"
        "|skip_connect~0+dil_conv_3x3~2;reduce=max_pool_3x3~0+max_pool_3x3~1|skip_connect~2+max_pool_3x3~1"
        "|max_pool_3x3~0+skip_connect~2|skip_connect~2+max_pool_3x3~1"
    )
    darts = NASNetSpace("darts")
    assert darts.encode(darts_v2) == text
    assert darts.decode(text) == darts_v2
    assert darts.decode(f"  {text}\n") == darts_v2


@settings(max_examples=60, deadline=None)
@given(seed=seeds, op_set=op_sets)
def test_sample_round_trips_and_validates(seed: int, op_set: str) -> None:
    space = NASNetSpace(op_set)
    arch = space.sample(random.Random(seed))
    space.validate(arch)
    text = space.encode(arch)
    assert space.decode(text) == arch
    assert space.encode(space.decode(text)) == text
    assert hash(space.decode(text)) == hash(arch)
    assert arch == space.sample(random.Random(seed))


@settings(max_examples=60, deadline=None)
@given(seed=seeds, op_set=op_sets)
def test_mutate_changes_exactly_one_choice(seed: int, op_set: str) -> None:
    space = NASNetSpace(op_set)
    rng = random.Random(seed)
    arch = space.sample(rng)
    child = space.mutate(arch, rng)
    space.validate(child)
    assert child != arch
    assert sum(a != b for a, b in zip(choices(arch), choices(child), strict=True)) == 1


def test_mutate_reaches_inputs_and_ops_and_both_cells() -> None:
    space = NASNetSpace("darts")
    arch = space.sample(random.Random(0))
    changed = set()
    rng = random.Random(1)
    for _ in range(200):
        child = space.mutate(arch, rng)
        for cell in ("normal", "reduce"):
            for old, new in zip(getattr(arch, cell), getattr(child, cell), strict=True):
                changed |= {(cell, field) for field in Block._fields if getattr(old, field) != getattr(new, field)}
    assert changed == {(cell, field) for cell in ("normal", "reduce") for field in Block._fields}


def _valid_text(op_set: str) -> str:
    space = NASNetSpace(op_set)
    return space.encode(covering(space))


@pytest.mark.parametrize(
    ("op_set", "text", "token"),
    [
        ("nasnet", _valid_text("nasnet").replace("identity", "conv_9x9", 1), "'conv_9x9'"),
        ("darts", _valid_text("darts").replace("sep_conv_3x3", "identity", 1), "'identity'"),
        ("nasnet", "normal=identity~2+" + _valid_text("nasnet").split("+", 1)[1], "input 2"),
        ("nasnet", _valid_text("nasnet").replace("~3", "~7", 1), "input 7"),
        ("nasnet", _valid_text("nasnet").replace("|", "", 1), "malformed block"),
        ("nasnet", _valid_text("nasnet").replace("~0", "-0", 1), "malformed edge 'identity-0'"),
        ("nasnet", _valid_text("nasnet").rsplit("|", 1)[0], "reduce cell has 4 blocks"),
        ("darts", _valid_text("darts") + "|none~0+none~1", "reduce cell has 5 blocks"),
        ("darts", "normal=none~0+none~0|" + _valid_text("darts").split("|", 1)[1], "input 0 used twice"),
        ("nasnet", "garbage", "'garbage'"),
        ("nasnet", "", "''"),
        ("nasnet", _valid_text("nasnet").replace(";", "|"), "expected 'normal=...;reduce=...'"),
        ("nasnet", _valid_text("nasnet").replace("normal=", "norml=", 1), "norml="),
        ("nasnet", _valid_text("nasnet").replace("~0", "~00", 1), "~00"),
        ("nasnet", _valid_text("nasnet").replace("~1", "~-1", 1), "~-1"),
        ("nasnet", _valid_text("nasnet").replace("+", "+identity~0+", 1), "malformed block"),
    ],
)
def test_decode_rejects_with_the_bad_token(op_set: str, text: str, token: str) -> None:
    with pytest.raises(InvalidArchitecture) as info:
        NASNetSpace(op_set).decode(text)
    message = str(info.value)
    assert token in message
    assert "\n" not in message


def test_validate_rejects_bad_values() -> None:
    space = NASNetSpace("nasnet")
    arch = covering(space)
    bad = [
        "normal=...",
        dataclasses.replace(arch, normal=arch.normal[:4]),
        dataclasses.replace(arch, reduce=(Block(0, "identity", True, "identity"), *arch.reduce[1:])),
        dataclasses.replace(arch, reduce=(*arch.reduce[:4], Block(0, "identity", 6, "identity"))),
        dataclasses.replace(arch, normal=(Block(0, "zero", 1, "identity"), *arch.normal[1:])),
    ]
    for value in bad:
        with pytest.raises(InvalidArchitecture):
            space.validate(value)  # type: ignore[arg-type]
        with pytest.raises(InvalidArchitecture):
            space.encode(value)  # type: ignore[arg-type]


def _suggest_with(space: NASNetSpace, seed: int, n: int) -> tuple[list[Genotype], list[optuna.trial.Trial]]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    archs, trials = [], []
    for _ in range(n):
        trial = study.ask()
        arch = space.suggest(trial)
        space.validate(arch)
        archs.append(arch)
        trials.append(trial)
        study.tell(trial, 0.0)
    return archs, trials


@pytest.mark.parametrize("op_set", OP_SETS)
def test_suggest_is_static_and_seeded(op_set: str) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = NASNetSpace(op_set)
    archs, first = _suggest_with(space, seed=0, n=8)
    assert _suggest_with(space, seed=0, n=1)[0] == archs[:1]
    assert len(set(archs)) == len(archs)
    assert len({str(sorted(t.distributions.items())) for t in first}) == 1  # same names and choices
    assert len({str(sorted(t.params.items())) for t in first}) == len(first)
    per_block = 3 if op_set == "darts" else 4
    assert len(first[0].params) == 2 * space.spec.blocks * per_block


def _cell_outputs(net: NetworkCIFAR, x: torch.Tensor) -> list[tuple[int, ...]]:
    shapes: list[tuple[int, ...]] = []
    hooks = [cell.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape))) for cell in net.cells]
    net(x)
    for hook in hooks:
        hook.remove()
    return shapes


def test_unused_states_are_concatenated() -> None:
    blocks = (
        Block(0, "identity", 1, "conv_1x1"),  # state 2, consumed by block 1
        Block(2, "sep_conv_3x3", 0, "max_pool_3x3"),  # state 3, consumed by block 3
        Block(1, "avg_pool_3x3", 1, "conv_3x3"),  # state 4, consumed by block 3
        Block(3, "identity", 4, "dil_conv_3x3"),  # state 5, unused
        Block(0, "conv_1x3_3x1", 1, "identity"),  # state 6, unused
    )
    assert concat_states(blocks, concat_unused=True) == (5, 6)
    assert concat_states(blocks, concat_unused=False) == (2, 3, 4, 5, 6)
    net = NASNetSpace("nasnet").build(Genotype(blocks, blocks), channels=8, layers=1).eval()
    shapes = _cell_outputs(net, torch.randn(2, 3, 32, 32))
    # cells: normal C=8, reduce C=16, normal C=16, reduce C=32, normal C=32; each concatenates 2 states
    assert shapes == [(2, 16, 32, 32), (2, 32, 16, 16), (2, 32, 16, 16), (2, 64, 8, 8), (2, 64, 8, 8)]


def test_darts_concatenates_all_four_nodes() -> None:
    space = NASNetSpace("darts")
    net = space.build(covering(space), channels=4, layers=1).eval()
    shapes = _cell_outputs(net, torch.randn(1, 3, 32, 32))
    assert [s[1] for s in shapes] == [16, 32, 32, 64, 64]


@pytest.mark.parametrize(("op_set", "op"), [("nasnet", op) for op in NASNET_OPS] + [("darts", "none")])
def test_every_op_runs_with_stride_1_and_2(op_set: str, op: str) -> None:
    space = NASNetSpace(op_set)
    inputs = [(0, 1)] + [(b % 2, b + 1) for b in range(1, space.spec.blocks)]  # cell inputs and blocks
    blocks = tuple(Block(i, op, j, op) for i, j in inputs)
    net = space.build(Genotype(blocks, blocks), channels=4, layers=1).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 3, 32, 32)).shape == (1, 10)


@settings(max_examples=4, deadline=None)
@given(seed=seeds, op_set=op_sets)
def test_forward_shapes(seed: int, op_set: str) -> None:
    space = NASNetSpace(op_set)
    arch = space.sample(random.Random(seed))
    x = torch.randn(2, 3, 32, 32)
    net = space.build(arch, channels=8, layers=1, auxiliary=True)
    net.train()
    logits, aux_logits = net(x)
    assert logits.shape == aux_logits.shape == (2, 10)
    net.eval()
    with torch.no_grad():
        assert net(x).shape == (2, 10)


def test_odd_input_sizes_work() -> None:
    space = NASNetSpace("darts")
    net = space.build(covering(space), channels=4, layers=1, num_classes=3).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 3, 27, 27)).shape == (1, 3)


def test_drop_path_only_in_training() -> None:
    space = NASNetSpace("nasnet")
    net = space.build(covering(space), channels=4, layers=1, drop_path=0.5)
    x = torch.randn(4, 3, 32, 32)

    def run(seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        with torch.no_grad():
            out = net(x)
        assert isinstance(out, torch.Tensor)
        return out

    net.train()
    assert not torch.equal(run(0), run(1))
    net.drop_path = 0.0
    assert torch.equal(run(0), run(1))
    net.drop_path = 0.5
    net.eval()
    assert torch.equal(run(0), run(1))


@pytest.mark.parametrize(
    ("options", "token"),
    [
        ({"channels": 0}, "channels must be an integer >= 1, got 0"),
        ({"layers": 0}, "layers must be an integer >= 1, got 0"),
        ({"layers": 1.5}, "got 1.5"),
        ({"num_classes": 1}, "num_classes must be an integer >= 2, got 1"),
        ({"drop_path": 1.0}, "drop_path must be a probability in [0, 1), got 1.0"),
        ({"drop_path": -0.1}, "got -0.1"),
        ({"stem_multiplier": 0}, "stem_multiplier must be an integer >= 1, got 0"),
        ({"chanels": 8}, "unknown build option(s) chanels"),
    ],
)
def test_build_rejects_bad_options(options: dict[str, Any], token: str) -> None:
    space = NASNetSpace("nasnet")
    with pytest.raises(UserInputError) as info:
        space.build(covering(space), **options)
    assert token in str(info.value)


@pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript-based ONNX export")
@pytest.mark.filterwarnings("ignore:The feature will be removed")
@pytest.mark.filterwarnings("ignore:Constant folding - Only steps=1")
@pytest.mark.parametrize("op_set", OP_SETS)
def test_legacy_onnx_export_matches_torch(op_set: str, tmp_path: Path) -> None:
    space = NASNetSpace(op_set)
    net = space.build(covering(space), channels=8, layers=1).eval()
    x = torch.randn(2, 3, 32, 32)
    path = tmp_path / "net.onnx"
    torch.onnx.export(net, (x,), str(path), dynamo=False, input_names=["x"], output_names=["logits"])
    onnx.checker.check_model(str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"x": x.numpy()})
    with torch.no_grad():
        want = net(x).numpy()
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
