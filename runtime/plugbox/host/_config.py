"""Plugin configuration (issue 9 §5): validation with the schema's defaults applied, secrets
kept out of everything printed.

- :func:`validated` returns a new configuration: the given one with the ``config_schema``'s
  ``default`` values filled in (nested objects too), checked against the schema. A
  configuration that fails is refused with :class:`plugbox.ConfigError` naming the JSON path,
  and nothing of it is applied (the input is never modified; the result is a fresh copy).
- :func:`redacted` replaces every value the schema marks ``writeOnly: true`` (at any depth)
  with ``"***"``, for ``info()``, the audit log, logs and the CLI.
- :func:`diff` describes a change in lines for the audit log, secret values shown only as
  changed.

jsonschema validates but never fills defaults, so defaults come from a walk of the schema
along the configuration: ``properties`` (a member absent from the configuration gets a copy
of its ``default``; then the walk goes on inside it, so ``"default": {}`` on an object fills
that object's own defaults), local ``$ref``s (``#/...``) and ``allOf``. Branches that depend
on the value (``anyOf``, ``oneOf``, ``if``) give no defaults: which one applies is not known
before validation. Redaction walks further, and errs on the side of hiding: a value is secret
when any subschema that may apply to it (``properties``, ``patternProperties``,
``additionalProperties``, ``items``, ``prefixItems``, ``$ref``, ``allOf``/``anyOf``/``oneOf``,
``if``/``then``/``else``, ``dependentSchemas``) says ``writeOnly``. Every walk is bounded by
:data:`plugbox._manifest.MAX_SCHEMA_STEPS` schema visits.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator, Mapping
from typing import Any, Final

from .._errors import ManifestError
from .._manifest import (
    MAX_CONFIG_BYTES,
    MAX_SCHEMA_STEPS,
    _format_json_path,
    _re2,
    _short,
    _UnsafePattern,
)
from ._errors import ConfigError
from ._schema import Validator

__all__ = ["REDACTED", "diff", "redacted", "secret_paths", "validated"]

#: What a secret value is replaced with.
REDACTED: Final = "***"

Schema = Mapping[str, Any] | bool | None
Path = tuple[str | int, ...]


class _OverBudget(Exception):
    pass


class _Walk:
    """Schema visits left, and local ``$ref`` resolution against the root schema."""

    def __init__(self, root: Schema) -> None:
        self.root = root
        self.left = MAX_SCHEMA_STEPS
        # (id of a subschema, path of a value) pairs already visited: a $ref loop that meets
        # the same value again adds nothing, so it is cut there.
        self.seen: set[tuple[int, Path]] = set()

    def step(self) -> None:
        self.left -= 1
        if self.left < 0:
            raise _OverBudget

    def first_visit(self, schema: Schema, path: Path) -> bool:
        """Count a visit of ``schema`` at ``path``; False when it was visited before."""
        self.step()
        key = (id(schema), path)
        if key in self.seen:
            return False
        self.seen.add(key)
        return True

    def ref(self, schema: Mapping[str, Any]) -> Schema:
        """The local subschema ``schema["$ref"]`` points to, or None (not local, or absent:
        validation reports unresolvable references)."""
        ref = schema.get("$ref")
        if not isinstance(ref, str) or not ref.startswith("#"):
            return None
        node: Any = self.root
        for raw in ref[1:].split("/")[1:] if ref != "#" else []:
            part = raw.replace("~1", "/").replace("~0", "~")
            if isinstance(node, Mapping) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                return None
        return node if isinstance(node, (Mapping, bool)) else None


def _refuse(plugin: str, json_path: str, problem: str, fix: str) -> ConfigError:
    return ConfigError(f"plugin {plugin!r}: the configuration is refused at {json_path}: "
                       f"{problem}; nothing of it was applied. To fix: {fix}",
                       plugin=plugin, json_path=json_path, fix=fix)


def validated(schema: Schema, config: Any, *, plugin: str) -> dict[str, Any]:
    """``config`` with ``schema``'s defaults applied, checked against ``schema`` (a plugin's
    ``config_schema``; None: any object is accepted as it is). Returns a new dict; ``config``
    is not modified.

    Raises :class:`plugbox.ConfigError` (``json_path``, ``plugin``, ``fix``) when the
    configuration is not a JSON object, not JSON (NaN, non-string keys, other types), larger
    than :data:`plugbox._manifest.MAX_CONFIG_BYTES` as JSON, or fails the schema (defaults
    included: a default the schema itself refuses is reported at its path). A schema that
    cannot be applied within the bounds is the plugin's fault: :class:`plugbox.ManifestError`.
    """
    if not isinstance(config, Mapping):
        raise _refuse(plugin, "$", f"it must be a JSON object, not {type(config).__name__}",
                      "pass a dict")
    try:
        text = json.dumps(config, ensure_ascii=False, allow_nan=False)
        if len(text.encode("utf-8")) > MAX_CONFIG_BYTES:
            raise _refuse(plugin, "$", f"it is larger than {MAX_CONFIG_BYTES} bytes as JSON",
                          "keep configurations small; pass large data another way")
        # A JSON round trip: a deep copy holding JSON types only (tuples become lists).
        out: dict[str, Any] = json.loads(text)
    except (TypeError, ValueError) as exc:
        raise _refuse(plugin, "$", f"it is not JSON ({str(exc)[:200]})",
                      "use only dicts with string keys, lists, strings, finite numbers, "
                      "booleans and None") from None
    except RecursionError:
        raise _refuse(plugin, "$", "it is nested too deeply", "flatten it") from None
    if schema is None:
        return out
    walk = _Walk(schema)
    try:
        _fill(schema, out, walk)
    except RecursionError:
        raise _refuse(plugin, "$", "it is nested too deeply for its schema",
                      "flatten it") from None
    except _OverBudget:
        raise ManifestError(
            f"plugin {plugin!r}: applying the defaults of its config_schema takes more than "
            f"{MAX_SCHEMA_STEPS} schema visits ($ref or allOf chains); simplify the schema",
            plugin=plugin, json_path="$.config_schema") from None
    error = Validator(schema).error(out)
    if error is not None:
        json_path, problem = error
        raise _refuse(plugin, json_path, problem,
                      f"change the value at {json_path} so that it satisfies the plugin's "
                      f"config_schema")
    return out


def _fill(schema: Schema, value: Any, walk: _Walk, path: Path = ()) -> None:
    """Fill ``schema``'s defaults into ``value`` (a JSON copy, modified in place), which
    sits at ``path`` in the configuration."""
    if not isinstance(schema, Mapping) or not walk.first_visit(schema, path):
        return
    target = walk.ref(schema)
    if target is not None:
        _fill(target, value, walk, path)
    for sub in schema.get("allOf", ()) if isinstance(schema.get("allOf"), list) else ():
        _fill(sub, value, walk, path)
    properties = schema.get("properties")
    if not isinstance(value, dict) or not isinstance(properties, Mapping):
        return
    for key, sub in properties.items():
        if key not in value and isinstance(sub, Mapping) and "default" in sub:
            value[key] = copy.deepcopy(sub["default"])
        if key in value:
            _fill(sub, value[key], walk, (*path, key))


def _applicable(schema: Mapping[str, Any], value: Any,
                walk: _Walk) -> Iterator[tuple[Path, Any, Schema]]:
    """``(relative path, child value, subschema)`` for every subschema that may apply to a
    child of ``value`` or to ``value`` itself (path ``()``), erring on the side of more."""
    target = walk.ref(schema)
    if target is not None:
        yield (), value, target
    for key in ("allOf", "anyOf", "oneOf"):
        subs = schema.get(key)
        for sub in subs if isinstance(subs, list) else ():
            yield (), value, sub
    for key in ("if", "then", "else"):
        if key in schema:
            yield (), value, schema[key]
    if isinstance(value, dict):
        dependent = schema.get("dependentSchemas")
        if isinstance(dependent, Mapping):
            for key, sub in dependent.items():
                if key in value:
                    yield (), value, sub
        properties = schema.get("properties")
        properties = properties if isinstance(properties, Mapping) else {}
        patterns = schema.get("patternProperties")
        patterns = patterns if isinstance(patterns, Mapping) else {}
        additional = schema.get("additionalProperties")
        for key, child in value.items():
            matched = False
            if key in properties:
                matched = True
                yield (key,), child, properties[key]
            for pattern, sub in patterns.items():
                walk.step()
                try:
                    hit = _re2(pattern).search(key) is not None
                except _UnsafePattern:
                    hit = True  # cannot tell: assume it applies
                if hit:
                    matched = True
                    yield (key,), child, sub
            if not matched and additional is not None:
                yield (key,), child, additional
    elif isinstance(value, list):
        prefix = schema.get("prefixItems")
        prefix = prefix if isinstance(prefix, list) else []
        items = schema.get("items")
        for index, child in enumerate(value):
            if index < len(prefix):
                yield (index,), child, prefix[index]
            if isinstance(items, list):  # drafts before 2020-12: items as an array
                if index < len(items):
                    yield (index,), child, items[index]
            elif items is not None and index >= len(prefix):
                yield (index,), child, items
            if "additionalItems" in schema and isinstance(items, list) \
                    and index >= len(items):
                yield (index,), child, schema["additionalItems"]


def secret_paths(schema: Schema, config: Any) -> set[Path]:
    """The paths (tuples of keys and indexes) of ``config``'s values that ``schema`` marks
    ``writeOnly``, outermost only. Over the walk's bound, ``{()}``: everything is secret."""
    if not isinstance(schema, Mapping):
        return set()
    walk = _Walk(schema)
    found: set[Path] = set()
    stack: list[tuple[Path, Any, Schema]] = [((), config, schema)]
    try:
        while stack:
            path, value, sub = stack.pop()
            if not isinstance(sub, Mapping) or not walk.first_visit(sub, path):
                continue
            if sub.get("writeOnly") is True:
                found.add(path)
                continue
            for rel, child, child_schema in _applicable(sub, value, walk):
                stack.append(((*path, *rel), child, child_schema))
    except _OverBudget:
        return {()}
    # Outermost only: a secret inside a secret is already hidden.
    return {path for path in found
            if not any(path[:i] in found for i in range(len(path)))}


