"""Moved to :mod:`celery_policy.runtime.observability`; this path stays because README and docs import from it."""

from celery_policy.runtime.observability import (
    BREADCRUMB_CATEGORY,
    FORMAT_VARIABLE,
    SPAN_EVENT,
    LogFormat,
    configure_logging,
    record_decision,
)

__all__ = ["BREADCRUMB_CATEGORY", "FORMAT_VARIABLE", "SPAN_EVENT", "LogFormat", "configure_logging", "record_decision"]
