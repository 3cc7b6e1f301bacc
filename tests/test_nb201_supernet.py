"""The NB201 one-shot supernet: extracted children equal the active path, SPOS training, one cell per network."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from nas.supernet import SupernetConfig, SupernetTrainer, load_checkpoint, supernet_from_checkpoint
from nas.tables import load_nb201_identities
from nas_ground.cost import count_params
from nas_ground.data import load_cifar10
from search_spaces import InvalidArchitecture, UserInputError, get_space
from search_spaces.nb201 import OPS, Cell, NB201Network
from search_spaces.nb201_supernet import NB201Supernet, distinct_cells, sample_distinct

CELLS = [
    ("nor_conv_3x3",) * 6,
    ("nor_conv_1x1", "nor_conv_3x3", "nor_conv_1x1", "nor_conv_3x3", "nor_conv_1x1", "nor_conv_3x3"),
    ("skip_connect", "none", "nor_conv_3x3", "none", "avg_pool_3x3", "skip_connect"),
    ("none", "none", "none", "skip_connect", "none", "nor_conv_1x1"),
    ("none",) * 6,
]


def test_extracted_child_is_the_built_network_and_computes_what_the_active_supernet_computes():
    space = get_space("nb201")
    torch.manual_seed(0)
    supernet = space.supernet(channels=4, cells_per_stage=2)  # type: ignore[attr-defined]
    with torch.no_grad():  # every weight away from its initial value, so that an uncopied one shows
        for p in supernet.parameters():
            p.add_(0.2 * torch.randn_like(p))
    rng = random.Random(0)
    cells = CELLS + [space.sample(rng) for _ in range(5)]
    for cell in cells:  # BN running statistics of every op that some cell uses
        supernet.set_active(cell)
        supernet(torch.randn(8, 3, 32, 32))
    x = torch.randn(16, 3, 32, 32)
    supernet.eval()
    for cell in cells:
        supernet.set_active(cell)
        child = supernet.extract(cell)
        assert isinstance(child, NB201Network) and not child.training
        assert torch.allclose(supernet(x), child(x), atol=1e-5), cell
        built = space.build(cell, channels=4, cells_per_stage=2)
        assert sum(p.numel() for p in child.parameters()) == count_params(built), cell
    supernet.train()
    assert supernet.extract(CELLS[0]).training and supernet.active == cells[-1]  # extract keeps the active cell


def test_bad_use_raises_errors_naming_the_problem():
    space = get_space("nb201")
    supernet = NB201Supernet(channels=4, cells_per_stage=1)
    with pytest.raises(RuntimeError, match="set_active"):
        supernet(torch.randn(2, 3, 32, 32))
    with pytest.raises(InvalidArchitecture, match="conv_5x5"):
        supernet.set_active(("conv_5x5",) * 6)  # type: ignore[arg-type]
    with pytest.raises(UserInputError, match="'layers'"):
        space.supernet(layers=2)  # type: ignore[attr-defined]
    with pytest.raises(UserInputError, match="channels=0"):
        space.supernet(channels=0)  # type: ignore[attr-defined]


def test_spos_training_updates_the_active_ops_only_and_checkpoints(
    tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
):
    options = {"channels": 4, "cells_per_stage": 1}
    cfg = SupernetConfig(
        space="nb201",
        strategy="spos",
        epochs=1,
        train_images=128,
        val_images=64,
        batch_size=32,
        supernet_options=options,
    )
    trainer = SupernetTrainer(tmp_path, cfg, load_cifar10(data_dir))
    net = trainer.net
    assert isinstance(net, NB201Supernet) and net.options["channels"] == 4
    before = {k: v.clone() for k, v in net.state_dict().items()}
    active: list[Cell] = []
    set_active = net.set_active

    def record(cell: Cell) -> None:
        active.append(cell)
        set_active(cell)

    monkeypatch.setattr(net, "set_active", record)
    history = trainer.train()
    assert len(active) == 4 and 0 <= history[0]["probe_accuracy"] <= 100
    after = net.state_dict()
    used = {(k, op) for cell in active for k, op in enumerate(cell)}
    for k, op in [(k, op) for k in range(6) for op in ("nor_conv_1x1", "nor_conv_3x3")]:
        key = f"cells.0.edges.{k}.ops.{op}.1.weight"  # the first stage's cell, the op's conv
        assert torch.equal(before[key], after[key]) != ((k, op) in used), (k, op)
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt")
    assert ckpt["epoch"] == 1
    _, reloaded, _ = supernet_from_checkpoint(ckpt)
    assert all(torch.equal(v, after[k]) for k, v in reloaded.state_dict().items())


def test_distinct_cells_are_one_per_network_of_the_table(nb201_csv: Path):
    cells = distinct_cells(nb201_csv)
    space = get_space("nb201")
    identity = load_nb201_identities(str(nb201_csv))
    classes = [identity[space.encode(cell)] for cell in cells]
    assert len(cells) == 6466 and len(set(classes)) == 6466 == len(set(identity.values()))
    first = next(iter(identity))  # the file's first row represents its class
    assert cells[0] == space.decode(first)
    rng = random.Random(0)
    assert all(sample_distinct(rng, cells) in cells for _ in range(10))
    with pytest.raises(UserInputError, match="missing.csv"):
        distinct_cells(nb201_csv.parent / "missing.csv")


def tiny_trainer(run_dir: Path, data_dir: Path, **sampling: bool) -> SupernetTrainer:
    """A SPOS trainer of a 4-channel, 1-cell NB201 supernet on 32 images, with the given sampling option."""
    cfg = SupernetConfig(
        space="nb201", strategy="spos", epochs=1, train_images=32, val_images=32, batch_size=8,
        supernet_options={"channels": 4, "cells_per_stage": 1}, **sampling,
    )  # fmt: skip
    return SupernetTrainer(run_dir, cfg, load_cifar10(data_dir))


def test_distinct_sampling_draws_only_one_cell_per_network(tmp_path: Path, data_dir: Path):
    trainer = tiny_trainer(tmp_path, data_dir, distinct=True)
    representatives = set(trainer.space.distinct_archs())  # type: ignore[attr-defined]
    assert len(representatives) == 6466
    rng = random.Random(0)
    drawn = [trainer._children(rng)[0][0] for _ in range(300)]
    assert set(drawn) <= representatives and len(set(drawn)) > 250
    trainer.distinct = None  # the default: one of the 15,625 strings, most of them not their class's representative
    strings = [trainer._children(rng)[0][0] for _ in range(300)]
    assert len(set(strings) - representatives) > 100


def test_fair_sampling_gives_every_op_of_every_edge_once_per_cycle(tmp_path: Path, data_dir: Path):
    trainer = tiny_trainer(tmp_path, data_dir, fair=True)
    rng = random.Random(0)
    drawn = [trainer._children(rng)[0][0] for _ in range(4 * len(OPS))]
    for start in range(0, len(drawn), len(OPS)):
        cycle = drawn[start : start + len(OPS)]
        assert all(sorted(cell[e] for cell in cycle) == sorted(OPS) for e in range(6))
    assert len(set(drawn)) > len(OPS)  # the cycles differ: permutations, not one fixed rotation
    trainer.train()  # trains; the checkpoint records the sampling
    assert load_checkpoint(tmp_path / "checkpoint.pt")["config"]["fair"] is True
    with pytest.raises(UserInputError, match="exclude each other"):
        SupernetConfig(space="nb201", strategy="spos", distinct=True, fair=True)
    with pytest.raises(UserInputError, match="fair_archs"):
        SupernetTrainer(
            tmp_path / "m", SupernetConfig(space="nbmacro", fair=True, train_images=32), load_cifar10(data_dir)
        )