def _hide(value: Any, secrets: set[Path], path: Path = ()) -> Any:
    if path in secrets:
        return REDACTED
    if isinstance(value, Mapping):
        return {key: _hide(child, secrets, (*path, key)) for key, child in value.items()}
    if isinstance(value, list):
        return [_hide(child, secrets, (*path, index)) for index, child in enumerate(value)]
    return value


def redacted(schema: Schema, config: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``config`` with every value ``schema`` marks ``writeOnly: true`` (at any
    depth) replaced by ``"***"``; what ``info()``, the audit log, logs and the CLI show.
    ``config`` is not modified."""
    hidden = _hide(config, secret_paths(schema, config))
    return hidden if isinstance(hidden, dict) else {}


def _flatten(value: Any, secrets: set[Path], path: Path = ()) -> Iterator[tuple[Path, Any]]:
    if path in secrets:
        yield path, _Secret(value)
    elif isinstance(value, Mapping) and value:
        for key, child in value.items():
            yield from _flatten(child, secrets, (*path, key))
    else:
        yield path, value


class _Secret:
    """A secret leaf: compared by value, never shown."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Secret) and other.value == self.value

    __hash__ = None  # type: ignore[assignment]


def _show(value: Any) -> str:
    if isinstance(value, _Secret):
        return "(secret)"
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = _short(value)
    return text if len(text) <= 80 else text[:77] + "..."


def diff(old: Mapping[str, Any], new: Mapping[str, Any], schema: Schema = None) -> list[str]:
    """The change from configuration ``old`` to ``new`` as lines for the audit log
    (``$.top_n: 5 -> 10``, ``$.url: added "https://..."``, ``$.token: changed (secret)``),
    in path order; empty when they are equal. Values ``schema`` marks ``writeOnly`` in either
    are never shown, only whether they were added, removed or changed."""
    secrets = secret_paths(schema, old) | secret_paths(schema, new)
    before = dict(_flatten(old, secrets))
    after = dict(_flatten(new, secrets))
    lines: list[tuple[str, str]] = []
    for path in sorted(set(before) | set(after), key=lambda p: [str(x) for x in p]):
        shown = _format_json_path(path)
        secret = isinstance(before.get(path), _Secret) or isinstance(after.get(path), _Secret)
        if path not in after:
            lines.append((shown, f"{shown}: removed" + ("" if secret else
                                                         f" (was {_show(before[path])})")))
        elif path not in before:
            lines.append((shown, f"{shown}: added" + (" (secret)" if secret else
                                                       f" {_show(after[path])}")))
        elif before[path] != after[path] or type(before[path]) is not type(after[path]):
            if secret:
                lines.append((shown, f"{shown}: changed (secret)"))
            else:
                lines.append((shown, f"{shown}: {_show(before[path])} -> "
                                     f"{_show(after[path])}"))
    return [line for _, line in lines]
