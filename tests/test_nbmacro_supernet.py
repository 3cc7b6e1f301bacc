"""The NAS-Bench-Macro supernet: every child extracts as the network `NBMacroSpace.build` makes (same outputs, the
table's parameter counts), k3 t3 children share the first channels and centred kernels, sandwich training runs."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from torch import nn

from nas.supernet import SupernetConfig, SupernetTrainer, load_checkpoint, supernet_from_checkpoint
from nas.tables import load_nbmacro_table, nbmacro_table_path
from nas_ground.cost import count_params
from nas_ground.errors import UserInputError
from search_spaces import InvalidArchitecture, get_space
from search_spaces.bignas import recalibrate_bn
from search_spaces.nbmacro import MacroNetwork
from search_spaces.nbmacro_supernet import MacroSupernet

space = get_space("nbmacro")
FIXED = [(0,) * 8, (1,) * 8, (2,) * 8, (2, 0, 2, 0, 1, 0, 2, 2), (0, 1, 2, 0, 0, 1, 2, 0), (1, 2, 0, 2, 1, 1, 0, 0)]


def _randomise(net: nn.Module, seed: int) -> None:
    """BN scales, shifts and statistics that differ per channel, so a wrong slice changes the output."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                assert m.running_mean is not None and m.running_var is not None
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)


@pytest.fixture(scope="module")
def supernet() -> MacroSupernet:
    torch.manual_seed(0)
    net = space.supernet()  # type: ignore[attr-defined]
    _randomise(net, 1)
    return net.eval()


def test_largest_smallest_and_options():
    assert space.largest() == (2,) * 8 and space.smallest() == (0,) * 8  # type: ignore[attr-defined]
    with pytest.raises(UserInputError, match="'channels'"):
        space.supernet(channels=16)  # type: ignore[attr-defined]
    with pytest.raises(UserInputError, match="dropout=1.5"):
        space.supernet(dropout=1.5)  # type: ignore[attr-defined]
    with pytest.raises(UserInputError, match="num_classes=1"):
        space.supernet(num_classes=1)  # type: ignore[attr-defined]
    with torch.device("meta"):
        net = space.supernet(num_classes=100, dropout=0.2)  # type: ignore[attr-defined]
    assert net.active == (2,) * 8 and net.classifier.out_features == 100 and net.dropout.p == 0.2
    with pytest.raises(InvalidArchitecture, match="NAS-Bench-Macro"):
        net.set_active((2, 2, 3, 2, 2, 2, 2, 2))


def test_extracted_children_match_the_supernet_and_the_table_params(supernet, data_dir):
    table = load_nbmacro_table(str(nbmacro_table_path(data_dir)))
    rng = random.Random(0)
    archs = FIXED + [tuple(rng.choice((0, 1, 2)) for _ in range(8)) for _ in range(14)]
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    outputs = []
    for arch in archs:
        supernet.set_active(arch)
        child = supernet.extract(arch)
        assert isinstance(child, MacroNetwork) and not child.training
        with torch.no_grad():
            shared, alone = supernet(x), child(x)
        assert torch.allclose(shared, alone, atol=1e-4), arch
        built = space.build(arch)
        assert [(k, v.shape) for k, v in child.state_dict().items()] == [
            (k, v.shape) for k, v in built.state_dict().items()
        ]
        assert count_params(child) == count_params(built) == table[space.encode(arch)]["params"], arch
        outputs.append(shared)
    assert all(not torch.allclose(outputs[0], o, atol=1e-3) for o in outputs[1:3])  # the children really differ
    # Strings of one network run the same weights; extract defaults to the active child and follows the mode.
    supernet.set_active((2, 0, 2, 1, 0, 0, 2, 2))  # FIXED[3] is the same network, written with an inner identity
    assert supernet.active == (2, 0, 2, 1, 0, 0, 2, 2) and supernet.extract().train().training
    with torch.no_grad():
        assert torch.equal(supernet(x), outputs[3])


