"""raiser (tests only): ``divide`` divides ``a`` by ``b`` of its JSON payload, so ``b = 0``
raises ZeroDivisionError two frames down; the SDK logs the traceback (issue 10 §5)."""

from plugbox_sdk import hook


def _ratio(a: float, b: float) -> float:
    return a / b


@hook("divide", json=True)
def divide(value: dict) -> float:
    """``value["a"] / value["b"]``."""
    return _ratio(value["a"], value["b"])
