"""CP207: idempotency key templates that cannot be formatted, or name a parameter the task lacks."""

from __future__ import annotations

import re
import string
from collections.abc import Iterator
from typing import Any

from celery_policy.errors import Diagnostic, trim
from celery_policy.lint.context import LintContext
from celery_policy.lint.registry import rule


class _Anything:
    """Stands in for any task argument while a key template is test-formatted."""

    def __format__(self, spec: str) -> str:
        return "x"

    def __getattr__(self, name: str) -> _Anything:
        return self

    def __getitem__(self, key: object) -> _Anything:
        return self


class _Args(tuple[Any, ...]):
    def __getitem__(self, key: object) -> Any:
        return _Anything()


class _Kwargs(dict[str, Any]):
    def __missing__(self, key: str) -> Any:
        return _Anything()


_FIELD_ROOT = re.compile(r"^([^.\[]*)(.*)$")
_INDEX = re.compile(r"^\[([^\]]*)\]")


def template_problem(template: str) -> tuple[str | None, list[tuple[str, str]]]:
    """Why a key template cannot be formatted (or None), and its ``(args|kwargs, index)`` look-ups."""
    lookups: list[tuple[str, str]] = []
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        return f"cannot be formatted: {exc}", lookups
    for name in fields:
        match = _FIELD_ROOT.match(name)
        root, rest = (match.group(1), match.group(2)) if match else (name, "")
        if root == "" or root.isdigit():
            return "uses a positional field {}; name task, args or kwargs", lookups
        if root not in {"task", "args", "kwargs"}:
            return f"names '{trim(root, 30)}'; the template sees only task, args and kwargs", lookups
        if root in {"args", "kwargs"}:
            index = _INDEX.match(rest)
            if rest.startswith("."):
                return f"uses {root}{rest} (attribute access); write {root}[name] instead", lookups
            if index is not None:
                lookups.append((root, index.group(1)))
    try:
        template.format(task=_Anything(), args=_Args(), kwargs=_Kwargs())
    except (ValueError, KeyError, IndexError, AttributeError, TypeError) as exc:
        return f"cannot be formatted: {type(exc).__name__}: {exc}", lookups
    return None, lookups


@rule("CP207", "idempotency-key", severity="warning")
def idempotency_key(ctx: LintContext) -> Iterator[Diagnostic]:
    """What it does: warns about an idempotency key template that cannot be formatted, or (with
    `--app`) that names a parameter the task's signature lacks.

    The template sees `task`, `args` and `kwargs`: `charge:{kwargs[order_id]}`.

    Why: the key is built for every call; a template that fails to format, or
    whose argument is never passed, breaks deduplication for that task.

    Example:
        bad:  idempotency: {key: "charge:{kwargs[order]}"}       (the task takes order_id)
        good: idempotency: {key: "charge:{kwargs[order_id]}"}
    """
    for view in ctx.views():
        if view.policy.idempotency is None:
            continue
        template = view.policy.idempotency.key
        problem, _ = template_problem(template)
        if problem is not None:
            _, path = view.blame(("idempotency", "key"))
            yield ctx.diagnostic("CP207", f"idempotency key '{trim(template)}' {problem}", path)
    if ctx.app is None:
        return
    for task, view in ctx.task_views():
        idempotency = view.policy.idempotency
        signature = ctx.app.tasks.get(task)
        if idempotency is None or signature is None:
            continue
        problem, lookups = template_problem(idempotency.key)
        if problem is not None:
            continue
        for root, index in lookups:
            missing = (root == "kwargs" and not signature.accepts_keyword(index)) or (
                root == "args" and index.isdigit() and not signature.accepts_index(int(index))
            )
            if not missing:
                continue
            _layer, path = view.blame(("idempotency", "key"))
            params = ", ".join(signature.keyword or signature.positional) or "none"
            message = f"idempotency key uses {root}[{trim(index, 30)}] but task '{trim(task)}' has no such parameter"
            hint = f"its parameters: {params}"
            yield ctx.diagnostic("CP207", message, path, hint)
