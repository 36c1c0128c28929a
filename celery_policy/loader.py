"""Policy files -> validated :class:`PolicyDocument` plus a source map.

Several files merge in order (a base file, then a team file); an environment
overlay is deep-merged over the result. Mappings merge, scalars and lists
replace. Every key path remembers the file, line and column it came from and
the layer (``base`` or ``env:NAME``) that supplied it.
"""

from __future__ import annotations

import difflib
import os
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from celery_policy._yaml import KeyPath, Span, YamlError, parse_yaml, render_path
from celery_policy.durations import DURATION_HINT
from celery_policy.errors import Diagnostic, Location, PolicyError, trim
from celery_policy.model import Overlay, PolicyDocument

MAX_FILE_BYTES = 4 * 1024 * 1024
DEFAULT_POLICY_PATH = "policies/celery-policy.yaml"


class UnreadableFileError(PolicyError):
    """A policy file does not exist or cannot be read (a usage error, exit 2)."""


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a value came from: its place in a file and the overlay layer."""

    location: Location
    key_location: Location | None
    layer: str  # "base" or "env:NAME"


SourceMap = dict[KeyPath, Origin]


@dataclass(frozen=True, slots=True)
class RawPolicy:
    """Merged plain data of one or more files, before validation."""

    files: tuple[str, ...]
    data: dict[str, Any]
    source: SourceMap
    diagnostics: tuple[Diagnostic, ...] = ()


def read_policy_file(path: str | os.PathLike[str]) -> RawPolicy:
    """Read and parse one file. Raises :class:`UnreadableFileError` or :class:`PolicyError` (CP100)."""
    name = os.fspath(path)
    try:
        size = os.path.getsize(name)
        if size > MAX_FILE_BYTES:
            msg = f"policy file is too large ({size / 1e6:.1f} MB; the limit is {MAX_FILE_BYTES // (1024 * 1024)} MiB)"
            raise PolicyError(
                diagnostics=[Diagnostic("CP100", msg, Location(name), "split it or remove generated entries")]
            )
        raw = Path(name).read_bytes()
    except PolicyError:
        raise
    except OSError as exc:
        msg = f"cannot read policy file {name}: {exc.strerror or exc}"
        raise UnreadableFileError(msg, [Diagnostic("CP100", msg, Location(name))]) from exc
    return parse_policy_text(raw, name)


def parse_policy_text(raw: bytes | str, name: str) -> RawPolicy:
    """Parse the text of one policy file; ``name`` is used in locations."""
    if isinstance(raw, bytes):
        if b"\x00" in raw[:8192]:
            raise PolicyError(
                diagnostics=[Diagnostic("CP100", "not a text file (it contains NUL bytes)", Location(name))]
            )
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            line = raw[: exc.start].count(b"\n") + 1
            col = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
            msg = "not UTF-8 text"
            hint = "save the file as UTF-8"
            raise PolicyError(diagnostics=[Diagnostic("CP100", msg, Location(name, line, col), hint)]) from exc
    else:
        text = raw
    try:
        parsed = parse_yaml(text, name)
    except YamlError as exc:
        diagnostic = exc.diagnostic
        if diagnostic.location is not None and _line_has_tab(text, diagnostic.location.line):
            diagnostic = Diagnostic(
                diagnostic.code, diagnostic.message, diagnostic.location, "YAML indentation must use spaces, not tabs"
            )
        raise PolicyError(diagnostics=[diagnostic]) from exc
    if parsed.data is None:
        msg = "policy file is empty"
        hint = "start it with 'version: 1'"
        raise PolicyError(diagnostics=[Diagnostic("CP101", msg, Location(name), hint)])
    if not isinstance(parsed.data, dict):
        msg = f"a policy file is a mapping, got {_yaml_type(parsed.data)} {trim(parsed.data)}"
        raise PolicyError(diagnostics=[Diagnostic("CP101", msg, Location(name), "start it with 'version: 1'")])
    source = {path: _origin(span, "base") for path, span in parsed.spans.items()}
    return RawPolicy((name,), parsed.data, source, tuple(parsed.diagnostics))


def _line_has_tab(text: str, line: int) -> bool:
    lines = text.splitlines()
    return 0 < line <= len(lines) and "\t" in lines[line - 1]


def _origin(span: Span, layer: str) -> Origin:
    return Origin(span.value, span.key, layer)


def merge_raw(layers: Sequence[RawPolicy]) -> RawPolicy:
    """Merge several files in order; later files win per key."""
    first = layers[0]
    data: dict[str, Any] = {}
    source: SourceMap = {(): first.source[()]}
    for layer in layers:
        _deep_merge(data, layer.data, (), source, layer.source, None)
    files = tuple(f for layer in layers for f in layer.files)
    diagnostics = tuple(d for layer in layers for d in layer.diagnostics)
    return RawPolicy(files, data, source, diagnostics)


def _deep_merge(
    target: dict[str, Any],
    overlay: Mapping[str, Any],
    path: KeyPath,
    target_source: SourceMap,
    overlay_source: SourceMap,
    overlay_prefix: KeyPath | None,
    layer: str | None = None,
) -> None:
    """Merge ``overlay`` into ``target`` in place, moving source entries along."""
    for key, value in overlay.items():
        child = (*path, key)
        from_path = (*(overlay_prefix or ()), *child) if overlay_prefix is not None else child
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            origin = overlay_source.get(from_path)
            if origin is not None and child not in target_source:
                target_source[child] = _relayer(origin, layer)
            _deep_merge(target[key], value, child, target_source, overlay_source, overlay_prefix, layer)
            continue
        target[key] = _plain_copy(value)
        for stale in [p for p in target_source if p[: len(child)] == child]:
            del target_source[stale]
        size = len(from_path)
        for src_path, origin in overlay_source.items():
            if src_path[:size] == from_path:
                target_source[(*child, *src_path[size:])] = _relayer(origin, layer)


def _relayer(origin: Origin, layer: str | None) -> Origin:
    return origin if layer is None else Origin(origin.location, origin.key_location, layer)


def _plain_copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain_copy(v) for v in value]
    return value


def environment_chain(raw: RawPolicy, env: str) -> list[str]:
    """The overlays to apply for ``env``, base-most first (following ``extends``).

    Raises :class:`PolicyError` for an unknown environment (CP111) or a cycle (CP112).
    """
    environments = raw.data.get("environments") or {}
    if not isinstance(environments, dict):
        return []
    chain: list[str] = []
    current: str | None = env
    while current is not None:
        if current in chain:
            cycle = " -> ".join([*chain, current])
            location = raw.source.get(("environments", chain[-1], "extends"))
            msg = f"environments extend each other in a cycle: {cycle}"
            diagnostic = Diagnostic(
                "CP112",
                msg,
                location.location if location else None,
                "remove one 'extends' so the chain ends",
                path=render_path(("environments", chain[-1], "extends")),
            )
            raise PolicyError(diagnostics=[diagnostic])
        overlay = environments.get(current)
        if (not isinstance(overlay, dict) and overlay is not None) or current not in environments:
            known = sorted(str(k) for k in environments)
            referrer = chain[-1] if chain else None
            location = raw.source.get(("environments", referrer, "extends")) if referrer else None
            msg = f"unknown environment '{trim(current)}'"
            hint = _did_you_mean(current, known) or (
                f"known environments: {', '.join(known)}" if known else "the file defines no environments"
            )
            diagnostic = Diagnostic(
                "CP111",
                msg,
                location.location if location else Location(raw.files[0]),
                hint,
                path=render_path(("environments", referrer, "extends")) if referrer else None,
            )
            raise PolicyError(diagnostics=[diagnostic])
        chain.append(current)
        current = overlay.get("extends") if isinstance(overlay, dict) else None
        if current is not None and not isinstance(current, str):
            break
    return list(reversed(chain))


def apply_environment(raw: RawPolicy, env: str | None) -> RawPolicy:
    """The document as seen in ``env``: overlays deep-merged over the base, ``environments`` removed."""
    data = {k: _plain_copy(v) for k, v in raw.data.items() if k != "environments"}
    source = {p: o for p, o in raw.source.items() if not (p and p[0] == "environments")}
    if env is not None:
        for name in environment_chain(raw, env):
            overlay = raw.data["environments"][name] or {}
            body = {k: v for k, v in overlay.items() if k != "extends"}
            _deep_merge(data, body, (), source, raw.source, ("environments", name), f"env:{name}")
    return RawPolicy(raw.files, data, source, raw.diagnostics)


# --- validation -------------------------------------------------------------


def validate_document(raw: RawPolicy) -> PolicyDocument:
    """Validate merged data; raise :class:`PolicyError` with one diagnostic per problem."""
    diagnostics = list(raw.diagnostics)
    try:
        document = PolicyDocument.model_validate(raw.data)
    except ValidationError as exc:
        diagnostics.extend(translate_validation_error(exc, raw))
        raise PolicyError(diagnostics=diagnostics) from exc
    if diagnostics:
        raise PolicyError(diagnostics=diagnostics)
    return document


def translate_validation_error(exc: ValidationError, raw: RawPolicy, prefix: KeyPath = ()) -> list[Diagnostic]:
    """Turn Pydantic's ``loc`` tuples into file:line:col findings with hints."""
    found: list[Diagnostic] = []
    seen: set[tuple[str, KeyPath]] = set()
    for error in exc.errors(include_url=False):
        loc = (*prefix, *_clean_loc(error["loc"]))
        kind = error["type"]
        if (kind, loc) in seen:
            continue
        seen.add((kind, loc))
        found.append(_diagnostic_for(error, loc, raw))
    return found


