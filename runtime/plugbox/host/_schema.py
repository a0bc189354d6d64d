"""JSON Schema checks for extension points and host functions, bounded like the manifest's:
plugin-supplied regexes run on RE2, ``uniqueItems`` is linear, and one check spends at most
:data:`plugbox._manifest.MAX_SCHEMA_STEPS` keyword evaluations (the machinery lives in
``_manifest``; this module only applies it to payloads)."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

import jsonschema  # type: ignore[import-untyped, unused-ignore]
import jsonschema.exceptions  # type: ignore[import-untyped, unused-ignore]
import jsonschema.validators  # type: ignore[import-untyped, unused-ignore]
import referencing.exceptions

from .._errors import UsageError
from .._manifest import (
    _MAX_ERRORS,
    MAX_SCHEMA_STEPS,
    _bounded,
    _format_json_path,
    _OverBudget,
    _regex_format,
    _STEPS,
    _truncate,
    _unsafe_pattern,
    _UnsafePattern,
)

__all__ = ["Validator", "check_host_schema"]

Schema = Mapping[str, Any] | bool


def _validator_class(schema: Schema) -> Any:
    return _bounded(jsonschema.validators.validator_for(
        schema, default=jsonschema.Draft202012Validator))


def check_host_schema(schema: object, what: str) -> None:
    """Refuse (:class:`plugbox.UsageError`) a host-supplied ``schema`` that is not a JSON
    Schema (an object or a boolean) valid for its draft, with regexes RE2 can run; ``what``
    names it in the message (``extension point 'x': input_schema``)."""
    if isinstance(schema, bool):
        return
    if not isinstance(schema, Mapping):
        raise UsageError(f"{what} must be a JSON Schema (a dict or a bool), not "
                         f"{type(schema).__name__}")
    cls = _validator_class(schema)
    meta = _bounded(jsonschema.validators.validator_for(cls.META_SCHEMA, default=cls))
    token = _STEPS.set([MAX_SCHEMA_STEPS])
    try:
        error = jsonschema.exceptions.best_match(itertools.islice(
            meta(cls.META_SCHEMA, format_checker=_regex_format()).iter_errors(schema),
            _MAX_ERRORS))
    except _OverBudget:
        raise UsageError(f"{what}: checking the schema takes more than {MAX_SCHEMA_STEPS} "
                         "schema evaluations; make it smaller") from None
    except _UnsafePattern as exc:
        raise UsageError(f"{what}: {_unsafe_pattern(exc, 'the schema')}") from None
    except RecursionError:
        raise UsageError(f"{what}: the schema is nested too deeply") from None
    finally:
        _STEPS.reset(token)
    if error is not None:
        if isinstance(error.cause, _UnsafePattern):
            raise UsageError(f"{what}: {_unsafe_pattern(error.cause, 'the schema')}")
        raise UsageError(f"{what} is not a valid JSON Schema at "
                         f"{_format_json_path(error.absolute_path)}: "
                         f"{_truncate(error.message)}")


class Validator:
    """A JSON Schema compiled once, whose checks of values are bounded (RE2 regexes, linear
    ``uniqueItems``, at most MAX_SCHEMA_STEPS keyword evaluations per check)."""

    def __init__(self, schema: Schema) -> None:
        self.schema = schema
        self._validator = _validator_class(schema)(schema)

    def error(self, value: Any) -> tuple[str, str] | None:
        """``(json_path, problem)`` of the most relevant way ``value`` fails the schema, or
        None when it satisfies it. A check that runs over budget, meets a regex RE2 cannot
        run or a ``$ref`` that cannot be resolved counts as a failure at ``$``."""
        token = _STEPS.set([MAX_SCHEMA_STEPS])
        try:
            found = jsonschema.exceptions.best_match(
                itertools.islice(self._validator.iter_errors(value), _MAX_ERRORS))
        except _OverBudget:
            return "$", (f"checking it takes more than {MAX_SCHEMA_STEPS} schema evaluations "
                         "(the value is too large for the schema, or the schema too costly)")
        except _UnsafePattern as exc:
            return "$", _unsafe_pattern(exc, "the schema")
        except referencing.exceptions.Unresolvable as exc:
            return "$", (f"the schema refers to {exc}, which cannot be resolved (schemas are "
                         "never fetched over the network)")
        except RecursionError:
            return "$", "the value is nested too deeply"
        finally:
            _STEPS.reset(token)
        if found is None:
            return None
        return _format_json_path(found.absolute_path), _truncate(found.message)
