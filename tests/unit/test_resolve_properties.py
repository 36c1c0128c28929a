"""Property tests for merging and precedence.

Documents are built as Python dicts, written as YAML files (by a small writer
that records the line and column of every value, so provenance can be checked
exactly), and loaded with :func:`celery_policy.load` like any user file.
Hypothesis and pytest's ``tmp_path`` don't mix, so each example writes into
its own :mod:`tempfile` directory.
"""

from __future__ import annotations

import fnmatch
import json
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path as FsPath
from typing import Any

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from celery_policy import Policy, PolicyError, load
from celery_policy._yaml import render_path
from celery_policy.durations import parse_duration
from celery_policy.model import TaskPolicy
from celery_policy.resolve import BUILTIN_LAYER, ResolvedPolicy

FieldPath = tuple[str, ...]
Layer = dict[FieldPath, Any]
Lines = dict[tuple[str | int, ...], tuple[int, int]]

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_durations = st.one_of(st.integers(1, 100_000), st.sampled_from(["500ms", "30s", "5m", "1h30m", "1d"]))
_exceptions = st.lists(
    st.sampled_from(["builtins.TimeoutError", "builtins.ConnectionError", "builtins.KeyError", "builtins.OSError"]),
    max_size=3,
    unique=True,
)


def _same(value: Any) -> Any:
    return value


# Every field a layer may set: path -> (values, how the model stores the value).
FIELDS: dict[FieldPath, tuple[st.SearchStrategy[Any], Callable[[Any], Any]]] = {
    ("retry", "max_retries"): (st.one_of(st.integers(0, 20), st.none()), _same),
    ("retry", "unknown"): (st.sampled_from(["retry", "fail"]), _same),
    ("retry", "deadline"): (_durations, parse_duration),
    ("retry", "on"): (_exceptions, _same),
    ("retry", "backoff", "initial"): (_durations, parse_duration),
    ("retry", "backoff", "factor"): (st.sampled_from([1, 1.5, 2, 3]), float),
    ("retry", "backoff", "max"): (_durations, parse_duration),
    ("retry", "backoff", "jitter"): (st.sampled_from(["full", "equal", "none"]), _same),
    ("timeout", "soft"): (_durations, parse_duration),
    ("timeout", "hard"): (_durations, parse_duration),
    ("ack", "late"): (st.booleans(), _same),
    ("ack", "max_redeliveries"): (st.one_of(st.integers(0, 5), st.none()), _same),
    ("dead_letter", "enabled"): (st.booleans(), _same),
    ("log", "args"): (st.sampled_from(["show", "redact", "hide"]), _same),
    ("route", "queue"): (st.sampled_from(["orders", "reports", "default"]), _same),
    ("result", "on_failure"): (st.sampled_from(["raise", "return_error"]), _same),
}

layers_st: st.SearchStrategy[Layer] = st.fixed_dictionaries(
    {}, optional={path: values for path, (values, _) in FIELDS.items()}
)

TASK = "svc.orders.charge"
# Globs that all match TASK, weakest first: more wildcards first, then a shorter literal prefix.
GLOBS_BY_STRENGTH = ["*.*.*", "svc.*.*", "*", "s*", "svc.*", "svc.orders.*", "svc.orders.charg?"]


# --- writing documents ------------------------------------------------------------------


def nest(layer: Mapping[FieldPath, Any]) -> dict[str, Any]:
    root: dict[str, Any] = {}
    for path, value in layer.items():
        node = root
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return root


def to_yaml(document: Mapping[str, Any]) -> tuple[str, Lines]:
    """Block-style YAML with every key quoted, and the (line, column) of each value."""
    out: list[str] = []
    lines: Lines = {}

    def scalar(value: Any) -> str:
        if isinstance(value, list):
            return "[" + ", ".join(scalar(v) for v in value) + "]"
        return json.dumps(value)  # null, true/false, numbers and double-quoted strings are YAML too

    def write(mapping: Mapping[str, Any], prefix: tuple[str | int, ...], indent: int) -> None:
        for key, value in mapping.items():
            head = " " * indent + json.dumps(key) + ":"
            if isinstance(value, dict) and value:
                out.append(head)
                write(value, (*prefix, key), indent + 2)
            else:
                lines[(*prefix, key)] = (len(out) + 1, len(head) + 2)
                out.append(head + " " + ("{}" if isinstance(value, dict) else scalar(value)))

    write(document, (), 0)
    return "\n".join(out) + "\n", lines


@contextmanager
def policy_files(*documents: Mapping[str, Any]) -> Iterator[tuple[list[FsPath], list[Lines]]]:
    with tempfile.TemporaryDirectory() as directory:
        paths: list[FsPath] = []
        all_lines: list[Lines] = []
        for index, document in enumerate(documents):
            text, lines = to_yaml(document)
            path = FsPath(directory) / f"policy-{index}.yaml"
            path.write_text(text)
            paths.append(path)
            all_lines.append(lines)
        yield paths, all_lines


