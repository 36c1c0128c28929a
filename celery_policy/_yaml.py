"""A YAML reader that keeps a source location for every key and value.

It builds plain data from PyYAML's (libyaml's when available) event stream
rather than from its constructor, which gives us:
- a ``(line, column)`` for each key path, so Pydantic errors can be reported
  at the user's line;
- YAML 1.2 scalars: ``on``, ``yes``, ``no``, ``off`` are strings, as users
  expect from GitHub Actions files (PyYAML's YAML 1.1 reads ``on:`` as True);
- duplicate keys as an error instead of "last one wins";
- a nesting limit and no recursion, so hostile input cannot blow the stack.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from celery_policy.errors import Diagnostic, Location

try:  # libyaml is an order of magnitude faster on big files
    from yaml import CSafeLoader as _Loader
except ImportError:  # pragma: no cover - depends on how PyYAML was built
    from yaml import SafeLoader as _Loader  # type: ignore[assignment]

MAX_DEPTH = 64
KeyPath = tuple[str | int, ...]  # a key path in a document, e.g. ("tasks", "orders.charge", "retry", "on", 0)

_NULL = re.compile(r"^(?:~|null|Null|NULL|)$")
_BOOL = {"true": True, "True": True, "TRUE": True, "false": False, "False": False, "FALSE": False}
_INT = re.compile(r"^[-+]?[0-9]+$")
_INT_OCT = re.compile(r"^0o[0-7]+$")
_INT_HEX = re.compile(r"^0x[0-9a-fA-F]+$")
_FLOAT = re.compile(r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?$")
_INF = re.compile(r"^[-+]?\.(?:inf|Inf|INF)$")
_NAN = re.compile(r"^\.(?:nan|NaN|NAN)$")
_TAG = "tag:yaml.org,2002:"


@dataclass(frozen=True, slots=True)
class Span:
    """Where a key (if any) and its value start."""

    key: Location | None
    value: Location


@dataclass(slots=True)
class ParsedYaml:
    data: Any
    spans: dict[KeyPath, Span] = field(default_factory=dict)
    diagnostics: list[Diagnostic] = field(default_factory=list)


class YamlError(Exception):
    def __init__(self, diagnostic: Diagnostic) -> None:
        super().__init__(diagnostic.message)
        self.diagnostic = diagnostic


def _scalar(event: yaml.ScalarEvent) -> Any:
    value = event.value
    tag = event.tag
    if tag in (None, "!") or not tag:
        if not event.implicit[0]:  # quoted: always a string
            return value
        if _NULL.match(value):
            return None
        if value in _BOOL:
            return _BOOL[value]
        if _INT.match(value):
            return int(value)
        if _INT_OCT.match(value):
            return int(value[2:], 8)
        if _INT_HEX.match(value):
            return int(value[2:], 16)
        if _FLOAT.match(value):
            return float(value)
        if _INF.match(value):
            return -math.inf if value.startswith("-") else math.inf
        if _NAN.match(value):
            return math.nan
        return value
    if tag == _TAG + "str":
        return value
    if tag == _TAG + "int":
        return int(value, 0)
    if tag == _TAG + "float":
        return float(value)
    if tag == _TAG + "bool":
        return _BOOL.get(value, value)
    if tag == _TAG + "null":
        return None
    msg = f"unsupported YAML tag {tag}"
    raise ValueError(msg)


class _Frame:
    __slots__ = ("anchor", "container", "first_key_locs", "key", "key_loc", "merges", "own_key_loc", "path")

    def __init__(self, container: dict[str, Any] | list[Any], path: KeyPath, anchor: str | None) -> None:
        self.container = container
        self.path = path
        self.anchor = anchor
        self.key: str | None = None
        self.key_loc: Location | None = None
        self.own_key_loc: Location | None = None
        self.merges: list[tuple[Any, KeyPath | None, Location]] = []
        # Where each key was first written: a repeated key whose value is a
        # mapping or list has already replaced the span of its path.
        self.first_key_locs: dict[str, Location | None] = {}


def parse_yaml(text: str, filename: str) -> ParsedYaml:
    """Parse one YAML document into plain data and a span per key path.

    Raises :class:`YamlError` for syntax errors and structural problems that
    leave no usable data. Duplicate keys are collected as diagnostics.
    """
    result = ParsedYaml(data=None)
    anchors: dict[str, tuple[Any, KeyPath]] = {}
    stack: list[_Frame] = []
    documents = 0

    def loc(mark: Any) -> Location:
        return Location(filename, mark.line + 1, mark.column + 1)

    def fail(message: str, mark: Any, hint: str | None = None) -> YamlError:
        return YamlError(Diagnostic("CP100", message, loc(mark), hint))

    def place(value: Any, start: Location, origin: KeyPath | None) -> bool:
        """Attach a finished value to its parent; False when it is the document root."""
        if not stack:
            result.data = value
            result.spans[()] = Span(None, start)
            return False
        top = stack[-1]
        if isinstance(top.container, list):
            path = (*top.path, len(top.container))
            top.container.append(value)
            result.spans[path] = Span(None, start)
        else:
            key = top.key
            assert key is not None
            top.key = None
            if key == "<<":
                top.merges.append((value, origin, start))
                return True
            path = (*top.path, key)
            if key in top.container:
                first = top.first_key_locs.get(key)
                where = f" (first at line {first.line})" if first else ""
                result.diagnostics.append(
                    Diagnostic(
                        "CP108",
                        f"duplicate key '{key}'{where}",
                        top.key_loc,
                        "YAML keeps only the last value; remove or merge one of them",
                        path=render_path(path),
                    )
                )
            else:
                top.first_key_locs[key] = top.key_loc
            top.container[key] = value
            result.spans[path] = Span(top.key_loc, start)
        if origin is not None:
            _copy_spans(result.spans, origin, path)
        return True

    try:
        events = yaml.parse(text, Loader=_Loader)
        for event in events:
            if isinstance(event, yaml.DocumentStartEvent):
                documents += 1
                if documents > 1:
                    raise fail("a policy file holds one YAML document, found a second", event.start_mark)
                continue
            if isinstance(event, (yaml.StreamStartEvent, yaml.StreamEndEvent, yaml.DocumentEndEvent)):
                continue
            awaiting_key = bool(stack) and isinstance(stack[-1].container, dict) and stack[-1].key is None
            if awaiting_key:
                if not isinstance(event, yaml.ScalarEvent):
                    if isinstance(event, (yaml.MappingEndEvent,)):
                        pass
                    else:
                        raise fail("mapping keys must be plain strings", event.start_mark)
                else:
                    stack[-1].key = event.value
                    stack[-1].key_loc = loc(event.start_mark)
                    continue
            if isinstance(event, yaml.ScalarEvent):
                try:
                    value = _scalar(event)
                except ValueError as exc:
                    raise fail(str(exc), event.start_mark) from exc
                if event.anchor:
                    anchors[event.anchor] = (value, _pending_path(stack))
                place(value, loc(event.start_mark), None)
            elif isinstance(event, yaml.AliasEvent):
                if event.anchor not in anchors:
                    raise fail(f"unknown alias *{event.anchor}", event.start_mark)
                value, origin = anchors[event.anchor]
                place(_copy(value), loc(event.start_mark), origin)
            elif isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                if len(stack) >= MAX_DEPTH:
                    raise fail(
                        f"document is nested deeper than {MAX_DEPTH} levels",
                        event.start_mark,
                        "a policy file needs only a few levels; check for runaway indentation",
                    )
                if event.tag not in (None, "!", _TAG + "map", _TAG + "seq"):
                    raise fail(f"unsupported YAML tag {event.tag}", event.start_mark)
                container: dict[str, Any] | list[Any] = {} if isinstance(event, yaml.MappingStartEvent) else []
                path = _pending_path(stack)
                frame = _Frame(container, path, event.anchor)
                if stack and isinstance(stack[-1].container, dict):
                    frame.own_key_loc = stack[-1].key_loc
                stack.append(frame)
                result.spans[path] = Span(frame.own_key_loc, loc(event.start_mark))
            else:  # MappingEndEvent / SequenceEndEvent
                frame = stack.pop()
                if isinstance(frame.container, dict) and frame.merges:
                    _apply_merges(frame, result, fail)
                start = result.spans[frame.path].value
                if frame.anchor:
                    anchors[frame.anchor] = (frame.container, frame.path)
                place(frame.container, start, None)
    except yaml.MarkedYAMLError as exc:
        raise YamlError(_syntax_diagnostic(exc, filename, text)) from exc
    except yaml.YAMLError as exc:
        raise YamlError(Diagnostic("CP100", f"invalid YAML: {exc}", Location(filename))) from exc
    return result


def _syntax_diagnostic(exc: yaml.MarkedYAMLError, filename: str, text: str) -> Diagnostic:
    """A syntax error at the place a person has to edit, with libyaml's other mark in the message.

    libyaml gives two marks: ``problem_mark``, where it gave up, and ``context_mark``,
    where the construct it was reading began. Usually the problem mark is the place
    (a key indented one space too far). When the problem is that the file ended (an
    unterminated quoted string or flow collection), the problem mark is the last
    line of the file and tells nothing; the construct that was never closed is where
    the mistake is.
    """

    def loc(mark: Any) -> Location:
        return Location(filename, mark.line + 1, mark.column + 1)

    def at(mark: Any) -> str:
        return f"line {mark.line + 1}, column {mark.column + 1}"

    problem = exc.problem or exc.context or "invalid YAML"
    context, problem_mark, context_mark = exc.context, exc.problem_mark, exc.context_mark
    hint = "check the indentation and quoting around this line"
    if "tab" in problem:
        hint = "YAML indentation must use spaces, not tabs"
    ended = problem_mark is not None and ("end of stream" in problem or not text[problem_mark.index :].strip())
    if context_mark is not None and problem_mark is not None and ended:
        if context and "quoted scalar" in context:
            message = f"invalid YAML: quoted string is never closed ({problem} at {at(problem_mark)})"
            hint = "add the closing quote (a quoted string may span lines: the rest of the file was read into it)"
        else:
            what = (context or "a construct").removeprefix("while scanning ").removeprefix("while parsing ")
            message = f"invalid YAML: {what} that starts here is never closed ({problem} at {at(problem_mark)})"
            hint = "close it (a flow mapping with '}', a flow sequence with ']') or write it as a block"
        return Diagnostic("CP100", message, loc(context_mark), hint)
    mark = problem_mark or context_mark
    message = f"invalid YAML: {problem}"
    if context and context_mark is not None and problem_mark is not None and context_mark != problem_mark:
        message += f" ({context} that starts at {at(context_mark)})"
    return Diagnostic("CP100", message, loc(mark) if mark else Location(filename), hint)


def _pending_path(stack: list[_Frame]) -> KeyPath:
    if not stack:
        return ()
    top = stack[-1]
    if isinstance(top.container, list):
        return (*top.path, len(top.container))
    return (*top.path, top.key if top.key is not None else "")


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def _copy_spans(spans: dict[KeyPath, Span], origin: KeyPath, target: KeyPath) -> None:
    size = len(origin)
    for path, span in list(spans.items()):
        if path[:size] == origin and len(path) > size:
            spans[(*target, *path[size:])] = span


def _apply_merges(frame: _Frame, result: ParsedYaml, fail: Any) -> None:
    """YAML merge keys (``<<: *base``): keys written in the mapping win."""
    container = frame.container
    assert isinstance(container, dict)
    merge_path = (*frame.path, "<<")
    for value, origin, start in frame.merges:
        sources = value if isinstance(value, list) else [value]
        # An inline mapping, or a list (of aliases), was read under the "<<" key itself.
        where = origin if origin is not None else merge_path
        for index, source in enumerate(sources):
            if not isinstance(source, dict):
                raise YamlError(Diagnostic("CP100", "a merge key (<<) takes a mapping or a list of mappings", start))
            base = where if not isinstance(value, list) else (*where, index)
            for key, item in source.items():
                if key not in container:
                    container[key] = _copy(item)
                    _copy_spans(result.spans, (*base, key), (*frame.path, key))
                    span = result.spans.get((*base, key))
                    if span is not None:
                        result.spans[(*frame.path, key)] = span


_SIMPLE_KEY = re.compile(r"^[A-Za-z_][\w-]*$")


def render_path(path: KeyPath) -> str:
    """``('tasks', 'reports.*', 'timeout')`` -> ``tasks."reports.*".timeout``."""
    parts: list[str] = []
    for part in path:
        if isinstance(part, int):
            parts.append(f"[{part}]")
        elif _SIMPLE_KEY.match(part):
            parts.append(("." if parts else "") + part)
        else:
            parts.append(("." if parts else "") + '"' + part.replace('"', '\\"') + '"')
    return "".join(parts)
