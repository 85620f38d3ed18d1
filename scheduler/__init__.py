"""amc-scheduler: a persistent queue of Amazon Marketing Cloud workflow executions."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("amc-scheduler")
except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
    __version__ = "0.0.0"

__all__ = ["__version__"]
