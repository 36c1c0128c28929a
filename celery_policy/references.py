"""Exception groups and dotted import paths: expansion, import and checks."""

from __future__ import annotations

import builtins
import importlib
import sys
from collections.abc import Iterable, Iterator, Mapping
from functools import cache
from typing import Any

from celery_policy._yaml import KeyPath, render_path
from celery_policy.errors import Diagnostic, Location
from celery_policy.model import PolicyDocument, RetryPolicy, TaskPolicy


def expand_refs(refs: Iterable[str], groups: Mapping[str, list[str]]) -> tuple[str, ...]:
    """Group names replaced by their members (recursively); dotted paths kept. Order kept, duplicates dropped."""
    out: dict[str, None] = {}
    _expand(refs, groups, out, ())
    return tuple(out)


def _expand(refs: Iterable[str], groups: Mapping[str, list[str]], out: dict[str, None], seen: tuple[str, ...]) -> None:
    for ref in refs:
        if "." not in ref and ref in groups:
            if ref in seen:
                continue
            _expand(groups[ref], groups, out, (*seen, ref))
        elif "." not in ref and isinstance(getattr(builtins, ref, None), type):
            out[f"builtins.{ref}"] = None
        else:
            out[ref] = None


def import_object(path: str) -> Any:
    """Import ``pkg.module.attr`` (or ``pkg.module:attr``). Raises ImportError or AttributeError."""
    if ":" in path:
        module_name, _, attr_path = path.partition(":")
        obj: Any = importlib.import_module(module_name)
        for part in attr_path.split("."):
            obj = getattr(obj, part)
        return obj
    parts = path.split(".")
    for split in range(len(parts) - 1, 0, -1):
        module_name = ".".join(parts[:split])
        try:
            obj = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and not module_name.startswith(exc.name) and exc.name != module_name:
                raise  # the module exists but one of its own imports failed
            continue
        for part in parts[split:]:
            obj = getattr(obj, part)
        return obj
    msg = f"no module named '{parts[0]}'"
    raise ImportError(msg)


@cache
def import_exception(path: str) -> type[BaseException]:
    """Import an exception class; raise ImportError/TypeError with a readable message."""
    try:
        obj = import_object(path)
    except Exception as exc:  # a module may raise anything while it imports (a missing env var, say)
        msg = f"cannot import '{path}': {_describe(exc)}"
        raise ImportError(msg) from exc
    if not (isinstance(obj, type) and issubclass(obj, BaseException)):
        msg = f"'{path}' is not an exception class (it is {type(obj).__name__})"
        raise TypeError(msg)
    return obj


def _describe(exc: BaseException) -> str:
    if isinstance(exc, (ImportError, AttributeError)):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def ensure_import_root(root: str | None) -> None:
    """Let dotted paths import relative to the app's directory (the cwd by default), as ``celery -A`` does."""
    import os

    directory = os.path.abspath(root or os.getcwd())
    if directory not in sys.path:
        sys.path.insert(0, directory)


def _task_sections(document: PolicyDocument) -> Iterator[tuple[KeyPath, TaskPolicy]]:
    yield ("defaults",), document.defaults
    for name, section in document.tasks.items():
        yield ("tasks", name), section


def iter_exception_refs(document: PolicyDocument) -> Iterator[tuple[KeyPath, str]]:
    """Every exception reference with its key path, groups included."""
    for group, members in document.errors.items():
        for index, ref in enumerate(members):
            yield ("errors", group, index), ref
    for prefix, section in _task_sections(document):
        if "retry" not in section.model_fields_set:
            continue
        retry: RetryPolicy = section.retry
        for key in ("on", "never"):
            for index, ref in enumerate(getattr(retry, key)):
                yield (*prefix, "retry", key, index), ref
        for rule_index, rule in enumerate(retry.rules):
            for index, ref in enumerate(rule.on):
                yield (*prefix, "retry", "rules", rule_index, "on", index), ref
    for name, breaker in document.breakers.items():  # flow control: the failures a breaker counts
        for index, ref in enumerate(breaker.on or ()):
            yield ("breakers", name, "on", index), ref


def check_references(document: PolicyDocument, locate: Any, *, import_classes: bool = True) -> list[Diagnostic]:
    """CP106 unknown group, CP107 unimportable or non-exception class, CP116 bad hook.

    ``locate(path) -> Location | None`` maps key paths to file positions.
    """
    found: list[Diagnostic] = []
    groups = document.errors
    for path, ref in iter_exception_refs(document):
        location: Location | None = locate(path)
        if "." not in ref:
            if ref in groups or isinstance(getattr(builtins, ref, None), type):
                if ref in groups and path[0] == "errors" and _group_cycle(ref, groups):
                    found.append(
                        Diagnostic("CP106", f"group '{ref}' includes itself", location, path=render_path(path))
                    )
                continue
            import difflib

            close = difflib.get_close_matches(ref, list(groups), n=1)
            hint = (
                f"did you mean '{close[0]}'?"
                if close
                else (
                    f"known groups: {', '.join(groups)}" if groups else "define it under 'errors:' or use a dotted path"
                )
            )
            found.append(Diagnostic("CP106", f"unknown error group '{ref}'", location, hint, path=render_path(path)))
            continue
        if not import_classes:
            continue
        try:
            import_exception(ref)
        except (ImportError, TypeError) as exc:
            hint = (
                "check the spelling and that the module imports from the app's directory (--app)"
                if isinstance(exc, ImportError)
                else "list exception classes only (subclasses of BaseException)"
            )
            found.append(Diagnostic("CP107", str(exc), location, hint, path=render_path(path)))
    if import_classes:
        for prefix, section in _task_sections(document):
            if "hooks" not in section.model_fields_set:
                continue
            for hook, target in section.hooks.model_dump(exclude_unset=True).items():
                if target is None:
                    continue
                path = (*prefix, "hooks", hook)
                try:
                    obj = import_object(target)
                except Exception as exc:  # anything the hook's module raises while importing
                    msg = f"cannot import hook '{target}': {_describe(exc)}"
                    found.append(
                        Diagnostic("CP116", msg, locate(path), "check the dotted path", path=render_path(path))
                    )
                    continue
                if not callable(obj):
                    msg = f"hook '{target}' is not callable"
                    found.append(
                        Diagnostic("CP116", msg, locate(path), "point it at a function", path=render_path(path))
                    )
    return found


def _group_cycle(name: str, groups: Mapping[str, list[str]], seen: tuple[str, ...] = ()) -> bool:
    if name in seen:
        return True
    return any(
        _group_cycle(member, groups, (*seen, name))
        for member in groups.get(name, [])
        if "." not in member and member in groups
    )
