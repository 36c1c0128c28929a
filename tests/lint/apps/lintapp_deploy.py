# mypy: ignore-errors
# (Celery and kombu ship no type information; these modules only exist to be imported by --app.)
"""Celery apps with the worker settings the deployment rules (CP220-CP223) read; imported, never run.

One module, several apps: ``--app lintapp_deploy:sqs``. Tasks use ``shared=False`` so each app keeps its own.
"""

from celery import Celery
from kombu import Exchange, Queue


def _app(name: str, broker: str, **conf: object) -> Celery:
    app = Celery(name, broker=broker, set_as_current=False)
    app.conf.update(conf)

    @app.task(name="orders.charge", shared=False)
    def charge(order_id: int) -> None:
        """Charge an order."""

    return app


# SQS, Celery's defaults: no soft shutdown, no ETA limit.
sqs = _app("sqs", "sqs://")
# Redis with soft shutdown and an ETA limit.
redis_soft = _app("redis_soft", "redis://localhost:6379/0", worker_soft_shutdown_timeout=60, worker_eta_task_limit=1000)
# Deduplication of successful tasks, results kept 10 minutes (the Redis visibility timeout is 1h).
dedupe_short = _app(
    "dedupe_short",
    "redis://localhost:6379/0",
    result_backend="redis://localhost:6379/1",
    result_expires=600,
    worker_deduplicate_successful_tasks=True,
)
# Deduplication of successful tasks, results kept a day (Celery's default).
dedupe_day = _app(
    "dedupe_day",
    "redis://localhost:6379/0",
    result_backend="redis://localhost:6379/1",
    worker_deduplicate_successful_tasks=True,
)
# Deduplication without a result backend.
dedupe_nobackend = _app("dedupe_nobackend", "redis://localhost:6379/0", worker_deduplicate_successful_tasks=True)
# RabbitMQ, classic queue with a per-queue consumer timeout of 2 hours.
amqp_timeout = _app(
    "amqp_timeout",
    "amqp://guest@localhost//",
    task_queues=[Queue("celery", queue_arguments={"x-consumer-timeout": 7_200_000})],
)
# RabbitMQ with quorum queues on a topic exchange: Celery 5.5+ native delayed delivery holds countdowns.
amqp_native = _app(
    "amqp_native",
    "amqp://guest@localhost//",
    task_default_exchange_type="topic",
    task_queues=[Queue("celery", Exchange("celery", type="topic"), queue_arguments={"x-queue-type": "quorum"})],
)
# The threads pool named by its class, as some deployments write it.
threads = _app("threads", "memory://", worker_pool="celery.concurrency.thread:TaskPool")
