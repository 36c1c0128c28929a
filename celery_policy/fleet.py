"""Fingerprints and diffs of resolved policies.

A :class:`Snapshot` is the normalised resolved policy of a set of tasks plus
the worker, producer and dead-letter store settings and the environment name:
plain JSON data in which exception groups are expanded to class paths, lists
with set meaning (``on``, ``never``, ``redact_keys``) are sorted, durations
are float seconds and passwords in URLs are masked. Its fingerprint is the
SHA-256 of that data serialised with sorted keys, so two files that differ
only in key order, formatting, comments, group names or duration spelling
(``90s`` / ``1m30s``) have the same fingerprint, and any change a worker would
act on changes it.

Every leaf also carries its source (``file:line``), which is not hashed: the
diff prints it for each side.
"""

from __future__ import annotations

import hashlib
import json
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from celery_policy._render import is_duration_field
from celery_policy._render import render_value as render_yaml
from celery_policy.durations import format_duration
from celery_policy.errors import Location
from celery_policy.model import DeadLetterStoreSettings, ProducerSettings, TaskPolicy, WorkerSettings
from celery_policy.patterns import is_glob
from celery_policy.redis_urls import safe_url
from celery_policy.resolve import Policy, Provenance

DEFAULTS = "defaults"  # the pseudo-task for the `defaults` section in file diffs
SETTINGS = ("worker", "producer", "dead_letter_store")
FLOW_SETTINGS = ("breakers", "limits")  # in a snapshot only when the file defines some
_SETTING_MODELS: dict[str, type[BaseModel]] = {
    "worker": WorkerSettings,
    "producer": ProducerSettings,
    "dead_letter_store": DeadLetterStoreSettings,
}
BUILTIN_SOURCE = "built-in"  # how a diff shows the source of a value no file sets
# Settings only `check` reads (facts about the broker a worker does not act on): left out unless the file sets
# them, so adding such a key to the format changes no fingerprint of a fleet that does not use it.
CHECK_ONLY: dict[str, frozenset[str]] = {"worker": frozenset({"consumer_timeout"})}


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The normalised resolved policy of some tasks, as JSON-ready data.

    ``tasks`` maps a task name to its flattened fields (``{"retry.max_retries": 8}``);
    ``settings`` maps ``worker`` / ``producer`` / ``dead_letter_store`` to theirs.
    ``sources`` mirrors both with ``file:line`` strings (or ``built-in``).
    """

    env: str | None
    tasks: Mapping[str, Mapping[str, Any]]
    settings: Mapping[str, Mapping[str, Any]]
    sources: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    files: tuple[str, ...] = ()

    @property
    def fingerprint(self) -> str:
        """``sha256:<hex>`` over env, tasks and settings (not sources, not file names)."""
        return fingerprint_of(self.hashed())

    def hashed(self) -> dict[str, Any]:
        return {"env": self.env, "tasks": self.tasks, "settings": self.settings}

    def to_json(self) -> dict[str, Any]:
        return {**self.hashed(), "sources": self.sources, "files": list(self.files)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Snapshot:
        """Rebuild a snapshot a worker sent (see :meth:`to_json`)."""
        return cls(
            env=data.get("env"),
            tasks={str(k): dict(v) for k, v in (data.get("tasks") or {}).items()},
            settings={str(k): dict(v) for k, v in (data.get("settings") or {}).items()},
            sources={str(k): dict(v) for k, v in (data.get("sources") or {}).items()},
            files=tuple(data.get("files") or ()),
        )


def fingerprint_of(data: Any) -> str:
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def short(fingerprint: str) -> str:
    """The first 12 hex digits, as the status table shows them."""
    return fingerprint.removeprefix("sha256:")[:12]


def snapshot(policy: Policy, tasks: Iterable[str], *, include_defaults: bool = False) -> Snapshot:
    """The snapshot of ``tasks`` under ``policy`` (in its environment).

    ``include_defaults`` adds the ``defaults`` section as the pseudo-task
    :data:`DEFAULTS` (used by file diffs without an app). Raises
    :class:`~celery_policy.errors.PolicyError` on a pattern conflict.
    """
    groups = policy.document.errors
    resolved_tasks: dict[str, Mapping[str, Any]] = {}
    sources: dict[str, dict[str, str]] = {}
    if include_defaults:
        defaults = policy.document.defaults
        resolved_tasks[DEFAULTS] = _normalise_task(defaults, groups)
        sources[_task_key(DEFAULTS)] = {
            path: _where(policy.location(("defaults", *path.split("."))))
            for path in resolved_tasks[DEFAULTS]
            if _is_set(defaults, path.split("."))
        }
    for name in sorted(set(tasks)):
        resolved = policy.for_task(name)
        fields = _normalise_task(resolved.policy, groups)
        resolved_tasks[name] = fields
        sources[_task_key(name)] = {path: _provenance(resolved.source_of(path)) for path in fields}
    settings: dict[str, Mapping[str, Any]] = {}
    for section in SETTINGS:
        model = getattr(policy.document, section)
        fields = _flatten(model.model_dump(mode="json"))
        for name in CHECK_ONLY.get(section, ()):
            if name not in model.model_fields_set:
                fields.pop(name, None)
        if section == "dead_letter_store" and fields.get("url"):
            fields["url"] = safe_url(str(fields["url"]))
        settings[section] = fields
        sources[section] = {
            path: _where(policy.location((section, *path.split("."))))
            if _is_set(model, path.split("."))
            else BUILTIN_SOURCE
            for path in fields
        }
    # flow control: the breakers and limits the tasks name (only when the file has any)
    for section in FLOW_SETTINGS:
        blocks = getattr(policy.document, section)
        if not blocks:
            continue
        fields = _flatten({name: block.model_dump(mode="json") for name, block in blocks.items()})
        settings[section] = fields
        sources[section] = {path: _where(policy.location((section, *path.split(".")))) for path in fields}
    return Snapshot(policy.env, resolved_tasks, settings, sources, tuple(policy.files))


def policy_task_names(policy: Policy) -> list[str]:
    """Task names and patterns named anywhere in the file, environments included (for diffs without an app)."""
    names = set(policy.document.tasks)
    envs = policy.raw.data.get("environments")
    if isinstance(envs, dict):
        for overlay in envs.values():
            if isinstance(overlay, dict) and isinstance(overlay.get("tasks"), dict):
                names.update(str(name) for name in overlay["tasks"])
    return sorted(names)


def _task_key(name: str) -> str:
    return f"task:{name}"


def _normalise_task(policy: TaskPolicy, groups: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    data = policy.model_dump(mode="json")
    if policy.breaker is None and policy.limit is None:  # flow control unused: the fingerprint stays as before it
        for name in ("breaker", "limit", "snooze"):
            data.pop(name, None)
    retry = data["retry"]
    retry["on"] = _expand(retry["on"], groups)
    retry["never"] = _expand(retry["never"], groups)
    for rule in retry["rules"]:
        rule["on"] = _expand(rule["on"], groups)
    data["log"]["redact_keys"] = sorted(set(data["log"]["redact_keys"]))
    return _flatten(data)


def _expand(refs: Iterable[str], groups: Mapping[str, Sequence[str]]) -> list[str]:
    found: set[str] = set()
    for ref in refs:
        found.update(groups.get(ref, (ref,)))
    return sorted(found)


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings -> dotted leaves; lists and None are leaves."""
    leaves: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            leaves.update(_flatten(value, path + "."))
        else:
            leaves[path] = value
    return leaves


