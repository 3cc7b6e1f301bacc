"""``nas proxy``: training-free proxies of architectures or ONNX files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from nas.cli.app import app, err, out
from nas_ground.errors import UserInputError
from nas_ground.jsonl import JsonLines


@app.command()
def proxy(
    files: Annotated[list[Path] | None, typer.Argument(help="ONNX files (activation proxies only).")] = None,
    proxy_list: Annotated[str, typer.Option("--proxy", help="Comma list of proxies (see --list).")] = "naswot,wpca",
    space: Annotated[str | None, typer.Option(help="Search space of --arch / --arch-file.")] = None,
    arch: Annotated[list[str] | None, typer.Option(help="Encoded architecture (repeatable).")] = None,
    arch_file: Annotated[Path | None, typer.Option(help="File with one encoded architecture a line.")] = None,
    out_file: Annotated[
        Path | None, typer.Option("--out", help="Append JSON lines here; architectures already in it are skipped.")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Images / sentences in the fixed batch.")] = 64,
    eta: Annotated[float, typer.Option(help="vpca/wpca: share of variance the components must exceed.")] = 0.99,
    seed: Annotated[int, typer.Option(help="Seed of the weights and of the batch.")] = 0,
    channels: Annotated[int | None, typer.Option(help="Initial channels of built networks.")] = None,
    layers: Annotated[int | None, typer.Option(help="nasnet: normal cells per stage (N).")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Data directory (else $NAS_DATA_DIR, ~/.cache).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="One JSON line per architecture.")] = False,
    list_proxies: Annotated[bool, typer.Option("--list", help="List the proxies and exit.")] = False,
) -> None:
    """Training-free proxies of architectures (``--space S --arch A``) or of ONNX files, no training."""
    import json

    from predictors.proxies import ACTIVATION_PROXIES, ProxyConfig, ProxyError, parse_proxy_names, proxy_names

    if list_proxies:
        for name in proxy_names():
            kind = "activation (ONNX too)" if name in ACTIVATION_PROXIES else "torch module"
            out.print(f"{name:10s} {kind}", highlight=False)
        return
    names = parse_proxy_names(proxy_list)
    config = ProxyConfig(seed=seed, batch_size=batch_size, eta=eta)
    data = str(data_dir) if data_dir else None
    if files and (arch or arch_file or space):
        raise UserInputError("give ONNX files or --space with --arch/--arch-file, not both")

    def emit(key: str, value: str, values: dict[str, float], sink: JsonLines | None) -> None:
        row = {key: value, **{k: (None if v != v else v) for k, v in values.items()}}
        line = sink.append(row) if sink is not None else json.dumps(row)
        if json_out:
            print(line, flush=True)
        else:
            cells = "  ".join(f"{k}={v:.6g}" for k, v in values.items())
            out.print(f"{cells}  {value}", highlight=False, soft_wrap=True)

    try:
        if files:
            from predictors.proxies.onnx_act import onnx_proxies

            for f in files:
                values, notes = onnx_proxies(f, names, config, data)
                for note in notes:
                    err.print(f"{f}: {note}", markup=False, highlight=False)
                emit("file", str(f), values, None)
            return
        if space is None or not (arch or arch_file):
            raise UserInputError("give ONNX files, or --space with --arch or --arch-file")
        from nas.evaluators.proxy import _ProxyScorer
        from search_spaces import get_space

        search_space = get_space(space)
        encoded = list(arch or [])
        if arch_file is not None:
            try:
                lines = arch_file.read_text().splitlines()
            except OSError as exc:
                raise UserInputError(f"cannot read --arch-file {arch_file}: {exc.strerror or exc}") from exc
            encoded += [line.strip() for line in lines if line.strip() and not line.startswith("#")]
        decoded = [search_space.decode(a) for a in encoded]  # every line checked before any work
        build = {k: v for k, v in {"channels": channels, "layers": layers}.items() if v is not None}
        options: dict[str, Any] = {"seed": seed, "batch_size": batch_size, "eta": eta, **build}
        scorer = _ProxyScorer(search_space, names, data, options)
        sink = JsonLines(out_file, key="arch") if out_file is not None else None
        done = sink.done() if sink is not None else set()  # a line cut by a kill: its architecture is scored again
        try:
            for a in decoded:
                key = search_space.encode(a)
                if key in done:
                    continue
                emit("arch", key, scorer.values(a), sink)
                done.add(key)
        finally:
            if sink is not None:
                sink.close()
    except ProxyError as exc:
        raise UserInputError(str(exc)) from exc