def _clean_loc(loc: Iterable[Any]) -> KeyPath:
    # Pydantic adds union member names ("function-after[...]", "int", "str") to loc; drop them.
    return tuple(p for p in loc if isinstance(p, int) or not _is_union_tag(str(p)))


def _is_union_tag(part: str) -> bool:
    return ("[" in part and part.endswith("]")) or part in {"int", "float", "str", "bool", "none", "list", "dict"}


def _diagnostic_for(error: Any, loc: KeyPath, raw: RawPolicy) -> Diagnostic:
    kind = error["type"]
    path_text = render_path(loc)
    value = error.get("input")
    if kind == "extra_forbidden":
        key = str(loc[-1])
        origin = lookup_origin(raw.source, loc)
        allowed = allowed_keys(loc[:-1])
        hint = (
            _belongs_under(key, loc[:-1])
            or _did_you_mean(key, allowed)
            or (f"allowed keys here: {', '.join(allowed)}" if allowed else None)
        )
        where = render_path(loc[:-1]) or "the top level"
        location = origin.key_location or origin.location if origin else None
        return Diagnostic("CP102", f"unknown key '{trim(key)}' in {where}", location, hint, path=path_text)
    origin = lookup_origin(raw.source, loc)
    location = origin.location if origin else Location(raw.files[0])
    message = str(error["msg"])
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    if kind == "missing":
        key_name = str(loc[-1])
        where = render_path(loc[:-1]) or "the top level"
        hint = "add 'version: 1' at the top of the file" if loc == ("version",) else f"add '{key_name}:'"
        return Diagnostic("CP101", f"missing required key '{key_name}' in {where}", location, hint, path=path_text)
    code = "CP104" if "duration" in message else "CP130" if "is not a rate" in message else "CP101"
    if kind == "literal_error" and loc == ("version",):
        shown = f"'{trim(value)}' (a string)" if isinstance(value, str) else trim(value)
        hint = "write version: 1 without quotes" if str(value).strip() == "1" else "this release reads version: 1"
        return Diagnostic("CP101", f"unsupported version {shown}", location, hint, path=path_text)
    if kind == "string_pattern_mismatch" and loc and loc[-1] == "rate_limit":
        return Diagnostic(
            "CP101", f"rate_limit '{trim(value)}' is not a rate", location, RATE_LIMIT_HINT, path=path_text
        )
    message = message[0].lower() + message[1:] if message else message
    shown = "" if code in ("CP104", "CP130") or isinstance(value, (dict, list)) else f", got {trim(value)}"
    hint = _hint_for(kind, loc, error)
    return Diagnostic(code, f"{message}{shown}", location, hint, path=path_text)