def _is_set(model: BaseModel, path: Sequence[str]) -> bool:
    node: Any = model
    for part in path:
        if not isinstance(node, BaseModel) or part not in node.model_fields_set:
            return False
        node = getattr(node, part)
    return True


def _provenance(found: Provenance) -> str:
    return _where(found.location)


def _where(location: Location | None) -> str:
    return BUILTIN_SOURCE if location is None else f"{location.file}:{location.line}"


# --- diff ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Change:
    """One field that differs between two snapshots."""

    section: str  # "task:orders.charge", "worker", "env"
    path: str  # "retry.max_retries"
    old: Any
    new: Any
    old_source: str
    new_source: str
    missing: str | None = None  # "old" / "new": the section exists on one side only

    def to_json(self) -> dict[str, Any]:
        return {
            "section": self.section,
            "field": self.path,
            "old": self.old,
            "new": self.new,
            "old_source": self.old_source,
            "new_source": self.new_source,
            **({"missing": self.missing} if self.missing else {}),
        }


def diff(old: Snapshot, new: Snapshot) -> list[Change]:
    """Every field that differs, section by section (env first, then tasks by name, then settings)."""
    changes: list[Change] = []
    if old.env != new.env:
        changes.append(Change("env", "env", old.env, new.env, "", ""))
    for name in sorted(set(old.tasks) | set(new.tasks), key=lambda task: (task != DEFAULTS, task)):
        key = _task_key(name)
        changes += _diff_section(
            key, old.tasks.get(name), new.tasks.get(name), old.sources.get(key, {}), new.sources.get(key, {})
        )
    for section in SETTINGS:
        changes += _diff_section(
            section,
            old.settings.get(section),
            new.settings.get(section),
            old.sources.get(section, {}),
            new.sources.get(section, {}),
        )
    return changes


