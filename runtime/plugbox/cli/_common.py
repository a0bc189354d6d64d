"""Helpers the ``plugbox`` subcommands share: printing untrusted text, parsing arguments."""

from __future__ import annotations

import argparse
import unicodedata

__all__ = ["clean", "positive_int"]


def clean(text: str, *, keep_newlines: bool = False) -> str:
    """``text`` with control and format characters escaped.

    Manifests and results come from untrusted plugins; printed raw, an escape sequence could
    rewrite the terminal, and a bidi override could make text read differently than it is.
    """
    out = []
    for ch in text:
        if keep_newlines and ch in "\n\t":
            out.append(ch)
        elif unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp"):
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)


def positive_int(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value
