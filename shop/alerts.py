"""Hooks named in the policy (``hooks.on_failure`` / ``hooks.on_dead_letter``).

celery-policy calls a hook as ``hook(request, exc, decision)``; an exception
raised by a hook is logged and never changes the task's outcome.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger("shop.alerts")


def notify_failure(request: Any, exc: BaseException | None, decision: Any) -> None:
    """A task gave up: one warning line an alerting pipeline can match."""
    logger.warning("task %s[%s] failed for good: %r", request.task, request.id, exc)


def page_oncall(request: Any, exc: BaseException | None, decision: Any) -> None:
    """A charge was dead-lettered: money is involved, so a human looks at it."""
    logger.error("PAGE on-call: %s[%s] dead-lettered: %r", request.task, request.id, exc)
