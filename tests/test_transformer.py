"""The W-PCA transformer space, SST-2 loading and the text training loop (fast: transformer-small for training)."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import onnx
import optuna
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nas.evaluators import make_evaluator
from nas.search import Search, SearchConfig
from nas.text_train import TextTrainConfig, train_subset, train_text_model
from nas_ground.cost import count_flops, count_params
from nas_ground.data import DataError
from nas_ground.errors import UserInputError
from nas_ground.text_data import load_sst2, tokenize
from onnx_bench.export import export_architecture
from search_spaces import get_space
from search_spaces.base import InvalidArchitecture, example_input

CAP = 15_700_000
SENTENCE = "it 's a charming and often affecting journey ."  # the first dev sentence
SENTENCE_IDS = [101, 2009, 1005, 1055, 1037, 11951, 1998, 2411, 12473, 4990, 1012, 102]


@pytest.fixture(autouse=True)
def one_thread():
    """The models here are tiny: a second thread gains nothing and, on a busy machine, costs 10x in spin waits."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def sst2_dir(data_dir: Path) -> Path:
    if not (data_dir / "text" / "sst2" / "train.tsv").is_file():
        pytest.skip(f"{data_dir / 'text' / 'sst2'} missing")
    return data_dir


@pytest.mark.parametrize("name", ["transformer", "transformer-small"])
def test_encode_decode_round_trip(name: str):
    space = get_space(name)
    rng = random.Random(0)
    for _ in range(200):
        arch = space.sample(rng)
        text = space.encode(arch)
        assert space.decode(text) == arch
        assert text.count("-") == len(arch) - 1
        mutant = space.mutate(arch, rng)
        assert sum(a != b for a, b in zip(arch, mutant, strict=True)) == 1
        assert space.decode(space.encode(mutant)) == mutant


@pytest.mark.parametrize(
    ("text", "bad"),
    [
        ("bert1-bert2-bert3", "4 blocks joined by '-', got 3"),
        ("bert1-bert7-mobile1-mobile2", "'bert7'"),
        ("bert1-mobile0-mobile1-mobile2", "'mobile0'"),
        ("BERT1-bert1-mobile1-mobile2", "'BERT1'"),
        ("bert1--mobile1-mobile2", "''"),
    ],
)
def test_bad_strings_name_the_bad_value(text: str, bad: str):
    space = get_space("transformer-small")
    with pytest.raises(InvalidArchitecture, match=bad):
        space.decode(text)


def test_paper_space_stays_under_the_cap():
    space = get_space("transformer")
    rng = random.Random(1)
    archs = [space.sample(rng) for _ in range(500)]
    assert all(space.params(a) <= CAP for a in archs)
    assert len(set(archs)) == len(archs)
    assert all(space.params(space.mutate(a, rng)) <= CAP for a in archs[:50])
    widest = optuna.trial.FixedTrial({f"layer_{i}": "bert6" for i in range(12)})
    suggested = space.suggest(widest)
    assert space.params(suggested) <= CAP
    assert suggested[0] == "bert6" and "mobile6" in suggested  # the last BERT layers were made MobileBERT
    over = "-".join(["bert6"] * 12)
    with pytest.raises(InvalidArchitecture, match=r"27,529,010 parameters, over the cap of 15,700,000"):
        space.decode(over)
    with pytest.raises(InvalidArchitecture, match="over the cap"):
        space.validate(("bert6",) * 12)
    assert get_space("transformer", param_cap=None).decode(over) == ("bert6",) * 12
    with pytest.raises(UserInputError, match="param_cap=1,000"):
        get_space("transformer", param_cap=1000)
    with pytest.raises(UserInputError, match="'hidden_size'"):
        get_space("transformer", hidden_size=512)


def test_paper_param_count_matches_hand_computation():
    space = get_space("transformer")
    arch = space.decode("bert6-bert1-mobile6-mobile1" + "-mobile3" * 8)
    h, b, e, v, t = 528, 132, 128, 30522, 128
    embeddings = v * e + (e * h + h) + t * h + 2 * h  # tokens, projection E->H, positions, LayerNorm
    head = h * 2 + 2

    def bert(w: int) -> int:  # 4 attention linears, FFN up and down, two LayerNorms
        return 4 * (h * h + h) + (h * w + w) + (w * h + h) + 4 * h

    def mobile(w: int) -> int:  # H->b, attention + FFN + 2 LayerNorms in b, b->H, LayerNorm
        return (h * b + b) + 4 * (b * b + b) + (b * w + w) + (w * b + b) + 4 * b + (b * h + h) + 2 * h

    expected = embeddings + head + bert(792) + bert(132) + mobile(792) + mobile(132) + 8 * mobile(396)
    assert expected == 10_465_370
    torch.manual_seed(0)
    assert count_params(space.build(arch)) == space.params(arch) == expected


def test_forward_shapes_mask_and_pca_sites():
    space = get_space("transformer-small")
    arch = space.decode("bert6-mobile2-bert1-mobile5")
    torch.manual_seed(0)
    model = space.build(arch, dropout=0.0).eval()
    ids = space.example_input(3)
    assert ids.shape == (3, 64) and ids.dtype == torch.int64
    assert bool((ids[:, 0] == 101).all()) and int(ids[:, 1:-1].min()) >= 999
    with torch.no_grad():
        assert model(ids).shape == (3, 2)
        padded = ids.clone()
        padded[:, 10:] = 0
        full = model(padded)  # the mask defaults to ids != [PAD]
        assert torch.allclose(full, model(padded, padded.ne(0).long()), atol=1e-6)
        assert torch.allclose(full, model(padded[:, :10]), atol=1e-5)  # padding changes nothing
    sites = model.pca_sites()
    assert len(sites) == 4 and all(isinstance(s, nn.Linear) for s in sites)
    assert [s.out_features for s in sites] == [192, 64, 32, 160]
    assert [s.in_features for s in sites] == [128, 32, 128, 32]
    assert count_flops(model, example_input(space)) > 0
    for m in model.modules():
        if isinstance(m, nn.LayerNorm):
            assert bool((m.weight == 1).all()) and bool((m.bias == 0).all())
        if isinstance(m, nn.Linear) and m.weight.numel() >= 1000:
            assert bool((m.bias == 0).all()) and abs(float(m.weight.detach().std()) - 0.02) < 0.005


