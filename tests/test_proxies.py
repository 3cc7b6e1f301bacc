"""Training-free proxies: each against a hand computation or a published reference, torch against ONNX."""

from __future__ import annotations

import copy
import io
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from nas_ground.errors import UserInputError
from predictors.metrics import spearman_rho
from predictors.proxies import ProxyBatch, ProxyConfig, compute_proxies, parse_proxy_names, proxy_names
from predictors.proxies.activations import code_kernel
from predictors.proxies.pca import pca_k
from search_spaces import get_space
from tests.test_cli import assert_one_line_error, nas

CELL = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"


def _batch(n: int = 16, shape: tuple[int, ...] = (3, 8, 8)) -> ProxyBatch:
    g = torch.Generator().manual_seed(0)
    return ProxyBatch(torch.randn(n, *shape, generator=g), torch.randint(0, 10, (n,), generator=g), 10)


class SmallCNN(nn.Sequential):
    def __init__(self) -> None:
        torch.manual_seed(0)
        super().__init__(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 12, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(12, 10),
        )


def test_registry_names_aliases_and_errors():
    names = proxy_names()
    for expected in ("params", "flops", "naswot", "naswot_v1", "synflow", "snip", "grad_norm", "vpca", "wpca"):
        assert expected in names
    assert parse_proxy_names("jacov,synflow,naswot_v1") == ["naswot_v1", "synflow"]
    with pytest.raises(UserInputError, match="'synflw'"):
        parse_proxy_names("synflw")
    with pytest.raises(UserInputError, match="eta=1.5"):
        ProxyConfig(eta=1.5)


def test_pca_k_counts_the_components_that_reach_eta():
    rng = np.random.default_rng(0)
    basis = np.linalg.qr(rng.standard_normal((10, 10)))[0][:, :3]  # 3 orthonormal directions in 10-D
    scales = np.array([10.0, 3.0, 1.0])
    samples = (rng.standard_normal((20000, 3)) * scales) @ basis.T + 5.0  # the offset is centred away
    # variance shares ~ 100/110, 9/110, 1/110: top-1 = 0.909, top-2 = 0.991, top-3 = 1.0
    assert pca_k(samples, 0.5) == 1
    assert pca_k(samples, 0.95) == 2
    assert pca_k(samples, 0.995) == 3
    assert pca_k(np.ones((50, 4)), 0.99) == 0  # no variance at all


def test_code_kernel_is_agreements_between_binary_codes():
    codes = torch.rand(6, 40, generator=torch.Generator().manual_seed(1)) > 0.5
    c = codes.double()
    expected = c @ c.T + (1 - c) @ (1 - c).T
    assert torch.equal(code_kernel(codes), expected)
    assert torch.all(torch.diag(code_kernel(codes)) == 40)


def test_synflow_of_a_linear_network_is_twice_its_path_sum_and_leaves_the_model_alone():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 7, bias=False), nn.Linear(7, 3, bias=False))
    before = copy.deepcopy(net.state_dict())
    value = compute_proxies(net, ["synflow"], ProxyBatch(torch.randn(4, 5), torch.zeros(4, dtype=torch.long), 3))
    w1, w2 = (m.weight.detach().double().abs() for m in net)
    path_sum = float((w2 @ w1).sum())  # R = 1^T |W2| |W1| 1; each layer's sum |w dR/dw| equals R
    assert value["synflow"] == pytest.approx(2 * path_sum, rel=1e-9)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_snip_and_grad_norm_match_autograd_by_hand():
    net, batch = SmallCNN(), _batch()
    values = compute_proxies(net, ["snip", "grad_norm"], batch)
    net.train()
    loss = nn.functional.cross_entropy(net(batch.inputs), batch.targets)
    layers = [m for m in net if isinstance(m, (nn.Conv2d, nn.Linear))]
    grads = torch.autograd.grad(loss, [m.weight for m in layers])
    assert values["snip"] == pytest.approx(
        sum(float((m.weight.detach() * g).abs().sum()) for m, g in zip(layers, grads, strict=True))
    )
    assert values["grad_norm"] == pytest.approx(sum(float(g.norm()) for g in grads))


def test_wpca_is_params_times_vpca_and_eta_matters():
    net, batch = SmallCNN(), _batch()
    v = compute_proxies(net, ["params", "vpca", "wpca"], batch)
    assert v["wpca"] == v["params"] * v["vpca"] and v["vpca"] > 0
    low = compute_proxies(net, ["vpca"], batch, ProxyConfig(eta=0.5))["vpca"]
    assert 0 < low < v["vpca"]


