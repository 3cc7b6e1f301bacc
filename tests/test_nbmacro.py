"""NAS-Bench-Macro: canonical strings, a builder faithful to the table's parameter counts, the table evaluator,
bench records and a search through the CLI."""

from __future__ import annotations

import itertools
import json
import random
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import torch

from nas.evaluators import make_evaluator
from nas.tables import load_nbmacro_table
from nas_ground.errors import UserInputError
from onnx_bench.bench import nbmacro_jobs, read_bench
from search_spaces import get_space
from search_spaces.base import InvalidArchitecture
from tests.test_cli import assert_one_line_error, nas

space = get_space("nbmacro")
STAGE_SPANS = ((0, 2), (2, 5), (5, 8))  # the benchmark's 2, 3, 3 searchable layers per stage


def reference_canonical(text: str) -> str:
    """Written from the README, independently of the space: inside a stage, the identities after its first
    (stride-2) layer moved to the stage's end; the first layer stays where it is."""
    out = ""
    for start, end in STAGE_SPANS:
        stage = text[start:end]
        rest = stage[1:].replace("0", "")
        out += stage[0] + rest + "0" * (len(stage) - 1 - len(rest))
    return out


@pytest.fixture(scope="module")
def table(data_dir: Path) -> dict[str, dict[str, Any]]:
    path = data_dir / "nbmacro" / "nas-bench-macro_cifar10.json"
    if not path.is_file():
        pytest.skip(f"{path} missing")
    return load_nbmacro_table(str(path))


