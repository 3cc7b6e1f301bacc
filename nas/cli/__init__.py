"""The `nas` command line: ``nas search`` and friends; user mistakes exit with code 2 and one line.

One module per command group; each registers its commands on the application in `nas.cli.app`.
"""

from __future__ import annotations

import os
import sys

from nas.cli import bench, dashboard, final, onnx, predictor, proxy, search, show, supernet  # noqa: F401  (registers the commands)
from nas.cli.app import app, err
from nas_ground.errors import UserInputError


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        app()
    except UserInputError as exc:
        err.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("interrupted: completed trials are kept; run the same command to resume")
        sys.exit(130)
