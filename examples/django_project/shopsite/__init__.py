"""A tiny Django project whose Celery app takes its failure handling from celery-policy."""

from shopsite.celery import app as celery_app

__all__ = ["celery_app"]
