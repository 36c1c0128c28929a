"""What a rule sees: the validated document, its source map, and effective views.

A *view* is the effective task policy at one layer: ``defaults`` alone, each
glob merged over ``defaults``, each exact name merged over everything that
matches it (and, with ``--app``, each registered task that several globs
match). Checking views instead of raw sections catches problems that only
appear after merging: a glob setting ``soft: 30m`` under a default
``hard: 5m30s``. A view remembers which layer supplied each field, so a
finding points at the key that layer wrote; the runner drops the repeats
when several views inherit the same problem.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from celery_policy._yaml import Path, render_path
from celery_policy.errors import Diagnostic, Location
from celery_policy.lint.appsnapshot import AppSnapshot
from celery_policy.loader import RawPolicy, SourceMap, lookup_origin
from celery_policy.model import PolicyDocument, TaskPolicy, dump_set
from celery_policy.patterns import PatternIndex, is_glob, specificity
from celery_policy.references import check_references, expand_refs
from celery_policy.resolve import flatten, merge_leaves, unflatten


@dataclass(frozen=True, slots=True)
class Layer:
    """One section of the document that sets task policy fields."""

    label: str  # "defaults", 'tasks."reports.*"', "tasks.orders.charge"
    prefix: Path  # ("defaults",) or ("tasks", NAME)
    leaves: Mapping[Path, Any]  # the fields it sets, flattened: ("timeout", "soft") -> 360.0


@dataclass(frozen=True, slots=True)
class View:
    """The effective policy of a layer merged over the weaker layers that apply with it."""

    subject: str  # "defaults", a pattern or a task name
    kind: str  # "defaults", "pattern", "task"
    layers: tuple[Layer, ...]
    policy: TaskPolicy
    owners: Mapping[Path, int]  # leaf path -> index into layers

    @property
    def top(self) -> Layer:
        return self.layers[-1]

    def owner(self, path: Path) -> int:
        """Index of the strongest layer that set ``path``, an ancestor or a descendant of it; -1 for built-in."""
        found = -1
        for leaf, index in self.owners.items():
            size = min(len(leaf), len(path))
            if leaf[:size] == path[:size]:
                found = max(found, index)
        return found

    def sets(self, path: Path) -> bool:
        """True when the view's own (strongest) layer sets ``path``."""
        return self.owner(path) == len(self.layers) - 1

    def blame(self, *paths: Path) -> tuple[Layer, Path]:
        """The layer and full key path to point at: the strongest-owned of ``paths`` (first on ties)."""
        best_index, best_path = -1, paths[0]
        for path in paths:
            index = self.owner(path)
            if index > best_index:
                best_index, best_path = index, path
        layer = self.layers[best_index] if best_index >= 0 else self.layers[0]
        return layer, (*layer.prefix, *best_path)

    def describe(self) -> str:
        """How to name this view in a hint: ``defaults``, ``pattern 'reports.*'``, ``task 'orders.charge'``."""
        if self.kind == "defaults":
            return "defaults"
        return f"{self.kind} '{self.subject}'"


