"""Settings of the example project: Celery's settings carry the CELERY_ prefix, celery-policy's too."""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = "example-only-not-secret"
DEBUG = False
ALLOWED_HOSTS: list[str] = []
INSTALLED_APPS = ["orders"]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": BASE_DIR / "db.sqlite3"}}
USE_TZ = True

# Celery reads every CELERY_* setting (app.config_from_object(..., namespace="CELERY")).
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "redis://localhost:6379/0")
CELERY_RESULT_BACKEND = os.environ.get("CELERY_RESULT_BACKEND", CELERY_BROKER_URL)

# celery-policy: which policy file, and which of its environments, this deployment uses.
# $CELERY_POLICY_FILE / $CELERY_POLICY_ENV in the process environment win over these two settings.
CELERY_POLICY_FILE = str(BASE_DIR / "policies" / "celery-policy.yaml")
CELERY_POLICY_ENV = os.environ.get("SHOPSITE_STAGE", "production")
