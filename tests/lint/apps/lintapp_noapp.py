"""A module without a Celery app in it."""

app = "not a Celery app"