@dataclass
class LintContext:
    """Everything a rule may look at, for one environment (or the base file)."""

    document: PolicyDocument
    source: SourceMap
    raw: RawPolicy  # the files as read, before the environment was applied
    env: str | None = None
    app: AppSnapshot | None = None
    _views: list[View] | None = field(default=None, repr=False)
    _references: list[Diagnostic] | None = field(default=None, repr=False)
    _layers: dict[str, Layer] | None = field(default=None, repr=False)
    _globs: list[str] | None = field(default=None, repr=False)
    _index: PatternIndex | None = field(default=None, repr=False)
    _rank: dict[str, int] = field(default_factory=dict, repr=False)

    @property
    def files(self) -> tuple[str, ...]:
        return self.raw.files

    def locate(self, path: Path) -> Location:
        """Where the value at ``path`` (or its nearest ancestor) starts."""
        origin = lookup_origin(self.source, path)
        return origin.location if origin else Location(self.files[0])

    def key_locate(self, path: Path) -> Location:
        """Where the key of ``path`` is written (falls back to its value, then to an ancestor)."""
        origin = lookup_origin(self.source, path)
        if origin is None:
            return Location(self.files[0])
        return origin.key_location or origin.location

    def diagnostic(self, code: str, message: str, path: Path, hint: str | None = None) -> Diagnostic:
        """A finding at the key of ``path`` (severity is set by the registry)."""
        return Diagnostic(code, message, self.key_locate(path), hint, path=render_path(path))

    def expand(self, refs: Sequence[str]) -> tuple[str, ...]:
        return expand_refs(refs, self.document.errors)

    def references(self) -> list[Diagnostic]:
        """CP106/CP107/CP116 findings from importing the classes and hooks the file names (computed once)."""
        if self._references is None:
            try:
                self._references = check_references(self.document, self.locate, import_classes=True)
            except (Exception, SystemExit) as exc:  # a user module raised while being imported
                message = f"importing the policy's exception classes and hooks failed: {type(exc).__name__}: {exc}"
                self._references = [
                    Diagnostic("CP107", message, Location(self.files[0]), "a module named in the file raised on import")
                ]
        return self._references

    # --- layers and views ---------------------------------------------------

    def defaults_layer(self) -> Layer:
        return Layer("defaults", ("defaults",), flatten(dump_set(self.document.defaults)))

    def task_layers(self) -> dict[str, Layer]:
        """One layer per entry of ``tasks`` (built once)."""
        if self._layers is None:
            self._layers = {
                name: Layer(render_path(("tasks", name)), ("tasks", name), flatten(dump_set(section)))
                for name, section in self.document.tasks.items()
            }
        return self._layers

    def globs(self) -> list[str]:
        """The glob patterns of ``tasks``, weakest first (more wildcards, then shorter literal prefix)."""
        if self._globs is None:
            patterns = [name for name in self.document.tasks if is_glob(name)]
            self._globs = sorted(patterns, key=lambda p: specificity(p).sort_key())
        return self._globs

    def layers_for(self, task: str) -> list[Layer]:
        """The layers that apply to a task name, weakest first (as the resolver orders them)."""
        layers = self.task_layers()
        globs = self.globs()
        if self._index is None:
            self._index = PatternIndex(globs)
            self._rank = {pattern: index for index, pattern in enumerate(globs)}
        matched = sorted(self._index.matches(task), key=self._rank.__getitem__)
        found = [self.defaults_layer(), *(layers[p] for p in matched)]
        if task in layers and not is_glob(task):
            found.append(layers[task])
        return found

    def views(self) -> list[View]:
        """Effective views (see the module docstring), built once."""
        if self._views is not None:
            return self._views
        defaults = self.defaults_layer()
        layers = self.task_layers()
        candidates: list[tuple[str, str, list[Layer]]] = [("defaults", "defaults", [defaults])]
        candidates.extend((p, "pattern", [defaults, layers[p]]) for p in self.globs())
        candidates.extend((n, "task", self.layers_for(n)) for n in self.document.tasks if not is_glob(n))
        if self.app is not None:
            for task in self.app.user_tasks():
                if task in layers:
                    continue
                matched = self.layers_for(task)
                if len(matched) > 2:  # several globs meet only here
                    candidates.append((task, "task", matched))
        views: list[View] = []
        for subject, kind, chain in candidates:
            view = _merge(subject, kind, chain)
            if view is not None:
                views.append(view)
        self._views = views
        return views

    def task_views(self) -> Iterator[tuple[str, View]]:
        """With ``--app``: every registered task with its effective view."""
        if self.app is None:
            return
        for task in self.app.user_tasks():
            view = _merge(task, "task", self.layers_for(task))
            if view is not None:
                yield task, view


def _merge(subject: str, kind: str, layers: Sequence[Layer]) -> View | None:
    """Per-field merge exactly as the resolver does: setting a path replaces its ancestors and descendants."""
    merged, owners = merge_leaves([layer.leaves for layer in layers])
    try:
        policy = TaskPolicy.model_validate(unflatten(merged))
    except ValidationError:  # each layer validated on its own; a merge that does not is reported by the resolver
        return None
    return View(subject, kind, tuple(layers), policy, owners)
