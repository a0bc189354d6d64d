"""The package's layers (docs/architecture.md, "Layers"): every import inside plugbox points
down. Read from the source with ``ast`` (imports inside functions and ``TYPE_CHECKING`` blocks
count too), so a new module in the wrong place fails here, not in review."""

from __future__ import annotations

import ast
from pathlib import Path

import plugbox

PACKAGE = Path(plugbox.__file__).parent

#: The layers, bottom first. A module may import from its own layer and the ones listed.
#: ``abi`` is the ABI tables: data that every layer may read, importing nothing of plugbox.
ALLOWED: dict[str, set[str]] = {
    "abi": set(),
    "model": {"abi"},
    "services": {"abi", "model"},
    "engine": {"abi", "model", "services"},
    "trust": {"abi", "model"},
    "plugin": {"abi", "model", "services", "engine", "trust"},
    "runtime": {"abi", "model", "services", "engine", "trust", "plugin"},
    "authoring": {"abi", "model"},
    "host": {"abi", "model", "services", "engine", "trust", "plugin", "runtime"},
    "monitor": {"abi", "model", "services", "engine", "trust", "plugin", "runtime", "host"},
    "registry": {"abi", "model", "services", "engine", "trust", "plugin", "runtime", "host"},
    "cli": {"abi", "model", "services", "engine", "trust", "plugin", "runtime", "authoring",
            "host", "monitor", "registry"},
    "web": {"abi", "model", "services", "engine", "trust", "plugin", "runtime", "host",
            "monitor", "registry"},
    # cli: `flask plugins` (integrations.flask) runs the `plugbox plugins` commands.
    "integrations": {"abi", "model", "services", "engine", "trust", "plugin", "runtime",
                     "host", "monitor", "web", "cli"},
    "top": set(),  # plugbox/__init__.py and the demo: the package's face, may import anything
}
ALLOWED["top"] = set(ALLOWED) - {"top"}

MODEL = {"_errors", "_permissions", "_manifest", "_policy", "_version", "_metrics", "_pybundle"}
ABI = {"engine._abispec", "engine._wit"}


def layer_of(module: str) -> str:
    """The layer of ``module`` (dotted, without the leading ``plugbox.``)."""
    if module in ABI:
        return "abi"
    head = module.split(".")[0]
    if head in MODEL:
        return "model"
    if head == "_plugin":
        return "plugin"
    if head == "_runtime":
        return "runtime"
    if head in ("", "__init__", "demo", "__main__"):
        return "top"
    if head in ALLOWED:
        return head
    raise AssertionError(f"plugbox.{module} is in no layer: add it to tests/test_layers.py "
                         "and docs/architecture.md")


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports_of(module: str, path: Path) -> set[str]:
    """Every plugbox module ``module`` imports, dotted without ``plugbox.``."""
    is_pkg = path.name == "__init__.py"
    package = module.split(".") if is_pkg else module.split(".")[:-1]
    if module == "":
        package = []
    found: set[str] = set()
    known = modules()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                stem = ".".join(base + ([node.module] if node.module else []))
                targets = [f"plugbox.{stem}".rstrip(".")]
            else:
                targets = [node.module or ""]
            # `from pkg import mod` imports the module, not (for layering) the package
            subs = [f"{targets[0]}.{a.name}" for a in node.names]
            if any(s[len("plugbox."):] in known for s in subs):
                targets = subs
        for t in targets:
            if t == "plugbox" or t.startswith("plugbox."):
                rel = t[len("plugbox."):] if t != "plugbox" else ""
                if rel in known and rel != module:
                    found.add(rel)
    return found


def test_every_module_has_a_layer() -> None:
    for module in modules():
        layer_of(module)


def test_imports_point_down() -> None:
    wrong = []
    for module, path in modules().items():
        mine = layer_of(module)
        for target in sorted(imports_of(module, path)):
            theirs = layer_of(target)
            if theirs == mine:
                continue
            if theirs not in ALLOWED[mine]:
                wrong.append(f"plugbox.{module} ({mine}) imports plugbox.{target} ({theirs})")
    assert not wrong, "imports that point up or sideways:\n" + "\n".join(wrong)


def test_checker_sees_an_upward_import(tmp_path: Path) -> None:
    """The checker itself: a services module importing the runtime is caught."""
    bad = tmp_path / "x.py"
    bad.write_text("def f():\n    from .._runtime import Runtime\n")
    found = imports_of("services._x", bad)
    assert found == {"_runtime"}
    assert layer_of("_runtime") not in ALLOWED[layer_of("services._x")]


def test_plugin_does_not_import_runtime() -> None:
    """The Runtime <-> Plugin cycle is gone: the runtime imports Plugin, never the reverse."""
    assert "_runtime" not in imports_of("_plugin", PACKAGE / "_plugin.py")
