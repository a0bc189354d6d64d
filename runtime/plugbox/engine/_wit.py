"""Where the ABI's WIT lives: the repository's ``abi/`` in a checkout, else the packaged copy.

``abi/plugbox.wit`` is the single source of truth. The wheel ships a byte-identical copy as
package data (``plugbox/abi/plugbox.wit``) so ``plugbox build`` works from an installed
plugbox too; ``tests/test_pybuild.py`` checks the two are identical.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

__all__ = ["WIT_FILENAME", "WIT_WORLD", "wit_dir"]

#: The WIT file of the ABI.
WIT_FILENAME: Final = "plugbox.wit"
#: The world a plugin implements.
WIT_WORLD: Final = "plugin"

_PACKAGE: Final = Path(__file__).resolve().parent.parent  # plugbox/, not plugbox/engine/


def wit_dir() -> Path:
    """The directory holding ``plugbox.wit``: ``<checkout>/abi`` when this plugbox runs from a
    source checkout (``runtime/plugbox`` next to ``abi``), else the packaged ``plugbox/abi``."""
    checkout = _PACKAGE.parent.parent / "abi"
    if (checkout / WIT_FILENAME).is_file() and (_PACKAGE.parent.name == "runtime"):
        return checkout
    return _PACKAGE / "abi"
