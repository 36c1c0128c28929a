"""What a rule sees: the validated document, its source map, and effective views.

A *view* is the effective task policy at one layer: ``defaults`` alone, each
glob merged over ``defaults``, each exact name merged over everything that
matches it (and, with ``--app``, each registered task that several globs
match). Checking views instead of raw sections catches problems that only
appear after merging: a glob setting ``soft: 30m`` under a default
``hard: 5m30s``. A view remembers which layer supplied each field, so a
finding points at the key that layer wrote; the engine drops the repeats
when several views inherit the same problem.

The layers and their order are the resolver's (:class:`celery_policy.resolve.Layering`),
so a view merges exactly what a worker would run.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from pydantic import ValidationError

from celery_policy._yaml import KeyPath, render_path
from celery_policy.errors import Diagnostic, Location
from celery_policy.lint.appsnapshot import AppSnapshot
from celery_policy.loader import RawPolicy, SourceMap, lookup_origin
from celery_policy.model import PolicyDocument, TaskPolicy
from celery_policy.patterns import is_glob
from celery_policy.references import check_references, expand_refs
from celery_policy.resolve import Layer, Layering, merge_leaves, unflatten

__all__ = ["Layer", "LintContext", "LintOptions", "View"]


@dataclass(frozen=True, slots=True)
class LintOptions:
    """Facts about the deployment that the policy files do not hold, from ``[tool.celery-policy]``."""

    consumer_timeout_s: float | None = None  # the RabbitMQ broker's consumer_timeout (CP220)


@dataclass(frozen=True, slots=True)
class View:
    """The effective policy of a layer merged over the weaker layers that apply with it."""

    subject: str  # "defaults", a pattern or a task name
    kind: str  # "defaults", "pattern", "task"
    layers: tuple[Layer, ...]
    policy: TaskPolicy
    owners: Mapping[KeyPath, int]  # leaf path -> index into layers

    @property
    def top(self) -> Layer:
        return self.layers[-1]

    def owner(self, path: KeyPath) -> int:
        """Index of the strongest layer that set ``path``, an ancestor or a descendant of it; -1 for built-in."""
        found = -1
        for leaf, index in self.owners.items():
            size = min(len(leaf), len(path))
            if leaf[:size] == path[:size]:
                found = max(found, index)
        return found

    def sets(self, path: KeyPath) -> bool:
        """True when the view's own (strongest) layer sets ``path``."""
        return self.owner(path) == len(self.layers) - 1

    def blame(self, *paths: KeyPath) -> tuple[Layer, KeyPath]:
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
    import_classes: bool = True  # False at worker boot: modules may define the classes after install()
    options: LintOptions = field(default_factory=LintOptions)
    # merged leaves (repr) -> validated policy, shared by the contexts of one check run: most views come out
    # the same in every environment, and validating them is the bulk of a big file's lint time
    policy_cache: dict[str, TaskPolicy | None] | None = field(default=None, repr=False)
    _views: list[View] | None = field(default=None, repr=False)
    _references: list[Diagnostic] | None = field(default=None, repr=False)
    _layering: Layering | None = field(default=None, repr=False)

    @property
    def files(self) -> tuple[str, ...]:
        return self.raw.files

    def locate(self, path: KeyPath) -> Location:
        """Where the value at ``path`` (or its nearest ancestor) starts."""
        origin = lookup_origin(self.source, path)
        return origin.location if origin else Location(self.files[0])

    def key_locate(self, path: KeyPath) -> Location:
        """Where the key of ``path`` is written (falls back to its value, then to an ancestor)."""
        origin = lookup_origin(self.source, path)
        if origin is None:
            return Location(self.files[0])
        return origin.key_location or origin.location

    def overlay_lowers(self, view: View, cap: KeyPath, other: KeyPath) -> bool:
        """True when an environment overlay set the limit at ``cap`` (relative to the view, e.g.
        ``("retry", "max_retries")``) and not the value at ``other`` it now sits below ("no retries in
        development", "short delays in development"): the lower one applies, as the overlay intends, so
        that is not a contradiction of the file."""
        cap_origin = lookup_origin(self.source, view.blame(cap)[1])
        other_origin = lookup_origin(self.source, view.blame(other)[1])
        if cap_origin is None or not cap_origin.layer.startswith("env:"):
            return False
        return other_origin is None or other_origin.layer != cap_origin.layer

    def diagnostic(self, code: str, message: str, path: KeyPath, hint: str | None = None) -> Diagnostic:
        """A finding at the key of ``path`` (severity is set by the registry)."""
        return Diagnostic(code, message, self.key_locate(path), hint, path=render_path(path))

    def expand(self, refs: Sequence[str]) -> tuple[str, ...]:
        return expand_refs(refs, self.document.errors)

    def references(self) -> list[Diagnostic]:
        """CP106/CP107/CP116 findings from importing the classes and hooks the file names (computed once)."""
        if self._references is None:
            try:
                self._references = check_references(self.document, self.locate, import_classes=self.import_classes)
            except (Exception, SystemExit) as exc:  # a user module raised while being imported
                message = f"importing the policy's exception classes and hooks failed: {type(exc).__name__}: {exc}"
                self._references = [
                    Diagnostic("CP107", message, Location(self.files[0]), "a module named in the file raised on import")
                ]
        return self._references

    # --- layers and views ---------------------------------------------------

    @property
    def layering(self) -> Layering:
        """The resolver's layers of the document (built once)."""
        if self._layering is None:
            self._layering = Layering(self.document)
        return self._layering

    def defaults_layer(self) -> Layer:
        return self.layering.defaults

    def task_layers(self) -> dict[str, Layer]:
        """One layer per entry of ``tasks``."""
        return self.layering.tasks

    def globs(self) -> list[str]:
        """The glob patterns of ``tasks``, weakest first (more wildcards, then shorter literal prefix)."""
        return [str(layer.prefix[-1]) for layer in self.layering.globs]

    def layers_for(self, task: str) -> list[Layer]:
        """The layers that apply to a task name, weakest first (the resolver's own order)."""
        return self.layering.matching(task)

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
            view = _merge(subject, kind, chain, self.policy_cache)
            if view is not None:
                views.append(view)
        self._views = views
        return views

    def task_views(self) -> Iterator[tuple[str, View]]:
        """With ``--app``: every registered task with its effective view."""
        if self.app is None:
            return
        for task in self.app.user_tasks():
            view = _merge(task, "task", self.layers_for(task), self.policy_cache)
            if view is not None:
                yield task, view


def _merge(
    subject: str, kind: str, layers: Sequence[Layer], cache: dict[str, TaskPolicy | None] | None = None
) -> View | None:
    """Per-field merge exactly as the resolver does: setting a path replaces its ancestors and descendants."""
    merged, owners = merge_leaves([layer.leaves for layer in layers])
    key = repr(merged) if cache is not None else ""
    if cache is not None and key in cache:
        policy = cache[key]
    else:
        try:
            policy = TaskPolicy.model_validate(unflatten(merged))
        except ValidationError:  # each layer validated on its own; a merge that does not is reported by the resolver
            policy = None
        if cache is not None:
            cache[key] = policy
    if policy is None:
        return None
    return View(subject, kind, tuple(layers), policy, owners)