def test_nb201_proxies_order_networks_like_their_size():
    space = get_space("nb201")
    batch = _batch(32, (3, 32, 32))
    rows = []
    for cell in (CELL, "|none~0|+|none~0|none~1|+|skip_connect~0|none~1|none~2|"):
        torch.manual_seed(0)
        rows.append(compute_proxies(space.build(space.decode(cell)), ["synflow", "naswot", "vpca", "params"], batch))
    good, trivial = rows
    assert (
        good["synflow"] > trivial["synflow"] and good["vpca"] > trivial["vpca"] and good["params"] > trivial["params"]
    )


def test_naswot_v1_differentiates_the_classifier_input(data_dir: Path):
    from predictors.proxies.data import image_batch
    from predictors.proxies.naswot import penultimate

    model = SmallCNN()
    x = torch.randn(4, 3, 8, 8)
    assert penultimate(model, x).shape == (4, 12)  # the Linear's input, not the 10 logits
    assert penultimate(nn.Sequential(nn.Conv2d(3, 2, 3)), x).shape == (4, 2, 6, 6)  # no Linear: the output
    batch = image_batch(ProxyConfig(batch_size=8), data_dir)
    score = compute_proxies(model, ["naswot_v1"], batch)["naswot_v1"]
    with torch.no_grad():
        model[-1].weight.zero_()  # logits no longer depend on the input; the features still do
    assert compute_proxies(model, ["naswot_v1"], batch)["naswot_v1"] == score


@pytest.mark.slow  # ten full-size NB201 networks, Jacobians of 256 images: 17-27 s
def test_naswot_v1_agrees_with_the_published_scores(data_dir: Path, nb201_csv: Path):
    from nas.tables import load_nb201_table
    from predictors.proxies.data import image_batch

    table = load_nb201_table(str(nb201_csv))
    cells = [c for c in random.Random(3).sample(sorted(table), 14) if np.isfinite(table[c]["naswot_score_v1"])][:10]
    config = ProxyConfig(batch_size=256)  # the reference code's batch size
    batch = image_batch(config, data_dir)
    space, ours = get_space("nb201"), []
    for cell in cells:
        torch.manual_seed(0)
        ours.append(compute_proxies(space.build(space.decode(cell)), ["jacov"], batch, config)["naswot_v1"])
    assert spearman_rho(ours, [table[c]["naswot_score_v1"] for c in cells]) >= 0.85


def test_onnx_activation_proxies_equal_torch_in_eval_mode(data_dir: Path):
    import onnx

    from onnx_bench.export import export_bytes
    from predictors.proxies.data import image_batch
    from predictors.proxies.onnx_act import onnx_proxies

    net = SmallCNN()
    config = ProxyConfig(batch_size=16, train_mode=False)
    torch_values = compute_proxies(net, ["naswot", "vpca"], image_batch(config, data_dir), config)
    model = onnx.load_model_from_string(export_bytes(net, (3, 32, 32)))
    onnx_values, notes = onnx_proxies(model, ["naswot", "vpca", "wpca"], config, data_dir)
    assert notes == []
    assert onnx_values["naswot"] == pytest.approx(torch_values["naswot"], rel=1e-9)
    assert onnx_values["vpca"] == torch_values["vpca"]
    assert onnx_values["wpca"] == sum(p.numel() for p in net.parameters()) * torch_values["vpca"]