RATE_LIMIT_HINT = (
    "write tasks per second, minute or hour as a number, a slash and s, m or h: 100/s (a hundred a second), "
    "10/m (ten a minute), 1/h (one an hour); a plain number is per second"
)


def _belongs_under(key: str, parent: KeyPath) -> str | None:
    """A structural hint for a key written one level too high: ``backoff`` directly under a task."""
    model = None
    node: Any = PolicyDocument
    for part in parent:
        node = _step(node, part)
        if node is None:
            return None
    model = _as_model(node)
    if model is None:
        return None
    homes = []
    for name, field in model.model_fields.items():
        child = _as_model(field.annotation)
        if child is not None and key in child.model_fields:
            homes.append(name)
    if not homes:
        return None
    here = render_path(parent) or "the top level"
    home = homes[0]
    return f"'{key}' belongs under '{home}': write {home}: {{{key}: ...}} in {here}"


def _hint_for(kind: str, loc: KeyPath, error: Any) -> str | None:
    if "duration" in str(error["msg"]):
        return DURATION_HINT
    if "is not a rate" in str(error["msg"]):
        return "a limit's rate is tokens per period for the whole fleet, e.g. rate: 40/s or rate: 5/10s"
    if (
        (kind == "string_pattern_mismatch" and loc and loc[-2:-1] in (("on",), ("never",)))
        or "on" in loc
        or "never" in loc
    ):
        return "name an exception class by its import path (builtins.TimeoutError) or a group from 'errors'"
    if kind == "string_pattern_mismatch" and "hooks" in loc:
        return "name a callable by its import path, e.g. proj.alerts.page_oncall"
    if kind == "literal_error":
        expected = error.get("ctx", {}).get("expected")
        return f"use one of {expected}" if expected else None
    if kind in {"dict_type", "model_type"}:
        return "this key takes a mapping of keys to values"
    if kind == "list_type":
        return "this key takes a list, e.g. [a, b]"
    return None


