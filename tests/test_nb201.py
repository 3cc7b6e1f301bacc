"""NB201 space: official strings, round trips, builder faithful to the benchmark's parameter counts."""

from __future__ import annotations

import csv
import itertools
import random
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nas.tables import load_nb201_table
from search_spaces import InvalidArchitecture, get_space
from search_spaces.nb201 import EDGES, OPS

space = get_space("nb201")
cells = st.tuples(*[st.sampled_from(OPS) for _ in EDGES])


@given(cells)
def test_round_trip(cell):
    text = space.encode(cell)
    assert space.decode(text) == cell
    assert text.count("~") == 6 and text.count("+") == 2


def test_all_table_strings_round_trip_exactly(nb201_csv: Path):
    with open(nb201_csv, newline="") as f:
        strings = [row["arch_str"] for row in csv.DictReader(f)]
    assert len(set(strings)) == 15625
    assert {space.encode(space.decode(s)) for s in strings} == set(strings)
    assert len(set(itertools.product(OPS, repeat=6))) == len({space.decode(s) for s in strings})


@pytest.mark.parametrize(
    ("text", "bad"),
    [
        ("|nor_conv_3x3~0|+|nor_conv_3x3~0|conv_7x7~1|+|skip_connect~0|skip_connect~1|none~2|", "conv_7x7"),
        ("|nor_conv_3x3~1|+|nor_conv_3x3~0|none~1|+|skip_connect~0|skip_connect~1|none~2|", "nor_conv_3x3~1"),
        ("|nor_conv_3x3~0|+|nor_conv_3x3~0|+|skip_connect~0|skip_connect~1|none~2|", "|nor_conv_3x3~0|"),
        ("|none~0|+|none~0|none~1|", "2"),
        ("garbage", "garbage"),
    ],
)
def test_decode_rejects_with_the_bad_token(text, bad):
    with pytest.raises(InvalidArchitecture, match=None) as info:
        space.decode(text)
    assert bad in str(info.value)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_mutate_changes_exactly_one_edge(seed):
    rng = random.Random(seed)
    cell = space.sample(rng)
    child = space.mutate(cell, rng)
    space.validate(child)
    assert sum(a != b for a, b in zip(cell, child, strict=True)) == 1


def test_best_cifar10_cell_is_6111(nb201_csv: Path):
    table = load_nb201_table(str(nb201_csv))
    best_arch, best_row = max(table.items(), key=lambda kv: kv[1]["nb201v11_cifar10_test_acc"])
    assert int(best_row["nb201_index"]) == 6111
    assert round(best_row["nb201v11_cifar10_test_acc"], 2) == 94.37
    assert space.decode(best_arch) == (
        "nor_conv_3x3",
        "nor_conv_3x3",
        "nor_conv_3x3",
        "skip_connect",
        "nor_conv_3x3",
        "nor_conv_1x1",
    )


def test_builder_matches_benchmark_parameter_counts(nb201_csv: Path):
    table = load_nb201_table(str(nb201_csv))
    rng = random.Random(1)
    for arch_str in rng.sample(sorted(table), 12):
        model = space.build(space.decode(arch_str))
        n = sum(p.numel() for p in model.parameters())
        assert n / 1e6 == pytest.approx(table[arch_str]["params_M"], abs=1e-5), arch_str


def test_forward_shapes_and_zero_cell():
    rng = random.Random(0)
    x = torch.randn(2, 3, 32, 32)
    for _ in range(4):
        model = space.build(space.sample(rng), channels=8, cells_per_stage=1).eval()
        assert model(x).shape == (2, 10)
    # An all-`none` cell passes nothing through the cells: the output cannot depend on the input.
    dead = space.build(("none",) * 6, channels=8, cells_per_stage=1).eval()
    assert torch.allclose(dead(x)[0], dead(torch.randn(2, 3, 32, 32))[0])


def test_suggest_with_optuna_is_seeded():
    import optuna

    def first(seed: int):
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
        return space.suggest(study.ask())

    assert first(3) == first(3)
    space.validate(first(3))