def test_cli_proxy_arch_file_resumes_and_onnx_rejects_gradient_proxies(data_dir: Path, tmp_path: Path):
    space = get_space("nb201")
    rng = random.Random(5)
    archs = [space.encode(space.sample(rng)) for _ in range(3)]
    arch_file, out = tmp_path / "archs.txt", tmp_path / "values.jsonl"
    arch_file.write_text("\n".join(archs[:2]) + "\n")
    common = ("--space", "nb201", "--proxy", "synflow,naswot", "--batch-size", "8", "--out", str(out))
    first = nas("proxy", "--arch-file", str(arch_file), *common, "--json")
    assert first.returncode == 0, first.stderr
    assert [json.loads(line)["arch"] for line in first.stdout.splitlines()] == archs[:2]
    with out.open("a") as f:
        f.write('{"arch": "|cut')  # a line cut by a kill
    arch_file.write_text("\n".join(archs) + "\n")
    second = nas("proxy", "--arch-file", str(arch_file), *common, "--json")
    assert second.returncode == 0, second.stderr
    assert [json.loads(line)["arch"] for line in second.stdout.splitlines()] == archs[2:]  # only the new one
    rows = []
    for line in out.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            assert line.startswith('{"arch": "|cut')
    assert [r["arch"] for r in rows] == archs and all(r["synflow"] > 0 for r in rows)

    onnx_file = tmp_path / "cell.onnx"
    assert nas("export", "--space", "nb201", "--arch", CELL, "-o", str(onnx_file)).returncode == 0
    assert_one_line_error(nas("proxy", str(onnx_file), "--proxy", "naswot,snip"), "'snip'")
    ok = nas("proxy", str(onnx_file), "--proxy", "naswot,vpca", "--batch-size", "8", "--json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["vpca"] > 0
    assert_one_line_error(nas("proxy", "--space", "nb201", "--arch", "|bad~0|", "--proxy", "naswot"), "bad")


def test_onnx_proxies_reject_a_file_that_is_not_onnx(tmp_path: Path):
    bad = tmp_path / "x.onnx"
    bad.write_bytes(io.BytesIO(b"not onnx").getvalue())
    assert_one_line_error(nas("proxy", str(bad), "--proxy", "naswot"), "x.onnx")


def test_search_with_a_proxy_evaluator_and_the_ensemble(tmp_path: Path, data_dir: Path):
    from nas.search import Search, SearchConfig

    common = {"space": "nb201", "seed": 0, "sampler": "random", "data_dir": str(data_dir)}
    options = {"channels": 8, "cells_per_stage": 1, "batch_size": 8}
    proc = nas("search", "--space", "nb201", "--evaluator", "proxy:synflw", "--trials", "2", "--run-dir", str(tmp_path))
    assert_one_line_error(proc, "'synflw'")
    result = Search(
        SearchConfig(
            **common, evaluator="proxy:synflow", trials=4, run_dir=str(tmp_path / "p"), evaluator_options=options
        )
    ).run()
    assert result.completed == 4 and result.pareto
    assert all(m.metrics["synflow"] > 0 and m.metrics["params"] > 0 for m in result.pareto)
    ens = Search(
        SearchConfig(
            **common,
            evaluator="ensemble",
            objectives="score:max,params:min",
            trials=3,
            run_dir=str(tmp_path / "e"),
            evaluator_options={**options, "members": "synflow,naswot", "reference": 6},
        )
    ).run()
    assert ens.completed == 3
    for m in ens.pareto:
        assert 0.0 <= m.metrics["score"] <= 1.0 and {"synflow", "naswot"} <= set(m.metrics)


def test_ensemble_percentiles_are_order_independent(data_dir: Path):
    from nas.evaluators.proxy import EnsembleEvaluator

    space = get_space("nb201")
    small = {"channels": 8, "cells_per_stage": 1, "batch_size": 8, "data_dir": str(data_dir)}
    job = EnsembleEvaluator(space, members="synflow,params", reference=5, **small)
    rng = random.Random(9)
    archs = [space.sample(rng) for _ in range(3)]
    first = [job.evaluate(a)["score"] for a in archs]
    again = [job.evaluate(a)["score"] for a in reversed(archs)][::-1]
    assert first == again
    assert job.percentile("params", 1e30) == 1.0 and job.percentile("params", 0.0) == 0.0
    assert job.percentile("params", float("nan")) == 0.0
    middle = float(np.median(job.reference["params"]))
    assert job.percentile("params", middle) == 0.5  # 2 below, 1 tie (half), 2 above


def test_transformer_wpca_sites_are_the_ffns_and_onnx_agrees(data_dir: Path):
    import onnx

    from onnx_bench.activations import find_sites
    from onnx_bench.export import export_bytes
    from predictors.proxies.data import space_batch
    from predictors.proxies.onnx_act import onnx_proxies

    space = get_space("transformer-small")
    arch = space.decode("bert1-mobile6-bert6-mobile2")
    torch.manual_seed(0)
    model = space.build(arch)
    config = ProxyConfig(batch_size=8, train_mode=False)
    batch = space_batch(space, config, data_dir)
    assert batch.is_tokens and batch.inputs.shape == (8, space.max_len)
    values = compute_proxies(model, ["vpca", "wpca", "synflow", "snip", "params"], batch, config)
    assert 4 <= values["vpca"] <= 32 + 192 + 192 + 64  # at most the FFN widths, summed
    assert values["wpca"] == values["params"] * values["vpca"] and values["synflow"] > 0
    with pytest.raises(Exception, match="input gradient"):
        compute_proxies(model, ["naswot_v1"], batch, config)
    proto = onnx.load_model_from_string(export_bytes(model, example=space.example_input(1)))
    assert len(find_sites(proto).pre_activations) == 4  # one GELU per FFN
    onnx_values, _ = onnx_proxies(proto, ["vpca"], config, data_dir)
    assert onnx_values["vpca"] == values["vpca"]
