"""``python -m nas`` is the `nas` command."""

from nas.cli import main

main()
