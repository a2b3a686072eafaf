"""The installed distribution's version: ``soi_batch.__version__`` and ``soi-batch --version``."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def installed_version() -> str:
    """``soi-batch``'s version as installed; ``0+unknown`` for a source tree that is not installed."""
    try:
        return version("soi-batch")
    except PackageNotFoundError:
        return "0+unknown"
