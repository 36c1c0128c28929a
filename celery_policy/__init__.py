"""celery-policy: Celery failure handling from one reviewed YAML file."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from celery_policy._version import __version__
from celery_policy.errors import PolicyError
from celery_policy.resolve import Policy, ResolvedPolicy, load

if TYPE_CHECKING:
    from celery_policy.runtime.install import install
    from celery_policy.runtime.task import PolicyTask

__all__ = ["Policy", "PolicyError", "PolicyTask", "ResolvedPolicy", "__version__", "install", "load"]


def __getattr__(name: str) -> Any:
    # The runtime imports Celery; `celery-policy check` should not pay for that.
    if name == "install":
        from celery_policy.runtime.install import install

        return install
    if name == "PolicyTask":
        from celery_policy.runtime.task import PolicyTask

        return PolicyTask
    msg = f"module 'celery_policy' has no attribute {name!r}"
    raise AttributeError(msg)