def effective(policy: TaskPolicy, path: FieldPath) -> Any:
    node: Any = policy
    for part in path:
        if node is None:
            return None
        node = getattr(node, part)
    return node


def outcome(policy: Policy, task: str, env: str | None = None) -> tuple[Any, ...]:
    """What a task resolves to, comparable across loads: the policy and each source (or the error codes)."""
    try:
        resolved = policy.for_task(task, env=env)
    except PolicyError as exc:
        return ("error", tuple(d.code for d in exc.diagnostics))
    return ("ok", resolved.policy, _sources(resolved))


def _sources(resolved: ResolvedPolicy) -> dict[str, tuple[Any, ...]]:
    return {
        dotted: (p.layer, p.overlay, p.location.line if p.location else None, p.location.column if p.location else None)
        for dotted, p in resolved.provenance.items()
    }


# --- properties -------------------------------------------------------------------------


@st.composite
def stacks(draw: st.DrawFn) -> tuple[Layer | None, list[tuple[str, Layer]], Layer | None, list[str]]:
    """A defaults layer (or none), some matching globs with their layers, an exact layer (or none), file order."""
    defaults = draw(st.one_of(st.none(), layers_st))
    globs = draw(st.lists(st.sampled_from(GLOBS_BY_STRENGTH), unique=True, max_size=len(GLOBS_BY_STRENGTH)))
    glob_layers = [(glob, draw(layers_st)) for glob in sorted(globs, key=GLOBS_BY_STRENGTH.index)]
    exact = draw(st.one_of(st.none(), layers_st))
    names = [glob for glob, _ in glob_layers] + ([TASK] if exact is not None else [])
    order = draw(st.permutations(names))
    return defaults, glob_layers, exact, list(order)


def build(
    defaults: Layer | None, glob_layers: list[tuple[str, Layer]], exact: Layer | None, order: list[str]
) -> dict[str, Any]:
    document: dict[str, Any] = {"version": 1}
    if defaults is not None:
        document["defaults"] = nest(defaults)
    by_name = dict(glob_layers)
    if exact is not None:
        by_name[TASK] = exact
    if order:
        document["tasks"] = {name: nest(by_name[name]) for name in order}
    return document


@SETTINGS
@given(stacks())
def test_the_strongest_layer_that_sets_a_field_wins_and_provenance_points_at_it(
    stack: tuple[Layer | None, list[tuple[str, Layer]], Layer | None, list[str]],
) -> None:
    defaults, glob_layers, exact, order = stack
    document = build(defaults, glob_layers, exact, order)
    weakest_first: list[tuple[tuple[str, ...], Layer]] = []
    if defaults is not None:
        weakest_first.append((("defaults",), defaults))
    weakest_first.extend((("tasks", glob), layer) for glob, layer in glob_layers)
    if exact is not None:
        weakest_first.append((("tasks", TASK), exact))
    builtin = TaskPolicy()
    with policy_files(document) as ([path], [lines]):
        resolved = load(path).for_task(TASK)
        for field, (_, normalize) in FIELDS.items():
            dotted = ".".join(field)
            setters = [(prefix, layer) for prefix, layer in weakest_first if field in layer]
            source = resolved.source_of(dotted)
            if not setters:
                assert effective(resolved.policy, field) == effective(builtin, field), dotted
                assert source.layer == BUILTIN_LAYER, dotted
                continue
            prefix, layer = setters[-1]
            assert effective(resolved.policy, field) == normalize(layer[field]), dotted
            assert source.layer == ("defaults" if prefix == ("defaults",) else render_path(prefix)), dotted
            assert source.location is not None
            assert (source.location.file, source.location.line, source.location.column) == (
                str(path),
                *lines[(*prefix, *field)],
            ), dotted
            assert source.overlay == "base"


@SETTINGS
@given(st.lists(layers_st, min_size=1, max_size=4))
def test_the_last_file_wins_for_every_key_it_sets(file_layers: list[Layer]) -> None:
    documents = [{"version": 1, "defaults": nest(layer)} for layer in file_layers]
    with policy_files(*documents) as (paths, all_lines):
        resolved = load(paths).for_task(TASK)
        for field, (_, normalize) in FIELDS.items():
            setters = [index for index, layer in enumerate(file_layers) if field in layer]
            if not setters:
                continue
            last = setters[-1]
            assert effective(resolved.policy, field) == normalize(file_layers[last][field])
            source = resolved.source_of(".".join(field))
            assert source.location is not None
            assert source.location.file == str(paths[last])
            assert source.location.line == all_lines[last][("defaults", *field)][0]


