"""Activation proxies (naswot, vpca, wpca) of any ONNX file, run by onnxruntime.

The needed intermediate tensors are exposed as extra graph outputs: the outputs of every ``Relu`` (naswot's
binary codes) and the distinct pre-activations of every ``Relu``/``Gelu`` and of the exporter's erf-GELU
pattern (``Div|Mul -> Erf``) (V-PCA's sites; for a transformer these are its FFN pre-activations). Inputs are
real data where the input looks like it: ``N x 3 x H x W`` floats get CIFAR-10 images (resized to H x W),
``N x T`` integers get SST-2 WordPiece ids (a second integer input named like a mask gets ones, other integer
inputs zeros); any other input gets seeded standard-normal values, which the result says.

The file holds inference weights (eval-mode batch norm, often folded into the convolutions), so values match
the torch proxies computed in eval mode, not the train-mode defaults. #params (for W-PCA) = the elements of the
float initializers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch

from onnx_bench.activations import find_sites
from onnx_bench.guard import OnnxInputError, check_probe_input, probe_deadline, probe_session, run_bounded
from predictors.proxies import ACTIVATION_PROXIES, ProxyConfig, ProxyError
from predictors.proxies.activations import as_samples, code_kernel
from predictors.proxies.naswot import logdet_score
from predictors.proxies.pca import vpca_value

_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}


def _float_params(model: onnx.ModelProto) -> int:
    return sum(int(np.prod(t.dims)) for t in model.graph.initializer if t.data_type in _FLOAT_TYPES)


def _dims(value: onnx.ValueInfoProto) -> list[int | None]:
    return [d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim]


def _feeds(
    model: onnx.ModelProto, config: ProxyConfig, data_dir: str | Path | None
) -> tuple[list[dict[str, np.ndarray]], list[str]]:
    """Input feeds (one dict per run: per sample when the batch dimension is fixed to 1) and notes."""
    initializers = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    notes: list[str] = []
    n = config.batch_size
    arrays: dict[str, np.ndarray] = {}
    fixed_batch = False
    token_inputs = 0
    for value in inputs:
        dims = _dims(value)
        elem = value.type.tensor_type.elem_type
        if not dims:
            raise ProxyError(f"ONNX input {value.name!r} has no shape; activation proxies need one")
        fixed_batch = fixed_batch or dims[0] == 1
        rest = dims[1:]
        if any(d is None for d in rest):
            raise ProxyError(f"ONNX input {value.name!r} has a dynamic non-batch dimension {dims}")
        shape = [int(d) for d in rest]  # type: ignore[arg-type]
        check_probe_input(value.name, (n, *shape))
        if elem in _FLOAT_TYPES and len(shape) == 3 and shape[0] == 3:
            from predictors.proxies.data import image_batch

            x = image_batch(config, data_dir).inputs
            if tuple(x.shape[2:]) != (shape[1], shape[2]):
                x = torch.nn.functional.interpolate(x, size=(shape[1], shape[2]), mode="bilinear", align_corners=False)
            arrays[value.name] = x.numpy().astype(onnx.helper.tensor_dtype_to_np_dtype(elem))
        elif elem in (onnx.TensorProto.INT64, onnx.TensorProto.INT32) and len(shape) == 1:
            np_type = onnx.helper.tensor_dtype_to_np_dtype(elem)
            if token_inputs == 0:
                from predictors.proxies.data import text_batch

                arrays[value.name] = text_batch(config, shape[0], data_dir).inputs.numpy().astype(np_type)
            else:
                fill = 1 if "mask" in value.name.lower() else 0
                arrays[value.name] = np.full((n, shape[0]), fill, dtype=np_type)
            token_inputs += 1
        elif elem in _FLOAT_TYPES:
            gen = np.random.default_rng(config.seed)
            arrays[value.name] = gen.standard_normal((n, *shape)).astype(onnx.helper.tensor_dtype_to_np_dtype(elem))
            notes.append(f"input {value.name!r} {dims}: seeded normal noise (not real data)")
        else:
            raise ProxyError(
                f"ONNX input {value.name!r} of type {onnx.TensorProto.DataType.Name(elem)} is not supported"
            )
    if fixed_batch:
        return [{k: v[i : i + 1] for k, v in arrays.items()} for i in range(n)], notes
    return [arrays], notes


def onnx_proxies(
    path_or_model: str | Path | onnx.ModelProto,
    names: list[str],
    config: ProxyConfig | None = None,
    data_dir: str | Path | None = None,
) -> tuple[dict[str, float], list[str]]:
    """``{proxy: value}`` for activation proxies of an ONNX model, and notes on the inputs used."""
    from onnx_bench.io import infer_shapes, load_onnx

    config = config or ProxyConfig()
    bad = [n for n in names if n not in ACTIVATION_PROXIES]
    if bad:
        raise ProxyError(
            f"proxy {bad[0]!r} needs gradients and a torch module; "
            f"on ONNX files only {', '.join(ACTIVATION_PROXIES)} run"
        )
    model = path_or_model if isinstance(path_or_model, onnx.ModelProto) else load_onnx(path_or_model)
    model = infer_shapes(model)
    sites = find_sites(model)
    wanted = list(dict.fromkeys((sites.relu_outputs if "naswot" in names else []) + sites.pre_activations))
    have = {o.name for o in model.graph.output}
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    for name in wanted:
        if name not in have:
            exposed.graph.output.append(onnx.ValueInfoProto(name=name))
    feeds, notes = _feeds(model, config, data_dir)
    deadline = probe_deadline()
    try:
        session = probe_session(exposed, threads=max(1, torch.get_num_threads()))
        runs = [run_bounded(session, wanted, feed, deadline) for feed in feeds]
    except OnnxInputError:
        raise
    except Exception as exc:  # onnxruntime's errors (Fail, InvalidGraph, ...) derive from Exception only
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ProxyError(f"onnxruntime cannot run the model: {first}") from exc
    acts = {name: np.concatenate([r[i] for r in runs], axis=0) for i, name in enumerate(wanted)}
    out: dict[str, float] = {}
    if "naswot" in names:
        if not sites.relu_outputs:
            raise ProxyError("naswot needs Relu activations; the ONNX graph has none")
        kernel = sum(
            code_kernel(torch.from_numpy(acts[t].reshape(acts[t].shape[0], -1) > 0)) for t in sites.relu_outputs
        )
        out["naswot"] = logdet_score(kernel)  # type: ignore[arg-type]
    if "vpca" in names or "wpca" in names:
        if not sites.pre_activations:
            raise ProxyError("vpca/wpca need Relu/Gelu activations; the ONNX graph has none")
        vpca = float(vpca_value([as_samples(torch.from_numpy(acts[t])) for t in sites.pre_activations], config.eta))
        if "vpca" in names:
            out["vpca"] = vpca
        if "wpca" in names:
            out["wpca"] = float(_float_params(model)) * vpca
    return {n: out[n] for n in names}, notes