def test_build_options_are_checked():
    space = get_space("transformer-small")
    arch = space.sample(random.Random(0))
    with pytest.raises(UserInputError, match="'channels'"):
        space.build(arch, channels=8)
    assert space.build(arch, num_classes=5)(space.example_input()).shape == (1, 5)


def test_onnx_export_checks_and_matches_onnxruntime():
    space = get_space("transformer-small")
    arch = space.sample(random.Random(2))
    a = export_architecture(space, arch, seed=0, parity=True)  # onnx.checker (full) and onnxruntime parity, 1e-4
    b = export_architecture(space, arch, seed=0)
    assert a.data == b.data
    model = onnx.load_model_from_string(a.data)
    onnx.checker.check_model(model, full_check=True)
    (inp,) = model.graph.input
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.INT64
    assert [d.dim_value for d in inp.type.tensor_type.shape.dim] == [1, 64]


def test_sst2_loading_and_tokenisation(sst2_dir: Path):
    data = load_sst2(sst2_dir, max_len=64)
    assert (len(data.train_y), len(data.dev_y), len(data.test_y)) == (67_349, 872, 1_821)
    assert data.train_ids.shape == (67_349, 64) and data.dev_mask.shape == (872, 64)
    assert set(np.unique(data.dev_y)) == {0, 1} and int(data.dev_y.sum()) == 444
    assert data.dev_ids[0, : len(SENTENCE_IDS)].tolist() == SENTENCE_IDS
    assert int(data.dev_mask[0].sum()) == len(SENTENCE_IDS) and not data.dev_ids[0, len(SENTENCE_IDS) :].any()
    assert bool(((data.train_ids != 0) == (data.train_mask == 1)).all())
    ids, mask = tokenize([SENTENCE, "good"], 6)
    assert ids.tolist() == [SENTENCE_IDS[:5] + [102], [101, 2204, 102, 0, 0, 0]]  # truncated, [SEP] kept
    assert mask.tolist() == [[1] * 6, [1, 1, 1, 0, 0, 0]]
    assert not data.train_ids.flags.writeable
    assert load_sst2(sst2_dir, max_len=64) is data  # cached


def test_sst2_missing_is_a_data_error(tmp_path: Path):
    with pytest.raises(DataError, match="sst2"):
        load_sst2(tmp_path)


def test_short_training_lowers_the_loss_and_is_deterministic(sst2_dir: Path):
    space = get_space("transformer-small")
    arch = space.sample(random.Random(3))
    data = load_sst2(sst2_dir, max_len=space.max_len)
    cfg = TextTrainConfig(epochs=4, train_examples=256, val_examples=200, batch_size=16, lr=2e-3, device="cpu")
    idx = train_subset(data, cfg)
    ids, y = torch.as_tensor(data.train_ids[idx], dtype=torch.long), torch.as_tensor(data.train_y[idx])

    def subset_loss(model: nn.Module) -> float:
        with torch.no_grad():
            return float(F.cross_entropy(model.eval()(ids), y))

    results, weights = [], []
    for _ in range(2):
        torch.manual_seed(0)
        model = space.build(arch)
        before = subset_loss(model)
        results.append(train_text_model(model, data, cfg))
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
        assert subset_loss(model) < 0.5 * before  # ln 2 at initialisation; 256 phrases are memorised
    assert (results[0].val_accuracy, results[0].train_loss) == (results[1].val_accuracy, results[1].train_loss)
    assert torch.equal(weights[0], weights[1])
    assert math.isfinite(results[0].train_loss) and 0.0 <= results[0].val_accuracy <= 100.0


def test_train_evaluator_and_search_on_a_text_space(tmp_path: Path, sst2_dir: Path):
    options = {"epochs": 1, "train_images": 128, "val_images": 1000, "batch_size": 32}  # as the CLI passes them
    space = get_space("transformer-small")
    evaluator = make_evaluator("train", space, data_dir=str(sst2_dir), artifacts_dir=str(tmp_path / "m"), **options)
    arch = space.sample(random.Random(4))
    metrics = evaluator.evaluate(arch)
    assert set(metrics) == set(evaluator.metrics)
    assert all(math.isfinite(v) for v in metrics.values())
    assert 0.0 <= metrics["accuracy"] <= 100.0 and metrics["params"] == space.params(arch)
    test = evaluator.final_metrics(arch)["test_accuracy"]
    assert 0.0 <= test <= 100.0
    with pytest.raises(UserInputError, match="'momentum'"):
        make_evaluator("train", space, data_dir=str(sst2_dir), momentum=0.9)

    run = tmp_path / "run"
    cfg = SearchConfig.from_dict(
        dict(
            space="transformer-small",
            evaluator="train",
            trials=2,
            sampler="random",
            run_dir=str(run),
            data_dir=str(sst2_dir),
            evaluator_options=options,
        )
    )
    result = Search(cfg).run()
    assert result.completed == 2
    for member in json.loads((run / "pareto.json").read_text())["members"]:
        onnx.checker.check_model(onnx.load(run / member["onnx"]))
        assert "test_accuracy" in member["metrics"]
