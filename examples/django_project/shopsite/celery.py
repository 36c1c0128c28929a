"""The Celery app, configured from Django's settings in the usual way."""

import os

from celery import Celery

import celery_policy

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shopsite.settings")

app = Celery("shopsite", task_cls=celery_policy.PolicyTask)
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

# Reads settings.CELERY_POLICY_FILE and settings.CELERY_POLICY_ENV through app.conf.
celery_policy.install(app)
