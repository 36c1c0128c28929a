"""Findings about the check itself rather than the policy: suppression comments that no longer suppress anything."""

from __future__ import annotations

from collections.abc import Iterator

from celery_policy.errors import Diagnostic
from celery_policy.lint.context import LintContext
from celery_policy.lint.registry import rule


@rule("CP229", "unused-suppression", severity="warning", emitted_by="engine")
def unused_suppression(ctx: LintContext) -> Iterator[Diagnostic]:
    """What it does: reports a `# celery-policy: ignore[CODE]` comment whose rule reports nothing on
    the line it covers (like ruff's RUF100).

    Each selector of a comment is checked on its own (`ignore[CP201, CP205]`
    where only CP205 still fires reports CP201). Reported only when the check
    could have seen the finding: every environment was checked (`--all-envs`,
    or the file has none) and validated, and each rule the selector names ran
    (selected, and `--app` given for rules that need it). `ignore[CP229]` in the same comment
    keeps its other selectors.

    Why: a suppression left behind after the problem was fixed silently hides
    the next real finding on that line.

    Example:
        bad:  retry: {max_retries: 5}  # celery-policy: ignore[CP201]   (the cap is set: CP201 no longer fires)
        good: retry: {max_retries: 5}
    """
    yield from ()  # emitted by the engine once every other rule ran (celery_policy.lint.engine)