@pytest.fixture(scope="module")
def groups(table: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    """Canonical string -> the table's strings of that network."""
    out: dict[str, list[str]] = defaultdict(list)
    for key in table:
        out[space.encode(space.decode(key))].append(key)
    return dict(out)


def meta_params(arch: tuple[int, ...]) -> tuple[int, torch.nn.Module]:
    with torch.device("meta"):
        model = space.build(arch)
    return sum(p.numel() for p in model.parameters()), model


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# --- the table and canonical strings ------------------------------------------------------------------------


def test_3969_networks_each_with_one_record(table, groups):
    assert len(table) == 3**8
    assert set(table) == {"".join(d) for d in itertools.product("012", repeat=8)}
    assert len(groups) == 3969
    for canon, keys in groups.items():
        assert canon in keys  # the canonical string is itself a key of the table
        assert all(table[k] == table[canon] for k in keys), canon
    # Equal networks share a record, and different networks have different records (no accidental merging).
    assert len({json.dumps(table[c], sort_keys=True) for c in groups}) == 3969
    assert table["22212220"]["mean_acc"] == pytest.approx(93.13, abs=0.01)
    assert max(groups, key=lambda c: table[c]["mean_acc"]) == "22212220"


def test_canonical_form_matches_the_readme_for_every_string(table):
    for key in table:
        assert space.encode(space.decode(key)) == reference_canonical(key), key
    # Identities after a stage's first layer move to the stage's end ...
    assert space.decode("20201022") == space.decode("20210022") == (2, 0, 2, 1, 0, 0, 2, 2)
    assert space.encode(space.decode("10011202")) == "10011220"
    # ... but an identity at a stride-2 position (a stage's first digit) is a projection and stays put.
    assert space.encode(space.decode("22022222")) == "22022222"
    assert space.decode("22022222") != space.decode("22220222")
    assert space.encode(space.decode("02200222")) == "02200222"
    assert space.encode(space.decode("02222002")) == "02222020"
    # encode writes the canonical string whatever tuple it is given.
    assert space.encode((2, 0, 2, 0, 1, 0, 2, 2)) == "20210022"


def test_canonical_strings_round_trip(groups):
    for canon in groups:
        arch = space.decode(canon)
        assert space.encode(arch) == canon
        assert space.decode(space.encode(arch)) == arch
    assert space.decode("  22212220\n") == (2, 2, 2, 1, 2, 2, 2, 0)


@pytest.mark.parametrize("text", ["2221222", "22212223", "abc", "", "222122200"])
def test_decode_rejects_malformed_strings_naming_them(text):
    with pytest.raises(InvalidArchitecture) as info:
        space.decode(text)
    assert isinstance(info.value, UserInputError)
    assert repr(text) in str(info.value)


@pytest.mark.parametrize("arch", [(2, 2, 2, 1, 2, 2, 2, 3), (2, 2, 2), [2, 2, 2, 1, 2, 2, 2, 0], "22212220"])
def test_validate_and_build_reject_non_architectures(arch):
    with pytest.raises(InvalidArchitecture, match="NAS-Bench-Macro"):
        space.validate(arch)
    with pytest.raises(InvalidArchitecture):
        space.build(arch)


def test_build_options_are_checked():
    with pytest.raises(UserInputError, match="'channels'"):
        space.build((2,) * 8, channels=16)
    with pytest.raises(UserInputError, match="num_classes"):
        space.build((2,) * 8, num_classes=1)
    with torch.device("meta"):
        assert space.build((2,) * 8, num_classes=100).classifier.out_features == 100


def test_sample_and_mutate_give_canonical_archs_and_mutate_changes_the_network():
    rng = random.Random(0)
    seen = set()
    for _ in range(300):
        arch = space.sample(rng)
        space.validate(arch)
        text = space.encode(arch)
        assert space.decode(text) == arch  # canonical: a fixed point of decode(encode(.))
        assert reference_canonical(text) == text
        child = space.mutate(arch, rng)
        space.validate(child)
        assert space.decode(space.encode(child)) == child
        assert child != arch
        seen.add(text)
    assert len(seen) > 150  # random, not stuck on a few strings
    # A non-canonical parent still yields a different network.
    parent = (2, 0, 2, 0, 1, 0, 2, 2)  # the network 20210022
    for _ in range(50):
        assert space.mutate(parent, rng) != space.decode("20210022")


def test_suggest_with_optuna_is_canonical_and_seeded():
    import optuna

    def first(seed: int) -> tuple[int, ...]:
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
        return space.suggest(study.ask())

    assert first(3) == first(3)
    for seed in range(20):
        arch = first(seed)
        assert space.encode(arch) == reference_canonical(space.encode(arch))
        assert space.decode(space.encode(arch)) == arch


# --- the builder against the table's parameter counts ----------------------------------------------------------


def stage_parts(canon: str) -> tuple[str, str, str]:
    return tuple(canon[a:b] for a, b in STAGE_SPANS)  # type: ignore[return-value]


def test_builder_matches_the_table_params_of_every_network(table, groups):
    """Every one of the 3,969 records, fast: a network's parameters are its stem, head and classifier plus those
    of its three stages, and a stage's layers depend on that stage's digits only. Each stage variant is measured
    on the layers of real `space.build` networks (each built network also checked whole), then every record of
    the table is checked against the sum; a random sample of networks is built whole as well.
    (`test_builder_matches_the_table_params_of_every_network_built_whole`, marked slow, builds all 3,969.)"""
    canon = sorted(groups)
    variants = [sorted({stage_parts(c)[i] for c in canon}) for i in range(3)]
    assert [len(v) for v in variants] == [9, 21, 21]  # 9 * 21 * 21 == 3969
    stage_params: list[dict[str, int]] = [{}, {}, {}]
    fixed = set()
    for j in range(21):  # 21 networks cover every variant of every stage
        text = "".join(variants[i][j % len(variants[i])] for i in range(3))
        n, model = meta_params(space.decode(text))
        assert n == table[text]["params"], text
        fixed.add(count(model.stem) + count(model.head) + count(model.classifier))
        for i, (a, b) in enumerate(STAGE_SPANS):
            layer_params = sum(count(model.layers[k]) for k in range(a, b))
            assert stage_params[i].setdefault(text[a:b], layer_params) == layer_params
    assert len(fixed) == 1
    (rest,) = fixed
    assert rest == (3 * 9 * 32 + 2 * 32) + (256 * 1280 + 2 * 1280) + (1280 * 10 + 10)
    for c in canon:
        parts = stage_parts(c)
        assert rest + sum(stage_params[i][parts[i]] for i in range(3)) == table[c]["params"], c
    for c in random.Random(0).sample(canon, 250):
        assert meta_params(space.decode(c))[0] == table[c]["params"], c


@pytest.mark.slow
def test_builder_matches_the_table_params_of_every_network_built_whole(groups, table):
    """Every distinct network built whole (about 25 s on two cores)."""
    assert len(groups) == 3969
    for c in groups:
        assert meta_params(space.decode(c))[0] == table[c]["params"], c


def test_forward_shape_and_stride_2_identity_downsamples():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    for text in ("22212220", "00000000", "10011220"):
        model = space.build(space.decode(text)).eval()
        with torch.no_grad():
            assert model(x).shape == (2, 10), text
    # All identities: the stride-2 ones are 1x1 stride-2 projections that still halve the resolution and change
    # the width; the others are no-ops.
    model = space.build(space.decode("00000000")).eval()
    shapes = []
    with torch.no_grad():
        h = model.stem(x)
        assert h.shape == (2, 32, 32, 32)
        for layer in model.layers:
            out = layer(h)
            if out.shape == h.shape:
                assert torch.equal(out, h)
            h = out
            shapes.append(tuple(h.shape))
    assert shapes == [
        (2, 64, 16, 16),
        (2, 64, 16, 16),
        (2, 128, 8, 8),
        (2, 128, 8, 8),
        (2, 128, 8, 8),
        (2, 256, 4, 4),
        (2, 256, 4, 4),
        (2, 256, 4, 4),
    ]
    assert [isinstance(layer, torch.nn.Identity) for layer in model.layers] == [
        False,
        True,
        False,
        True,
        True,
        False,
        True,
        True,
    ]
    # Two strings of one network build the same modules in the same order (same parameters for the same seed).
    torch.manual_seed(1)
    a = space.build((2, 0, 2, 0, 1, 0, 2, 2))
    torch.manual_seed(1)
    b = space.build((2, 0, 2, 1, 0, 0, 2, 2))
    assert [(k, v.shape) for k, v in a.state_dict().items()] == [(k, v.shape) for k, v in b.state_dict().items()]
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


# --- the table evaluator ---------------------------------------------------------------------------------------


def test_table_evaluator_reports_run_1_and_keeps_runs_2_3_for_the_front(table, groups, data_dir):
    evaluator = make_evaluator("table", space, data_dir=str(data_dir))
    assert set(evaluator.metrics) >= {"accuracy", "params", "flops"}
    for canon in random.Random(2).sample(sorted(groups), 20) + ["22212220"]:
        row = table[canon]
        for key in groups[canon]:  # every string of the network gives the network's figures
            metrics = evaluator.evaluate(space.decode(key))
            assert metrics["accuracy"] == pytest.approx(row["test_acc"][0])
            assert metrics["params"] == row["params"] and metrics["flops"] == row["flops"]
        final = evaluator.final_metrics(space.decode(canon))
        assert final["test_accuracy"] == pytest.approx(statistics.mean(row["test_acc"][1:]))
        assert "accuracy" not in final
    model = evaluator.model(space.decode("22212220"))
    assert not model.training and count(model) == table["22212220"]["params"]


def test_table_evaluator_rejects_unknown_options(data_dir):
    with pytest.raises(UserInputError, match="'latency'"):
        make_evaluator("table", space, data_dir=str(data_dir), latency="lat_gold_6240_ms")


def test_table_evaluator_names_a_missing_table(tmp_path):
    from nas_ground.data import DataError

    with pytest.raises(DataError) as info:
        make_evaluator("table", space, data_dir=str(tmp_path))
    assert str(tmp_path) in str(info.value)


# --- bench records ---------------------------------------------------------------------------------------------


def test_nbmacro_jobs_one_per_distinct_network(table, groups):
    jobs = nbmacro_jobs(table)
    assert len(jobs) == 3969
    assert {j.arch for j in jobs} == set(groups)
    assert [j.arch for j in jobs] == sorted(groups)
    for job in jobs:
        row = table[job.arch]
        assert (job.space, job.source) == ("nbmacro", "nbmacro-table")
        assert [job.metrics[f"acc_run{i}"] for i in (1, 2, 3)] == pytest.approx(row["test_acc"])
        assert job.metrics["mean_acc"] == pytest.approx(row["mean_acc"])
    assert [j.arch for j in nbmacro_jobs(table, limit=3)] == sorted(groups)[:3]


def test_cli_bench_build_writes_records_with_the_table_params(tmp_path, table, groups, data_dir):
    out = tmp_path / "bench"
    proc = nas("bench", "build", "--space", "nbmacro", "--limit", "3", "--out", str(out), "--workers", "1")
    assert proc.returncode == 0, proc.stderr
    frame = read_bench(out)
    assert len(frame) == 3
    assert sorted(frame["arch"]) == sorted(groups)[:3]
    assert set(frame["space"]) == {"nbmacro"} and set(frame["source"]) == {"nbmacro-table"}
    for _, row in frame.iterrows():
        params = table[row["arch"]]["params"]
        assert row["metric_table_params"] == params and row["metric_table_flops"] == table[row["arch"]]["flops"]
        # The record's own `params` counts the exported ONNX graph, where each BatchNorm is folded into the
        # convolution before it (its 2C scale and shift become the C of a conv bias): the table's count less
        # one per BatchNorm channel of the built network.
        _, model = meta_params(space.decode(row["arch"]))
        bn_channels = sum(m.num_features for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
        assert int(row["params"]) == params - bn_channels, row["arch"]
        assert row["metric_acc_run1"] == pytest.approx(table[row["arch"]]["test_acc"][0])
        assert row["metric_mean_acc"] == pytest.approx(table[row["arch"]]["mean_acc"])


def test_cli_bench_build_rejects_other_spaces(tmp_path, data_dir):
    out = tmp_path / "bench"
    proc = nas("bench", "build", "--space", "nasnet", "--limit", "3", "--out", str(out), "--workers", "1")
    assert_one_line_error(proc, "'nasnet'")
    assert not out.exists()


# --- a search ----------------------------------------------------------------------------------------------------


def test_cli_search_with_the_table(tmp_path, table, data_dir):
    run = tmp_path / "run"
    proc = nas(
        "search",
        "--space",
        "nbmacro",
        "--evaluator",
        "table",
        "--trials",
        "6",
        "--sampler",
        "random",
        "--run-dir",
        str(run),
    )
    assert proc.returncode == 0, proc.stderr
    pareto = json.loads((run / "pareto.json").read_text())
    assert pareto["objectives"] == ["accuracy:max", "params:min"]  # the default objectives
    members = pareto["members"]
    assert members
    for member in members:
        row = table[member["arch"]]  # the recorded string is canonical, hence a key of the table
        assert space.encode(space.decode(member["arch"])) == member["arch"]
        assert member["metrics"]["accuracy"] == pytest.approx(row["test_acc"][0])
        assert member["metrics"]["params"] == row["params"]
        assert member["metrics"]["test_accuracy"] == pytest.approx(statistics.mean(row["test_acc"][1:]))
        assert (run / member["onnx"]).is_file()
