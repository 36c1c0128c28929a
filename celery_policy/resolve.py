"""Precedence and provenance: (policy, task name) -> :class:`ResolvedPolicy`.

Layers, weakest first: built-in defaults < ``defaults`` < glob patterns (less
specific first: more wildcards, then shorter literal prefix) < the exact task
name. Environment overlays are merged into the document before this (see
:mod:`celery_policy.loader`). Merging is per field; lists replace.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from celery_policy._yaml import KeyPath, render_path
from celery_policy.errors import Diagnostic, Location, PolicyError, trim
from celery_policy.loader import (
    RawPolicy,
    SourceMap,
    apply_environment,
    default_policy_paths,
    lookup_origin,
    merge_raw,
    read_policy_file,
    validate_document,
)
from celery_policy.model import PolicyDocument, TaskPolicy, dump_set
from celery_policy.patterns import PatternIndex, is_glob, specificity
from celery_policy.references import check_references, ensure_import_root, expand_refs

BUILTIN_LAYER = "builtin"  # the provenance layer of a value no file sets (explain lists it first)


@dataclass(frozen=True, slots=True)
class Provenance:
    """Where one effective value came from."""

    layer: str  # "builtin", "defaults", 'tasks."reports.*"', "tasks.orders.charge"
    location: Location | None = None
    overlay: str = "base"  # "base" or "env:NAME"

    def __str__(self) -> str:
        if self.location is None:
            return self.layer
        via = "" if self.overlay == "base" else f", {self.overlay}"
        return f"{self.location.file}:{self.location.line} ({self.layer}{via})"


@dataclass(frozen=True, slots=True)
class ResolvedPolicy:
    """The effective policy of one task, with the source of every field."""

    task: str
    env: str | None
    policy: TaskPolicy
    provenance: Mapping[str, Provenance]
    layers: tuple[str, ...]
    groups: Mapping[str, list[str]] = field(default_factory=dict)

    def source_of(self, path: str) -> Provenance:
        """Provenance of a dotted field path such as ``retry.backoff.initial``."""
        probe = path
        while probe:
            found = self.provenance.get(probe)
            if found is not None:
                return found
            probe = probe.rpartition(".")[0]
        return Provenance(BUILTIN_LAYER)

    def expand(self, refs: Iterable[str]) -> tuple[str, ...]:
        """Exception references with group names replaced by dotted paths."""
        return expand_refs(refs, self.groups)


@dataclass(frozen=True, slots=True)
class Layer:
    """One section of the document that sets task policy fields."""

    label: str  # "defaults", 'tasks."reports.*"', "tasks.orders.charge"
    prefix: KeyPath  # ("defaults",) or ("tasks", NAME)
    leaves: Mapping[KeyPath, Any]  # the fields it sets, flattened: ("timeout", "soft") -> 360.0
    rank: tuple[int, int, int] = (0, 0, 0)  # (0 defaults | 1 glob | 2 exact name, *glob specificity)


class Layering:
    """The task-policy layers of a validated document, and which of them apply to a task name.

    The one definition of precedence: ``defaults`` < glob patterns (less specific
    first: more wildcards, then shorter literal prefix; document order on a tie)
    < the exact task name. The resolver and the lint views both read it.
    """

    def __init__(self, document: PolicyDocument) -> None:
        self.defaults = Layer("defaults", ("defaults",), flatten(dump_set(document.defaults)))
        self.tasks: dict[str, Layer] = {}
        for name, section in document.tasks.items():
            rank = (1, *specificity(name).sort_key()) if is_glob(name) else (2, 0, 0)
            self.tasks[name] = Layer(render_path(("tasks", name)), ("tasks", name), flatten(dump_set(section)), rank)
        self._exact = {name: layer for name, layer in self.tasks.items() if not is_glob(name)}
        globs = {name: layer for name, layer in self.tasks.items() if is_glob(name)}
        self.globs = sorted(globs.values(), key=lambda layer: layer.rank)  # weakest first
        self._order = {layer.label: index for index, layer in enumerate(self.globs)}
        self._by_name = globs
        self._index = PatternIndex(globs)

    def matching(self, task: str) -> list[Layer]:
        """The layers that apply to ``task``, weakest first."""
        globs = sorted((self._by_name[p] for p in self._index.matches(task)), key=lambda g: self._order[g.label])
        exact = self._exact.get(task)
        return [self.defaults, *globs, *([exact] if exact is not None else [])]


class Policy:
    """A loaded, validated policy as seen in one environment (or none).

    Build one with :func:`load`. ``for_task`` is cheap after the first call for
    a combination of matching patterns: resolved sections are shared.
    """

    def __init__(self, raw: RawPolicy, env: str | None = None) -> None:
        self.raw = raw
        self.env = env
        effective = apply_environment(raw, env)
        self.source: SourceMap = effective.source
        self.document: PolicyDocument = validate_document(effective)
        self.files = raw.files
        self._envs: dict[str | None, Policy] = {env: self}
        self.layering = Layering(self.document)
        self._cache: dict[tuple[str, ...], tuple[TaskPolicy, Mapping[str, Provenance]]] = {}

    @property
    def environments(self) -> list[str]:
        """Names of the environments the file defines."""
        envs = self.raw.data.get("environments")
        return [str(name) for name in envs] if isinstance(envs, dict) else []

    def location(self, path: KeyPath) -> Location | None:
        """The file position of a key path (or of its nearest ancestor)."""
        origin = lookup_origin(self.source, path)
        return origin.location if origin else None

    def key_location(self, path: KeyPath) -> Location | None:
        origin = lookup_origin(self.source, path)
        return (origin.key_location or origin.location) if origin else None

    def with_env(self, env: str | None) -> Policy:
        """The same files seen in another environment (cached)."""
        found = self._envs.get(env)
        if found is None:
            found = Policy(self.raw, env)
            found._envs = self._envs
            self._envs[env] = found
        return found

    def matching_layers(self, task: str) -> list[Layer]:
        """The layers that apply to ``task``, weakest first."""
        return self.layering.matching(task)

    def for_task(self, task: str, env: str | None = None) -> ResolvedPolicy:
        """The effective policy of ``task``. Raises :class:`PolicyError` on a pattern conflict (CP110)."""
        if env is not None and env != self.env:
            return self.with_env(env).for_task(task)
        layers = self.matching_layers(task)
        key = tuple(layer.label for layer in layers)
        cached = self._cache.get(key)
        if cached is None:
            _check_conflicts(task, layers, self)
            cached = self._merge(layers)
            self._cache[key] = cached
        policy, provenance = cached
        return ResolvedPolicy(task, self.env, policy, provenance, key, self.document.errors)

    def _merge(self, layers: Sequence[Layer]) -> tuple[TaskPolicy, Mapping[str, Provenance]]:
        merged, owners = merge_leaves([layer.leaves for layer in layers])
        policy = TaskPolicy.model_validate(unflatten(merged))
        provenance: dict[str, Provenance] = {}
        for path, index in owners.items():
            layer = layers[index]
            origin = lookup_origin(self.source, (*layer.prefix, *path))
            provenance[_dotted(path)] = Provenance(
                layer.label,
                origin.location if origin else None,
                origin.layer if origin else "base",
            )
        return policy, MappingProxyType(provenance)


def merge_leaves(layers: Sequence[Mapping[KeyPath, Any]]) -> tuple[dict[KeyPath, Any], dict[KeyPath, int]]:
    """Per-field merge, weakest layer first: the merged leaves and the index of the layer that set each.

    Setting a path replaces its ancestors (``route: null`` then ``route.queue``) and its
    descendants (``route.queue`` then ``route: null``); lists are leaves and replace whole.
    """
    merged: dict[KeyPath, Any] = {}
    owners: dict[KeyPath, int] = {}
    inner: set[KeyPath] = set()  # proper prefixes of merged paths (may hold stale entries: they only cost a scan)
    for index, leaves in enumerate(layers):
        for path, value in leaves.items():
            if path not in merged:
                for size in range(1, len(path)):
                    ancestor = path[:size]
                    inner.add(ancestor)
                    if ancestor in merged:
                        del merged[ancestor], owners[ancestor]
                if path in inner:  # only then can merged hold paths below this one
                    size = len(path)
                    for other in [p for p in merged if len(p) > size and p[:size] == path]:
                        del merged[other], owners[other]
            merged[path] = value
            owners[path] = index
    return merged, owners


def flatten(data: Mapping[str, Any], prefix: KeyPath = ()) -> dict[KeyPath, Any]:
    """Nested set fields -> ``{("timeout", "soft"): 360.0}``; lists and scalars are leaves."""
    leaves: dict[KeyPath, Any] = {}
    for key, value in data.items():
        path = (*prefix, key)
        if isinstance(value, dict):
            # An empty mapping (``timeout: {}``) sets no field; as a leaf it would
            # wipe out what weaker layers set below it.
            leaves.update(flatten(value, path))
        else:
            leaves[path] = value
    return leaves


def unflatten(leaves: Mapping[KeyPath, Any]) -> dict[str, Any]:
    root: dict[str, Any] = {}
    for path, value in leaves.items():
        node = root
        for part in path[:-1]:
            node = node.setdefault(str(part), {})
        node[str(path[-1])] = value
    return root


def _dotted(path: KeyPath) -> str:
    return ".".join(str(p) for p in path)


def _check_conflicts(task: str, layers: Sequence[Layer], policy: Policy) -> None:
    """Equal-specificity globs that set the same field differently for one task (CP110)."""
    globs = [layer for layer in layers if layer.rank[0] == 1]
    diagnostics: list[Diagnostic] = []
    for index, first in enumerate(globs):
        for second in globs[index + 1 :]:
            if first.rank != second.rank:
                continue
            for path in sorted(set(first.leaves) & set(second.leaves), key=str):
                if first.leaves[path] == second.leaves[path]:
                    continue
                diagnostics.append(conflict_diagnostic(task, first, second, path, policy))
    if diagnostics:
        raise PolicyError(diagnostics=diagnostics)


def conflict_diagnostic(task: str, first: Layer, second: Layer, path: KeyPath, policy: Policy) -> Diagnostic:
    where_first = policy.location((*first.prefix, *path))
    where_second = policy.location((*second.prefix, *path))
    msg = (
        f"patterns {first.prefix[-1]!r} and {second.prefix[-1]!r} are equally specific and both set "
        f"{_dotted(path)} for task '{trim(task)}' ({trim(first.leaves[path], 20)} vs {trim(second.leaves[path], 20)})"
    )
    hint = f"the other one is at {where_first}; add an exact entry for the task or make one pattern more specific"
    return Diagnostic("CP110", msg, where_second, hint, path=render_path((*second.prefix, *path)))


def load(
    path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
    *,
    env: str | None = None,
    check_imports: bool = True,
    import_root: str | None = None,
) -> Policy:
    """Load, merge and validate policy files and return the :class:`Policy` for ``env``.

    ``path`` is one file or several (merged in order); by default
    ``$CELERY_POLICY_FILE`` or ``policies/celery-policy.yaml``. Exception
    classes and hooks are imported (relative to ``import_root``, default the
    working directory). Raises :class:`PolicyError` with every finding.
    """
    if path is None:
        paths: list[str | os.PathLike[str]] = list(default_policy_paths())
    elif isinstance(path, (str, os.PathLike)):
        paths = [path]
    else:
        paths = list(path)
    if not paths:
        msg = "no policy file given"
        raise PolicyError(msg)
    raw = merge_raw([read_policy_file(p) for p in paths])
    policy = Policy(raw, env)
    if check_imports:
        ensure_import_root(import_root)
    diagnostics = check_references(policy.document, policy.location, import_classes=check_imports)
    if diagnostics:
        raise PolicyError(diagnostics=diagnostics)
    return policy