def test_k3_t3_child_uses_the_first_channels_and_the_centred_kernel(supernet):
    layer = supernet.layers[3]  # stage 2, stride 1: c_in = 128, t3 -> 384 of 768 hidden channels
    child = supernet.extract((1,) * 8)
    body, shared = child.layers[3].body, layer.mbconv.body
    assert torch.equal(body[0][0].weight, shared[0][0].weight[:384])
    assert torch.equal(body[1][0].weight, shared[1][0].weight[:384, :, 1:4, 1:4])
    assert torch.equal(body[2][0].weight, shared[2][0].weight[:, :384])
    assert torch.equal(body[1][1].running_var, shared[1][1].running_var[:384])
    identity = supernet.extract((0,) * 8)
    assert torch.equal(identity.layers[2][0].weight, supernet.layers[2].projection[0].weight)
    assert isinstance(identity.layers[3], nn.Identity) and supernet.layers[3].projection is None


def test_training_a_k3_t3_child_touches_only_its_channels():
    torch.manual_seed(0)
    net = space.supernet().train()  # type: ignore[attr-defined]
    net.set_active((1,) * 8)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    net(torch.randn(4, 3, 32, 32)).sum().backward()
    after = net.state_dict()
    for i, layer in enumerate(net.layers):
        hidden = layer.c_in * 3
        for j in (0, 1):  # the expand and the depthwise conv, and their BNs
            bn = f"layers.{i}.mbconv.body.{j}.1."
            moved = {stat: after[bn + stat] != before[bn + stat] for stat in ("running_mean", "running_var")}
            # Every used variance moves; a used mean may stay 0 (in layers fed by BN outputs, of batch mean 0).
            assert moved["running_var"][:hidden].all() and not moved["running_var"][hidden:].any(), bn
            assert moved["running_mean"][:hidden].any() and not moved["running_mean"][hidden:].any(), bn
            grad = layer.mbconv.body[j][0].weight.grad
            assert grad[:hidden].abs().sum() > 0 and not grad[hidden:].any()
        depthwise = layer.mbconv.body[1][0].weight.grad  # (6 c_in, 1, 5, 5): only the centred 3x3 learns
        assert depthwise[:, :, 1:4, 1:4].abs().sum() > 0
        assert not depthwise[:, :, [0, 4]].any() and not depthwise[:, :, :, [0, 4]].any()
        assert not layer.mbconv.body[2][0].weight.grad[:, hidden:].any()
        if layer.projection is not None:
            assert layer.projection[0].weight.grad is None  # the identity's projection is not on this path


def test_recalibrating_the_supernet_equals_recalibrating_the_child():
    """The supernet's train-mode BN (views of the running statistics, cumulative average when momentum is None)
    moves the used channels exactly as the plain network's `nn.BatchNorm2d` does."""
    torch.manual_seed(0)
    net = space.supernet()  # type: ignore[attr-defined]
    arch = (1, 0, 2, 1, 0, 1, 2, 0)
    net.set_active(arch)
    batches = [torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(s)) for s in range(3)]
    child = net.extract(arch)
    recalibrate_bn(child, batches)
    recalibrate_bn(net, batches)
    mine = net.extract(arch).state_dict()
    for name, value in child.state_dict().items():
        assert torch.allclose(mine[name].float(), value.float(), atol=1e-5), name


def test_sandwich_training_runs_and_writes_a_loadable_checkpoint(tmp_path: Path, data_dir: Path):
    from nas_ground.data import load_cifar10

    cfg = SupernetConfig(space="nbmacro", strategy="sandwich", epochs=1, train_images=64, val_images=32, batch_size=16)
    trainer = SupernetTrainer(tmp_path, cfg, load_cifar10(data_dir))
    assert isinstance(trainer.net, MacroSupernet)
    (row,) = trainer.train()
    assert 0 <= row["largest_accuracy"] <= 100 and 0 <= row["smallest_accuracy"] <= 100
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt")
    assert ckpt["epoch"] == 1
    _, net, _ = supernet_from_checkpoint(ckpt)
    assert all(torch.equal(v, trainer.net.state_dict()[k]) for k, v in net.state_dict().items())
