"""Validate a nested dataclass config from plain data (JSON, --set, keyword overrides) with pydantic.

The dataclasses in `config.py` stay the single source of fields, types, defaults and bounds (bounds as
`annotated_types` metadata, e.g. `Annotated[int, Ge(1)]`); this module turns them into a pydantic
validator once and reports every problem as one line:

    invalid config: caption.cycles = 0: must be >= 1; seed = 'abc': not a valid integer

Why pydantic rather than our own checks: it already reads type hints (Literal choices, tuples of
bounded ints, optionals, nested dataclasses), is installed with spaCy anyway, and its error records
name the exact field path, which we reword into one line. Validation is strict in JSON mode: a string
is not silently turned into a number or a boolean, a float with a fraction is not an integer.
"""

from __future__ import annotations

import dataclasses
import json
from functools import cache
from typing import Any, TypeVar

from pydantic import ConfigDict, TypeAdapter, ValidationError

T = TypeVar("T")

_PYDANTIC_CONFIG = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class ConfigValueError(ValueError):
    """Every problem found in one config, as one line (wrapped into SelfSegError by the caller)."""


@cache
def _adapter(cls: type) -> TypeAdapter:
    _mark_dataclasses(cls)
    return TypeAdapter(cls)


def _mark_dataclasses(cls: type) -> None:
    """Give `cls` and every dataclass nested in it pydantic's settings (unknown keys are errors)."""
    if not dataclasses.is_dataclass(cls) or "__pydantic_config__" in vars(cls):
        return
    cls.__pydantic_config__ = _PYDANTIC_CONFIG  # type: ignore[attr-defined]
    for field in dataclasses.fields(cls):
        default = (
            field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
        )
        if dataclasses.is_dataclass(default):
            _mark_dataclasses(type(default))


def validate_dataclass(cls: type[T], data: dict[str, Any]) -> T:
    """Build `cls` from nested plain data, checking types and bounds; ConfigValueError lists problems."""
    try:
        text = json.dumps(data, allow_nan=True)
    except (TypeError, ValueError) as exc:
        raise ConfigValueError(f"invalid config: values must be JSON data ({exc})") from None
    try:
        return _adapter(cls).validate_json(text)
    except ValidationError as exc:
        raise ConfigValueError("invalid config: " + "; ".join(_describe(e) for e in exc.errors())) from None


def _describe(error: dict[str, Any]) -> str:
    """One pydantic error record -> 'caption.cycles = 0: must be >= 1'."""
    key = ".".join(str(part) for part in error["loc"])
    kind, ctx = error["type"], error.get("ctx") or {}
    reason = {
        "greater_than_equal": lambda: f"must be >= {ctx.get('ge')}",
        "greater_than": lambda: f"must be > {ctx.get('gt')}",
        "less_than_equal": lambda: f"must be <= {ctx.get('le')}",
        "less_than": lambda: f"must be < {ctx.get('lt')}",
        "literal_error": lambda: f"choose one of {ctx.get('expected')}",
        "extra_forbidden": lambda: "unknown config key",
        "unexpected_keyword_argument": lambda: "unknown config key",
        "finite_number": lambda: "must be a finite number",
    }.get(kind, lambda: error["msg"][0].lower() + error["msg"][1:])()
    if kind in ("extra_forbidden", "unexpected_keyword_argument", "missing"):
        return f"{key}: {reason}"
    return f"{key} = {error.get('input')!r}: {reason}"