def lookup_origin(source: SourceMap, path: KeyPath) -> Origin | None:
    """The origin of ``path`` or of its nearest ancestor that has one."""
    while True:
        origin = source.get(path)
        if origin is not None or not path:
            return origin
        path = path[:-1]


def _did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    matches = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"did you mean '{matches[0]}'?" if matches else None


def allowed_keys(path: KeyPath) -> list[str]:
    """The keys a model accepts at ``path`` (used for "did you mean" hints)."""
    node: Any = PolicyDocument
    for part in path:
        node = _step(node, part)
        if node is None:
            return []
    model = _as_model(node)
    return list(model.model_fields) if model is not None else []


def _step(node: Any, part: str | int) -> Any:
    model = _as_model(node)
    if model is not None:
        field = model.model_fields.get(str(part))
        return field.annotation if field is not None else None
    origin = typing.get_origin(node)
    args = [a for a in typing.get_args(node) if a is not type(None)]
    if origin in (list, dict) and args:
        return args[-1]
    if origin in (typing.Union, types.UnionType, typing.Annotated) and args:
        return _step(args[0], part)
    return None


def _is_model(node: Any) -> bool:
    # typing.get_origin: on Python 3.10 a generic alias such as dict[str, X] passes isinstance(node, type)
    return isinstance(node, type) and typing.get_origin(node) is None and issubclass(node, BaseModel)


def _as_model(node: Any) -> type[BaseModel] | None:
    if _is_model(node):
        return typing.cast("type[BaseModel]", node)
    if typing.get_origin(node) in (typing.Union, types.UnionType):
        for arg in typing.get_args(node):
            if _is_model(arg):
                return typing.cast("type[BaseModel]", arg)
    return None


def _yaml_type(value: Any) -> str:
    return {list: "a list", str: "a string", int: "a number", float: "a number", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )


def validate_overlays(raw: RawPolicy) -> list[Diagnostic]:
    """Schema findings inside ``environments.*`` (each overlay on its own, before merging)."""
    environments = raw.data.get("environments")
    if not isinstance(environments, dict):
        return []
    found: list[Diagnostic] = []
    for name, body in environments.items():
        try:
            Overlay.model_validate(body or {})
        except ValidationError as exc:
            found.extend(translate_validation_error(exc, raw, ("environments", name)))
    return found


def default_policy_paths() -> list[str]:
    """``$CELERY_POLICY_FILE`` (``os.pathsep``-separated for several files), else the conventional path."""
    configured = os.environ.get("CELERY_POLICY_FILE")
    if configured:
        return [p for p in configured.split(os.pathsep) if p]
    return [DEFAULT_POLICY_PATH]