def _diff_section(
    section: str,
    old: Mapping[str, Any] | None,
    new: Mapping[str, Any] | None,
    old_sources: Mapping[str, str],
    new_sources: Mapping[str, str],
) -> list[Change]:
    if old is None or new is None:
        missing = "old" if old is None else "new"
        return [Change(section, "", None, None, "", "", missing)]
    changes = []
    for path in sorted(set(old) | set(new), key=_path_order):
        before, after = old.get(path), new.get(path)
        if before == after:
            continue
        changes.append(
            Change(
                section,
                path,
                before,
                after,
                old_sources.get(path, BUILTIN_SOURCE),
                new_sources.get(path, BUILTIN_SOURCE),
            )
        )
    return changes


_ORDER = {name: index for index, name in enumerate(TaskPolicy.model_fields)}


def _path_order(path: str) -> tuple[int, str]:
    return (_ORDER.get(path.split(".", 1)[0], len(_ORDER)), path)


# --- rendering ----------------------------------------------------------------------------------


def _duration_leaves() -> frozenset[str]:
    """Dotted leaf paths whose values are durations, for rendering ``90.0`` as ``1m30s``."""
    found: set[str] = set()

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, info in model.model_fields.items():
            annotation = info.annotation
            nested = _model_in(annotation)
            if nested is not None:
                walk(nested, f"{prefix}{name}.")
            elif is_duration_field(model, name):
                found.add(f"{prefix}{name}")

    walk(TaskPolicy, "")
    for section, model in _SETTING_MODELS.items():
        walk(model, f"{section}:")
    return frozenset(found)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if _is_model(annotation):
        return annotation  # type: ignore[no-any-return]  # _is_model checked it
    for arg in getattr(annotation, "__args__", ()):
        if _is_model(arg):
            return arg  # type: ignore[no-any-return]  # _is_model checked it
    return None


def _is_model(annotation: Any) -> bool:
    # On Python 3.10 ``list[str]`` passes isinstance(..., type) but issubclass() rejects it.
    return isinstance(annotation, type) and typing.get_origin(annotation) is None and issubclass(annotation, BaseModel)


_DURATIONS: frozenset[str] | None = None


def render_value(section: str, path: str, value: Any) -> str:
    """A value as users write it in YAML; durations as ``1m30s``."""
    global _DURATIONS  # noqa: PLW0603 - computed once, on first use
    if _DURATIONS is None:
        _DURATIONS = _duration_leaves()
    key = path if section.startswith("task:") else f"{section}:{path}"
    if key in _DURATIONS and isinstance(value, int | float) and not isinstance(value, bool):
        return format_duration(float(value))
    return render_yaml(value)


def section_title(section: str) -> str:
    if section.startswith("task:"):
        name = section.removeprefix("task:")
        if name == DEFAULTS:
            return DEFAULTS
        return f"task {json.dumps(name)}" if is_glob(name) else f"task {name}"
    return section


def render_changes(changes: Sequence[Change], *, indent: str = "") -> list[str]:
    """Text lines: a title per section, then ``field: old → new  (old source → new source)``."""
    lines: list[str] = []
    current = None
    for change in changes:
        if change.section == "env":
            lines.append(f"{indent}env: {_env(change.old)} → {_env(change.new)}")
            current = None
            continue
        if change.section != current:
            current = change.section
            lines.append(f"{indent}{section_title(change.section)}")
        if change.missing:
            side = "first" if change.missing == "old" else "second"
            lines.append(f"{indent}  (not in the {side} policy)")
            continue
        old = render_value(change.section, change.path, change.old)
        new = render_value(change.section, change.path, change.new)
        lines.append(f"{indent}  {change.path}: {old} → {new}  ({change.old_source} → {change.new_source})")
    return lines


def _env(env: Any) -> str:
    return "(none)" if env is None else str(env)


def summary(changes: Sequence[Change]) -> str:
    if not changes:
        return "no differences"
    sections = len({change.section for change in changes})
    fields = len(changes)
    verb = "differs" if fields == 1 else "differ"
    return f"{fields} {_plural(fields, 'field')} {verb} in {sections} {_plural(sections, 'section')}"


def _plural(count: int, word: str) -> str:
    return word if count == 1 else word + "s"
