"""The plugbox version (one place; ``plugbox.__version__`` re-exports it)."""

__version__ = "0.1.0"
