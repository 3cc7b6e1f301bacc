"""The error a user can cause and fix; the CLI turns it into one line and exit code 2."""

from __future__ import annotations


class UserInputError(ValueError):
    """A mistake the user can fix (bad name, malformed string, bad option); the CLI exits with code 2."""
