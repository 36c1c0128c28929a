"""The ``celery.commands`` entry point (``celery -A proj policy``): see :mod:`celery_policy.cli.celery_command`."""

from celery_policy.cli.celery_command import policy

__all__ = ["policy"]
