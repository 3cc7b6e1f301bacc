"""BigNAS space and supernet: canonical strings, mutation, children sliced from the supernet, ONNX, BN recalibration."""

from __future__ import annotations

import random

import numpy as np
import onnx
import onnxruntime as ort
import optuna
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from nas_ground.cost import count_params
from nas_ground.errors import UserInputError
from onnx_bench.export import export_bytes
from search_spaces import InvalidArchitecture, get_space, space_names
from search_spaces.base import example_input
from search_spaces.bignas import BigNASArch, BigNASNetwork, BigNASSpace, ElasticSupernet, Stage, recalibrate_bn

space = get_space("bignas")
imagenet = get_space("bignas-imagenet")
seeds = st.integers(0, 2**32 - 1)
LARGEST = (
    "res32|stem24|24:k7e1,k7e1|32:k7e6,k7e6,k7e6|48:k7e6,k7e6,k7e6|"
    "96:k7e6,k7e6,k7e6,k7e6|128:k7e6,k7e6,k7e6,k7e6|head320"
)


def _randomise(net: nn.Module, seed: int) -> None:
    """BN scales, shifts and statistics, and biases, that differ per channel, so a wrong slice changes the output."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
                assert m.running_mean is not None and m.running_var is not None
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
            elif isinstance(m, nn.Conv2d | nn.Linear) and m.bias is not None:
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)


@pytest.fixture(scope="module")
def supernet() -> ElasticSupernet:
    torch.manual_seed(0)
    net = space.supernet()
    _randomise(net, 1)
    return net.eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(2))


def _children(target: BigNASSpace, n: int, seed: int = 3) -> list[BigNASArch]:
    rng = random.Random(seed)
    return [target.largest(), target.smallest(), *(target.sample(rng) for _ in range(n))]


def test_registered_with_the_documented_shapes():
    assert {"bignas", "bignas-imagenet"} <= set(space_names())
    assert space.input_shape == (3, 32, 32) and imagenet.input_shape == (3, 320, 320)
    assert space.encode(space.largest()) == LARGEST
    assert (
        space.encode(space.smallest())
        == "res24|stem16|16:k3e1|24:k3e3,k3e3|40:k3e3,k3e3|80:k3e3,k3e3|112:k3e3,k3e3|head256"
    )
    with pytest.raises(UserInputError, match="'width'"):
        get_space("bignas", width=2)


@pytest.mark.parametrize("target", [space, imagenet], ids=["cifar", "imagenet"])
@settings(max_examples=40, deadline=None)
@given(seed=seeds)
def test_round_trip(target, seed):
    arch = target.sample(random.Random(seed))
    text = target.encode(arch)
    assert target.decode(text) == arch
    assert target.encode(target.decode(text)) == text


@pytest.mark.parametrize(
    ("text", "bad"),
    [
        (LARGEST.replace("res32", "res30"), "resolution 30"),
        (LARGEST.replace("stem24", "stem20"), "stem width 20"),
        (LARGEST.replace("head320", "head330"), "head width 330"),
        (LARGEST.replace("|24:", "|20:"), "stage 1 width 20"),
        (LARGEST.replace("|32:k7e6,", "|32:k9e6,"), "stage 2 block 1 kernel 9"),
        (LARGEST.replace("|32:k7e6,k7e6,", "|32:k7e6,k7e5,"), "stage 2 block 2 expansion 5"),
        (LARGEST.replace("|24:k7e1,k7e1", "|24:k7e1,k7e1,k7e1"), "stage 1 depth 3"),
        (LARGEST.replace("|48:k7e6,k7e6,k7e6", "|48:k7e6,k7e6,"), "'48:k7e6,k7e6,'"),
        (LARGEST.replace("res32", "resolution32"), "'resolution32'"),
        ("res32|stem24|head320", "3 parts"),
        ("garbage", "'garbage'"),
    ],
)
def test_decode_rejects_naming_the_bad_value(text, bad):
    with pytest.raises(InvalidArchitecture) as info:
        space.decode(text)
    assert bad in str(info.value)


def test_validate_rejects_values_outside_the_space():
    big = space.largest()
    with pytest.raises(InvalidArchitecture, match="resolution 33"):
        space.validate(BigNASArch(33, big.stem, big.stages, big.head))
    with pytest.raises(InvalidArchitecture, match="has 5 stages, got 4"):
        space.validate(BigNASArch(32, big.stem, big.stages[:4], big.head))
    with pytest.raises(InvalidArchitecture, match="stage 3 width True"):
        space.validate(
            BigNASArch(32, big.stem, (*big.stages[:2], Stage(True, big.stages[2].blocks), *big.stages[3:]), 320)
        )
    with pytest.raises(InvalidArchitecture, match="stage 1 block 1 kernel 7 is not allowed; valid: 3$"):
        imagenet.decode(imagenet.encode(imagenet.largest()).replace("|24:k3e1", "|24:k7e1"))


def _choices(arch: BigNASArch) -> dict[tuple[object, ...], int]:
    out: dict[tuple[object, ...], int] = {("resolution",): arch.resolution, ("stem",): arch.stem, ("head",): arch.head}
    for i, stage in enumerate(arch.stages):
        out[i, "width"], out[i, "depth"] = stage.width, stage.depth
        for j, block in enumerate(stage.blocks):
            out[i, j, "kernel"], out[i, j, "expansion"] = block
    return out


@pytest.mark.parametrize("target", [space, imagenet], ids=["cifar", "imagenet"])
@settings(max_examples=60, deadline=None)
@given(seed=seeds)
def test_mutate_changes_exactly_one_choice(target, seed):
    rng = random.Random(seed)
    parent = target.sample(rng)
    child = target.mutate(parent, rng)
    target.validate(child)
    before, after = _choices(parent), _choices(child)
    changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    depth = [k for k in changed if k[1:] == ("depth",)]
    if not depth:
        assert len(changed) == 1
        return
    # A depth change adds copies of the stage's last block, or drops its last blocks; nothing else moves.
    i = depth[0][0]
    shared = min(parent.stages[i].depth, child.stages[i].depth)
    assert all(k == (i, "depth") or (k[0] == i and len(k) == 3 and k[1] >= shared) for k in changed)
    assert set(child.stages[i].blocks[shared:]) <= {parent.stages[i].blocks[-1]}


def test_suggest_gives_valid_architectures():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(10):
        trial = study.ask()
        space.validate(space.suggest(trial))
        assert "stage1_block2_kernel" in trial.params and "stage1_block1_expansion" not in trial.params  # e is fixed


def test_build_options_are_checked():
    with pytest.raises(UserInputError, match="'channels'"):
        space.build(space.smallest(), channels=8)
    with pytest.raises(UserInputError, match="num_classes=1"):
        space.supernet(num_classes=1)


@pytest.mark.parametrize("index", range(7), ids=["largest", "smallest", *(f"random{i}" for i in range(5))])
def test_extracted_child_matches_the_active_supernet(supernet, images, index):
    arch = _children(space, 5)[index]
    supernet.set_active(arch)
    child = supernet.extract()
    assert type(child) is BigNASNetwork and not child.training
    assert count_params(child) == count_params(space.build(arch))
    assert {k: v.shape for k, v in child.state_dict().items()} == {
        k: v.shape for k, v in space.build(arch).state_dict().items()
    }
    with torch.no_grad():
        want, got = supernet(images), child(images)
    assert want.shape == (8, 10) and want.abs().max() > 1e-3  # not a degenerate (constant) output
    assert (want - got).abs().max() < 1e-5


def test_children_take_first_channels_centred_kernels_and_first_blocks(supernet):
    arch = space.decode("res28|stem16|16:k3e1|24:k5e3,k3e4|40:k3e3,k3e3|80:k3e3,k3e3|112:k3e3,k3e3|head264")
    child, full = supernet.extract(arch), supernet.network
    dw = full.stages[1][0].depthwise[0].weight  # 24 * 6 channels, 7x7
    assert torch.equal(child.stages[1][0].depthwise[0].weight, dw[:48, :, 1:6, 1:6])  # 16 * 3 channels, 5x5
    assert torch.equal(child.stages[1][1].depthwise[0].weight, full.stages[1][1].depthwise[0].weight[:96, :, 2:5, 2:5])
    assert torch.equal(child.stages[1][0].expand[0].weight, full.stages[1][0].expand[0].weight[:48, :16])
    bn, bn_full = child.stages[2][1].project.bn, full.stages[2][1].project.bn
    for name in ("weight", "bias", "running_mean", "running_var"):
        assert torch.equal(getattr(bn, name), getattr(bn_full, name)[:40])
    assert torch.equal(child.stages[3][1].se.reduce.weight, full.stages[3][1].se.reduce.weight[:20, :240])
    assert torch.equal(child.classifier.weight, full.classifier.weight[:, :264])
    assert len(child.stages[3]) == 2 and len(full.stages[3]) == 4


def test_largest_is_the_shared_network_and_state_does_not_leak(supernet, images):
    supernet.set_active(space.largest())
    with torch.no_grad():
        want = supernet(images)
        assert torch.equal(want, supernet.network(images))
        for arch in _children(space, 3)[1:]:
            supernet.set_active(arch)
            supernet(images)
        supernet.set_active(space.largest())
        assert torch.equal(supernet(images), want)


def test_training_a_child_touches_only_its_slice_of_the_shared_tensors():
    torch.manual_seed(0)
    net = space.supernet().train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    arch = space.smallest()
    net.set_active(arch)
    net(torch.randn(4, 3, 32, 32)).square().mean().backward()
    stem = net.network.stem
    assert stem[0].weight.grad is not None and stem[0].weight.grad[:16].abs().sum() > 0
    assert not stem[0].weight.grad[16:].any()
    mean = stem.bn.running_mean
    assert not torch.equal(mean[:16], before["network.stem.1.running_mean"][:16])  # updated in place through the view
    assert torch.equal(mean[16:], before["network.stem.1.running_mean"][16:])
    unused = net.network.stages[4][3].depthwise[0].weight  # stage 5 block 4: not in the smallest child
    assert unused.grad is None or not unused.grad.any()


def test_zero_init_residual_zeroes_the_always_residual_blocks():
    net = space.supernet()
    gammas = [[block.project.bn.weight for block in stage] for stage in net.network.stages]
    assert all(not g.any() for stage in gammas for g in stage[1:])
    assert all(stage[0].all() for stage in gammas)
    assert all(
        g.all()
        for stage in space.supernet(zero_init_residual=False).network.stages
        for g in (block.project.bn.weight for block in stage)
    )


@pytest.mark.parametrize("which", ["smallest", "random"])
def test_extracted_child_exports_to_onnx(supernet, which):
    arch = space.smallest() if which == "smallest" else _children(space, 1, seed=7)[-1]
    supernet.set_active(arch)
    child = supernet.extract()
    x = example_input(space)
    proto = onnx.load_model_from_string(export_bytes(child, example=x))
    onnx.checker.check_model(proto, full_check=True)
    if arch.resolution != 32:
        assert any(node.op_type == "Resize" for node in proto.graph.node)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        want = supernet(x).numpy()
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


@pytest.mark.parametrize("kind", ["network", "supernet"])
def test_recalibrate_bn_changes_only_running_statistics(kind):
    torch.manual_seed(0)
    arch = space.decode("res28|stem16|24:k3e1|24:k5e3,k3e4|40:k3e3,k3e3|80:k3e3,k3e3|112:k3e3,k3e3|head264")
    model: nn.Module
    if kind == "network":
        model = space.build(arch)
    else:
        model = space.supernet()
        model.set_active(arch)
    _randomise(model.eval(), 5)
    gen = torch.Generator().manual_seed(4)
    batches = [torch.randn(6, 3, 32, 32, generator=gen) * 2 + 1 for _ in range(3)]
    params = {k: v.clone() for k, v in model.named_parameters()}
    stats = {k: v.clone() for k, v in model.named_buffers()}
    recalibrate_bn(model, [(b, torch.zeros(6)) for b in batches])
    assert dict(model.named_parameters()).keys() == params.keys()
    assert all(torch.equal(v, params[k]) for k, v in model.named_parameters())
    buffers = dict(model.named_buffers())
    assert all(k.rsplit(".", 1)[-1] in ("running_mean", "running_var", "num_batches_tracked") for k in buffers)
    assert all(not torch.equal(buffers[k], stats[k]) for k in buffers if k.endswith("running_mean"))
    # Every BN of the child averaged the 3 batches; a supernet's BNs that the child does not use stay reset.
    child = model if isinstance(model, BigNASNetwork) else model.extract()
    prefix = "" if model is child else "network."
    used = {prefix + k for k, _ in child.named_buffers() if k.endswith("num_batches_tracked")}
    assert used and all(int(v) == (3 if k in used else 0) for k, v in buffers.items() if k.endswith("_tracked"))
    assert not model.training and all(not m.training for m in model.modules())
    assert all(m.momentum == 0.1 for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    # The stem's statistics are the plain average of the per-batch means of its conv output.
    net = model if isinstance(model, BigNASNetwork) else model.network
    conv = net.stem[0]
    with torch.no_grad():
        outs = [conv(nn.functional.interpolate(b, size=(28, 28), mode="bilinear")) for b in batches]
    want = torch.stack([o[:, :16].mean((0, 2, 3)) for o in outs]).mean(0)
    assert torch.allclose(net.stem.bn.running_mean[:16], want, atol=1e-5)


def test_imagenet_ranges_and_parameter_counts():
    """BigNAS ImageNet ranges: largest child 10.89M parameters, smallest 3.75M (BigNASModel-S..XL: 4.5M..9.5M)."""
    with torch.device("meta"):
        largest, smallest = imagenet.build(imagenet.largest()), imagenet.build(imagenet.smallest())
    assert 9_000_000 < count_params(largest) < 12_000_000
    assert 3_000_000 < count_params(smallest) < 4_500_000
    assert imagenet.encode(imagenet.smallest()).startswith("res192|stem32|16:k3e1|24:k3e6,k3e6|")
    assert len(largest.stages) == 7 and [len(s) for s in largest.stages] == [2, 3, 3, 4, 6, 6, 2]


def test_imagenet_child_matches_its_supernet():
    torch.manual_seed(0)
    net = imagenet.supernet()
    _randomise(net, 5)
    net.eval().set_active(imagenet.sample(random.Random(11)))
    x = torch.randn(1, 3, 320, 320, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        assert (net(x) - net.extract()(x)).abs().max() < 1e-5


def test_dropout_follows_the_shared_module():
    torch.manual_seed(0)
    net = space.supernet(dropout=0.5).train()
    _randomise(net, 8)
    net.set_active(space.smallest())
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert not torch.equal(net(x), net(x))
        net.network.dropout.p = 0.0
        assert torch.equal(net(x), net(x))
