"""``nas dashboard RUN_DIR``: the run's study in optuna-dashboard, served on a loopback port."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from nas.cli.app import app, out
from nas_ground.errors import UserInputError


@app.command()
def dashboard(
    run_dir: Annotated[Path, typer.Argument(help="A search's run directory (its config.yaml names the storage).")],
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1 (0: any free port).")] = 8080,
    host: Annotated[str, typer.Option(help="Address to listen on (loopback by default).")] = "127.0.0.1",
) -> None:
    """Serve the run's study with optuna-dashboard (journal file or RDB storage alike); prints the address."""
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    import optuna_dashboard

    from nas.search import load_config_file
    from nas.search.storage import make_storage

    config = run_dir / "config.yaml"
    if not config.is_file():
        raise UserInputError(f"{run_dir} holds no search (no config.yaml)")
    url = load_config_file(config).get("storage")
    if url is None and not (run_dir / "study.journal").is_file():
        raise UserInputError(f"{run_dir} holds no study.journal")
    storage = make_storage(None, run_dir) if url is None else url  # a viewer: no heartbeats, no recovery

    class Quiet(WSGIRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # noqa: A002  (the stdlib's name)
            pass

    try:
        server = make_server(host, port, optuna_dashboard.wsgi(storage), handler_class=Quiet)
    except OSError as exc:
        raise UserInputError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    out.print(f"dashboard: http://{host}:{server.server_port}/dashboard/", highlight=False, soft_wrap=True)
    out.file.flush()  # a pipe reading the address must get it now
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
