# mypy: ignore-errors
# (Celery and kombu ship no type information; these modules only exist to be imported by --app.)
"""A Celery app on RabbitMQ with quorum queues, no missing-queue creation, and no Redis."""

from celery import Celery
from kombu import Queue

celery = Celery("lintapp_amqp", broker="amqp://guest@localhost//", set_as_current=False)
celery.conf.task_queues = [
    Queue("celery", queue_arguments={"x-queue-type": "quorum"}),
    Queue("bulk", queue_arguments={"x-queue-type": "quorum", "x-delivery-limit": 5}),
    Queue("classic"),
]
celery.conf.task_create_missing_queues = False
celery.conf.worker_prefetch_multiplier = 1


@celery.task(name="mail.send", shared=False)
def send(to: str, *args: str, **kwargs: str) -> None:
    """Send one mail."""


@celery.task(name="mail.digest", shared=False)
def digest() -> None:
    """Send the daily digest."""
