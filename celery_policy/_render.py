"""Values the way users write them in a policy file: YAML flow style, durations as ``1h30m``.

Shared by ``explain`` and the fleet diff, which print effective values next
to where they came from.
"""

from __future__ import annotations

import json
import math
import re
import types
import typing
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, BeforeValidator

from celery_policy.durations import format_duration, parse_duration

_PLAIN = re.compile(r"^[A-Za-z_][\w.\-/*?@]*$")
_YAML_WORDS = {"true", "false", "null", "yes", "no", "on", "off", "y", "n", "~"}
# Keys whose values are durations inside a rendered ``rules`` entry (a rule's backoff).
_DURATION_KEYS = frozenset({"initial", "max"})


def render_value(value: Any, duration: bool = False) -> str:
    """A value the way a user writes it in YAML (flow style); durations as ``1h30m``."""
    if isinstance(value, Mapping):
        items = (f"{_render_key(str(k))}: {render_value(v, str(k) in _DURATION_KEYS)}" for k, v in value.items())
        return "{" + ", ".join(items) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(render_value(v) for v in value) + "]"
    return _render_scalar(value, duration)


def render_float(value: float) -> str:
    """``2.0`` as ``2``, other floats as Python writes them."""
    if math.isfinite(value) and value.is_integer():
        return str(int(value))
    return repr(value)


def render_delay(low: float, high: float) -> str:
    """A delay range, ``5s .. 10s`` (one value when both ends agree)."""
    if low == high:
        return format_duration(high)
    return f"{format_duration(low)} .. {format_duration(high)}"


def is_duration_field(model: type[BaseModel], name: str) -> bool:
    """True when the model field holds a duration (parsed by :func:`parse_duration`)."""
    return _is_duration(model.model_fields[name].annotation) or any(
        isinstance(m, BeforeValidator) and m.func is parse_duration for m in model.model_fields[name].metadata
    )


def _is_duration(annotation: Any) -> bool:
    if typing.get_origin(annotation) is typing.Annotated:
        return any(isinstance(m, BeforeValidator) and m.func is parse_duration for m in annotation.__metadata__)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return any(_is_duration(arg) for arg in typing.get_args(annotation))
    return False


def _render_scalar(value: Any, duration: bool) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if duration and isinstance(value, int | float):
        return format_duration(float(value))
    if isinstance(value, float):
        return render_float(value)
    if isinstance(value, str):
        return _render_string(value)
    return str(value)


def _render_key(key: str) -> str:
    # Our reader keeps ``on`` and friends as string keys, so keys need no quoting for them.
    return key if _PLAIN.match(key) else json.dumps(key, ensure_ascii=False)


def _render_string(value: str) -> str:
    if _PLAIN.match(value) and value.lower() not in _YAML_WORDS:
        return value
    return json.dumps(value, ensure_ascii=False)
