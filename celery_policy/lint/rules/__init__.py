"""The lint rules: one function per rule, each yielding :class:`~celery_policy.errors.Diagnostic`.

Importing this package registers every rule (:mod:`celery_policy.lint.registry`),
one module per family: :mod:`.structure` and :mod:`.backoffs` (CP1xx errors),
:mod:`.reliability` and :mod:`.idempotency` (CP2xx warnings), :mod:`.app` (CP3xx cross-checks against the
``--app``), :mod:`.baseclass` (CP311, the app's own Task classes), :mod:`.amqp` (RabbitMQ queues, CP209
and CP305-CP307), :mod:`.deployment` (broker and worker settings around the policy: CP220-CP223),
:mod:`.hygiene` (unused suppression comments, CP229) and :mod:`.flow` (breakers, limits and snoozes,
CP130-CP132 and CP240-CP243). Codes are stable; see the registry for the docstring format.
"""

from celery_policy.lint.context import LintContext
from celery_policy.lint.rules import (
    amqp,
    app,
    backoffs,
    baseclass,
    deployment,
    flow,
    hygiene,
    idempotency,
    reliability,
    structure,
)

__all__ = [
    "LintContext",
    "amqp",
    "app",
    "backoffs",
    "baseclass",
    "deployment",
    "flow",
    "hygiene",
    "idempotency",
    "reliability",
    "structure",
]