@SETTINGS
@given(stacks(), st.sampled_from(["file", "task", "defaults"]))
def test_overlaying_an_empty_layer_is_the_identity(
    stack: tuple[Layer | None, list[tuple[str, Layer]], Layer | None, list[str]], where: str
) -> None:
    document = build(*stack)
    with policy_files(document) as ([path], _):
        before = outcome(load(path), TASK)
    if where == "file":
        with policy_files(document, {"version": 1}) as (paths, _):
            after = outcome(load(paths), TASK)
    else:
        padded = dict(document)
        if where == "task":
            # Appended last so no line moves; an existing entry keeps its place and its fields.
            padded["tasks"] = {
                **document.get("tasks", {}),
                "svc.orders.*": document.get("tasks", {}).get("svc.orders.*", {}),
            }
        else:
            padded["defaults"] = document.get("defaults", {"retry": {}, "timeout": {}})
        with policy_files(padded) as ([path], _):
            after = outcome(load(path), TASK)
    assert after[0] == before[0] == "ok"
    assert after[1] == before[1]
    assert {k: v[:2] for k, v in after[2].items()} == {k: v[:2] for k, v in before[2].items()}


@SETTINGS
@given(stacks(), st.data())
def test_max_retries_zero_survives_every_merge(
    stack: tuple[Layer | None, list[tuple[str, Layer]], Layer | None, list[str]], data: st.DataObject
) -> None:
    defaults, glob_layers, exact, order = stack
    defaults = dict(defaults or {})
    layers: list[Layer] = [defaults, *(layer for _, layer in glob_layers)]
    if exact is not None:
        layers.append(exact)
    zero_at = data.draw(st.integers(0, len(layers) - 1), label="layer setting 0")
    for index, layer in enumerate(layers):
        if index < zero_at:
            layer[("retry", "max_retries")] = data.draw(st.integers(1, 20), label="weaker value")
        elif index == zero_at:
            layer[("retry", "max_retries")] = 0
        else:
            layer.pop(("retry", "max_retries"), None)
    document = build(defaults, glob_layers, exact, order)
    with policy_files(document) as ([path], _):
        resolved = load(path).for_task(TASK)
    assert resolved.policy.retry.max_retries == 0
    assert resolved.source_of("retry.max_retries").layer != BUILTIN_LAYER


@SETTINGS
@given(layers_st, st.integers(1, 20))
def test_max_retries_zero_survives_an_environment_overlay_and_a_later_file(base: Layer, weaker: int) -> None:
    base = {**base, ("retry", "max_retries"): weaker}
    document = {
        "version": 1,
        "defaults": nest(base),
        "environments": {"dev": {"defaults": {"retry": {"max_retries": 0}}}},
    }
    with policy_files(document, {"version": 1, "defaults": {"retry": {"backoff": {"initial": 5}}}}) as (paths, _):
        policy = load(paths)
        assert policy.for_task(TASK, env="dev").policy.retry.max_retries == 0
        assert policy.for_task(TASK).policy.retry.max_retries == weaker


# Names and patterns over a tiny alphabet, so patterns often match and often don't.
_segments = st.sampled_from(["a", "b", "ab", "ba"])
task_names = st.lists(_segments, min_size=1, max_size=3).map(".".join)
patterns = st.lists(st.sampled_from(["a", "b", "ab", "*", "a*", "?", "[ab]*", "*b"]), min_size=1, max_size=3).map(
    ".".join
)


@SETTINGS
@given(
    st.dictionaries(patterns, layers_st, max_size=5),
    patterns,
    layers_st,
    st.lists(task_names, min_size=1, max_size=8, unique=True),
)
def test_adding_a_pattern_never_changes_tasks_it_does_not_match(
    existing: dict[str, Layer], added: str, layer: Layer, tasks: list[str]
) -> None:
    before_tasks = {name: nest(fields) for name, fields in existing.items()}
    before_doc = {"version": 1, "tasks": before_tasks}
    assume(added not in existing)
    after_tasks = {**before_tasks, added: nest(layer)}  # last, so no line of the other entries moves
    after_doc = {"version": 1, "tasks": after_tasks}
    unmatched = [task for task in tasks if not fnmatch.fnmatchcase(task, added)]
    with policy_files(before_doc, after_doc) as (paths, _):
        before, after = load(paths[0]), load(paths[1])
        for task in unmatched:
            assert outcome(after, task) == outcome(before, task), task


_empty_overlays = st.sampled_from(
    [
        {},
        {"defaults": {}},
        {"defaults": {"retry": {}, "timeout": {}}},
        {"defaults": {"retry": {"backoff": {}}}},
        {"tasks": {}},
        {"worker": {}, "producer": {}},
        {"errors": {}},
    ]
)


@SETTINGS
@given(stacks(), _empty_overlays, st.booleans())
def test_an_environment_overlay_that_sets_nothing_changes_nothing(
    stack: tuple[Layer | None, list[tuple[str, Layer]], Layer | None, list[str]],
    overlay: dict[str, Any],
    touch_existing_tasks: bool,
) -> None:
    document = build(*stack)
    overlay = dict(overlay)
    if touch_existing_tasks and document.get("tasks"):
        overlay["tasks"] = {name: {} for name in document["tasks"]}
    document["environments"] = {"quiet": overlay}  # last, so the base keeps its lines
    with policy_files(document) as ([path], _):
        policy = load(path)
        assert outcome(policy, TASK, env="quiet") == outcome(policy, TASK)
        assert policy.for_task(TASK, env="quiet").layers == policy.for_task(TASK).layers
