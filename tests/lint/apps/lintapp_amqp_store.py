# mypy: ignore-errors
# (Celery and kombu ship no type information; these modules only exist to be imported by --app.)
"""A Celery app on RabbitMQ whose dead letters go to the broker (no Redis); the broker does not answer,
so the RabbitMQ rules compare the policy with the app's task_queues only."""

from celery import Celery
from kombu import Queue

celery = Celery("lintapp_amqp_store", broker="amqp://guest:guest@127.0.0.1:1//", set_as_current=False)
celery.conf.task_queues = [
    Queue("celery", queue_arguments={"x-queue-type": "quorum"}),
    Queue("bulk", queue_arguments={"x-queue-type": "quorum", "x-delivery-limit": 5}),
    Queue("plain"),
]
celery.conf.worker_prefetch_multiplier = 1


@celery.task(name="mail.send", shared=False)
def send(to: str) -> None:
    """Send one mail."""


@celery.task(name="mail.digest", shared=False)
def digest() -> None:
    """Send the daily digest."""
