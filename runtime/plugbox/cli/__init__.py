"""The ``plugbox`` command line (``plugbox --help``)."""

from ._main import main

__all__ = ["main"]
