"""The policy file as frozen Pydantic models.

Every field of a task section has a built-in default, and what a file sets is
tracked by Pydantic's ``model_fields_set``. That is what makes per-field
merging work: a layer that sets only ``retry.max_retries`` contributes only
that field (``model_dump(exclude_unset=True)``), and ``max_retries: 0`` is a
real value, never mistaken for "unset".
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from celery_policy.durations import RATE_PATTERN, Duration, parse_rate

_CONFIG = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

ExceptionRef = Annotated[
    str,
    StringConstraints(strip_whitespace=True, pattern=r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$"),
    Field(
        description=(
            "a dotted import path of an exception class (builtins.TimeoutError) or the name of a group in `errors`"
        )
    ),
]
DottedCallable = Annotated[
    str,
    StringConstraints(strip_whitespace=True, pattern=r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*([:.][A-Za-z_]\w*)$"),
    Field(description="a dotted import path of a callable, e.g. proj.alerts.page_oncall"),
]
Jitter = Literal["full", "equal", "none"]

DEFAULT_REDACT_KEYS = ("password", "passwd", "secret", "token", "api_key", "authorization", "card_number", "cvv")


class _Section(BaseModel):
    model_config = _CONFIG


class Backoff(_Section):
    """Exponential backoff: delay = min(max, initial * factor ** n), then jitter."""

    initial: Duration = Field(1.0, description="delay before the first retry, in seconds (default 1s)")
    factor: float = Field(2.0, ge=1.0, description="multiplier per retry already made (default 2)")
    max: Duration = Field(
        600.0, description="cap on one delay, in seconds (default 10m, as Celery's retry_backoff_max)"
    )
    jitter: Jitter = Field(
        "full",
        description="full = uniform(0, d); equal = d/2 + uniform(0, d/2); none = d (default full)",
    )


class RetryRule(_Section):
    """A per-exception override with its own attempt counter."""

    on: list[ExceptionRef] = Field(min_length=1, description="exception classes or groups this rule applies to")
    max_retries: int | None = Field(
        None, ge=0, description="retries allowed for these exceptions (default: the task's max_retries)"
    )
    delay_from: str | None = Field(
        None,
        pattern=r"^[A-Za-z_]\w*$",
        description=(
            "take the delay in seconds from this attribute of the exception (e.g. retry_after), capped by backoff.max"
        ),
    )
    backoff: Backoff | None = Field(
        None, description="backoff fields for these exceptions; unset fields come from the task"
    )


class RetryPolicy(_Section):
    """Which exceptions retry, how often, and how long to wait."""

    on: list[ExceptionRef] = Field(default_factory=list, description="exceptions (or groups) that are retried")
    never: list[ExceptionRef] = Field(default_factory=list, description="exceptions (or groups) that fail at once")
    unknown: Literal["retry", "fail"] = Field(
        "fail", description="what to do with an exception in neither list (default fail, as Celery does)"
    )
    unknown_max_retries: int | None = Field(
        None, ge=0, description="retries for unknown exceptions before giving up (default: max_retries)"
    )
    max_retries: int | None = Field(3, ge=0, description="retries after the first attempt; null = no cap (default 3)")
    deadline: Duration | None = Field(
        None, description="total time budget since the first attempt, after which no retry is made (default none)"
    )
    backoff: Backoff = Field(default_factory=Backoff)
    rules: list[RetryRule] = Field(
        default_factory=list, description="per-exception overrides, most specific class wins"
    )
    self_retry: Literal["task", "policy"] = Field(
        "task",
        description=(
            "what a task's own self.retry() follows: task (default) = Celery's countdown, default_retry_delay "
            "and the task's max_retries, untouched by the policy; policy = a self.retry() without countdown/eta "
            "waits the policy's backoff for that exception (or rule) and is capped by its max_retries"
        ),
    )


class TimeoutPolicy(_Section):
    """Celery's soft and hard time limits and message expiry."""

    soft: Duration | None = Field(None, description="soft time limit: SoftTimeLimitExceeded is raised in the task")
    hard: Duration | None = Field(None, description="hard time limit: the worker child is killed")
    expires: Duration | None = Field(None, description="a message not started within this time is discarded")

    @model_validator(mode="after")
    def _positive(self) -> TimeoutPolicy:
        for name in ("soft", "hard", "expires"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                msg = f"{name} must be greater than 0"
                raise ValueError(msg)
        return self


class AckPolicy(_Section):
    """When the broker may forget a message."""

    late: bool = Field(False, description="acknowledge after the task ran (acks_late), not before")
    reject_on_worker_lost: bool = Field(
        False, description="requeue the message when the worker process dies (needs late)"
    )
    max_redeliveries: int | None = Field(
        None, ge=0, description="redeliveries after a lost worker before the message is dead-lettered (needs late)"
    )
    on_failure_or_timeout: bool = Field(
        True, description="with late ack: acknowledge failed and timed-out tasks too (Celery's default)"
    )


class DeadLetterPolicy(_Section):
    enabled: bool = Field(False, description="write a dead-letter record when the task can never succeed")
    on_time_limit: bool = Field(
        True, description="with enabled: also dead-letter a task killed by its hard time limit (default true)"
    )


class LogPolicy(_Section):
    args: Literal["show", "redact", "hide"] = Field(
        "redact", description="how task arguments appear in logs and records"
    )
    redact_keys: list[str] = Field(
        default_factory=lambda: list(DEFAULT_REDACT_KEYS),
        description="keyword names whose values are replaced by '***'",
    )


class RoutePolicy(_Section):
    queue: str | None = Field(None, min_length=1, description="queue the task is sent to")
    exchange: str | None = None
    routing_key: str | None = None
    priority: int | None = Field(None, ge=0, le=255, description="message priority (0-9 on Redis)")
    # RabbitMQ (celery_policy/queues.py): the type the queue is declared with
    queue_type: Literal["classic", "quorum"] | None = Field(
        None,
        description="RabbitMQ queue type of the task's queue (default: Celery's task_default_queue_type); on quorum "
        "queues with the amqp dead-letter store, ack.max_redeliveries becomes the broker's x-delivery-limit",
    )


class IdempotencyPolicy(_Section):
    key: str = Field(min_length=1, description="template over task, args, kwargs, e.g. 'charge:{kwargs[order_id]}'")
    ttl: Duration = Field(86400.0, description="how long a completed key is remembered (default 1d)")
    on_duplicate: Literal["return_result", "skip"] = "return_result"
    mark: Literal["on_success", "on_start"] = "on_success"


class ResultPolicy(_Section):
    on_failure: Literal["raise", "return_error"] = Field(
        "raise", description="raise = FAILURE state; return_error = SUCCESS with {'ok': false, 'error': ...}"
    )


class HooksPolicy(_Section):
    on_retry: DottedCallable | None = None
    on_failure: DottedCallable | None = None
    on_dead_letter: DottedCallable | None = None


# --- flow control: fleet-wide circuit breakers, shared rate limits, snoozes ---------------------------


def _fraction(value: Any) -> Any:
    """``50%`` or ``0.5`` -> 0.5 (other values are left to the field's own validation)."""
    if isinstance(value, str):
        text = value.strip()
        if text.endswith("%"):
            try:
                return float(text[:-1]) / 100.0
            except ValueError:
                return value
    return value


class BreakerSettings(_Section):
    """A circuit breaker shared by every worker (state in Redis), named in ``breakers`` and used by tasks."""

    on: list[ExceptionRef] | None = Field(
        None,
        description="failures that count (exception classes or groups); default: the retry.on of the task that "
        "reports them. Errors in the task's retry.never never count",
    )
    failure_rate: Annotated[
        float,
        BeforeValidator(_fraction),
        WithJsonSchema({"anyOf": [{"type": "number"}, {"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*%\s*$"}]}),
    ] = Field(0.5, gt=0.0, le=1.0, description="open when this share of the calls in the window failed: '50%' or 0.5")
    min_calls: int = Field(10, ge=1, description="... and at least this many calls were made in the window")
    window: Duration = Field(10.0, description="the sliding window the failure rate is measured over (default 10s)")
    open_for: Duration = Field(
        5.0, description="how long the breaker stays open before half_open_calls probes may run (default 5s)"
    )
    half_open_calls: int = Field(
        2, ge=1, description="probes let through when half-open; all succeed -> closed, one fails -> open again"
    )

    @model_validator(mode="after")
    def _positive(self) -> BreakerSettings:
        for name in ("window", "open_for"):
            if getattr(self, name) <= 0:
                msg = f"{name} must be greater than 0"
                raise ValueError(msg)
        return self


class LimitSettings(_Section):
    """A token bucket shared by every worker (state in Redis), named in ``limits`` and used by tasks."""

    rate: str = Field(
        json_schema_extra={"pattern": RATE_PATTERN},
        description="tokens per period for the whole fleet: '40/s', '100/m', '5/10s', '1000/h'",
    )
    burst: int = Field(1, ge=1, description="tokens that may be taken at once after an idle period (default 1)")

    @field_validator("rate", mode="before")
    @classmethod
    def _parsable(cls, value: Any) -> Any:
        parse_rate(value)  # raises "... is not a rate ..."
        return value.strip() if isinstance(value, str) else value

    @property
    def per_second(self) -> float:
        return parse_rate(self.rate)


class SnoozePolicy(_Section):
    """How long a task may wait on an open breaker or an empty limit, in total, before it gives up."""

    deadline: Duration | None = Field(
        None,
        description="total time a task may spend snoozed, since its first snooze (default: retry.deadline when "
        "set, else 1h)",
    )
    max: int | None = Field(None, ge=0, description="most snoozes per task (default: no cap besides deadline)")


DEFAULT_SNOOZE_DEADLINE_S = 3600.0


def snooze_deadline(policy: TaskPolicy) -> float:
    """The effective snooze.deadline of a task: its own, else its retry.deadline, else 1h."""
    if policy.snooze.deadline is not None:
        return policy.snooze.deadline
    return policy.retry.deadline if policy.retry.deadline is not None else DEFAULT_SNOOZE_DEADLINE_S


class FlowStoreSettings(_Section):
    """Where breaker and limit state lives (default: the dead-letter store's Redis)."""

    url: str | None = Field(
        None, description="Redis URL (default: dead_letter_store.url, else the broker URL when it is Redis)"
    )
    prefix: str = Field("celery-policy:flow", min_length=1, description="key prefix of breaker and limit state")
    cache_for: Duration = Field(
        1.0,
        description="how long a worker process trusts its cached breaker state before asking Redis again; a closed "
        "breaker's successes are counted locally and sent then (default 1s)",
    )


Breakers = dict[Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][\w.-]*$")], BreakerSettings]
Limits = dict[Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][\w.-]*$")], LimitSettings]


class TaskPolicy(_Section):
    """The failure-handling policy of one task (or the defaults of all tasks)."""

    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    timeout: TimeoutPolicy = Field(default_factory=TimeoutPolicy)
    ack: AckPolicy = Field(default_factory=AckPolicy)
    dead_letter: DeadLetterPolicy = Field(default_factory=DeadLetterPolicy)
    log: LogPolicy = Field(default_factory=LogPolicy)
    route: RoutePolicy | None = None
    idempotency: IdempotencyPolicy | None = None
    result: ResultPolicy = Field(default_factory=ResultPolicy)
    hooks: HooksPolicy = Field(default_factory=HooksPolicy)
    rate_limit: str | None = Field(
        None,
        pattern=r"^\d+(\.\d+)?(/[smh])?$",
        description=(
            "Celery rate limit per worker: a number, a slash and s, m or h -- '100/s' (a hundred a second), "
            "'10/m' (ten a minute), '1/h' (one an hour); a plain number is per second (default none)"
        ),
    )
    # flow control (celery_policy/flow/): names from the top-level breakers/limits blocks
    breaker: str | None = Field(None, min_length=1, description="name of a circuit breaker in `breakers`")
    limit: str | None = Field(None, min_length=1, description="name of a shared rate limit in `limits`")
    snooze: SnoozePolicy = Field(default_factory=SnoozePolicy)


class WorkerSettings(_Section):
    """Worker-wide settings applied to ``app.conf`` at install; unset means Celery's own value."""

    prefetch_multiplier: int | None = Field(None, ge=0, description="worker_prefetch_multiplier")
    track_started: bool | None = Field(None, description="task_track_started")
    result_expires: Duration | None = Field(None, description="result_expires")
    visibility_timeout: Duration | None = Field(
        None, description="broker_transport_options.visibility_timeout (Redis/SQS; Celery's default is 1h)"
    )
    pool: Literal["prefork", "solo", "threads", "eventlet", "gevent", "processes"] | None = Field(
        None, description="worker_pool"
    )
    concurrency: int | None = Field(None, ge=1, description="worker_concurrency")
    max_tasks_per_child: int | None = Field(None, ge=1, description="worker_max_tasks_per_child")
    consumer_timeout: Duration | None = Field(
        None,
        description="the RabbitMQ broker's consumer_timeout (rabbitmq.conf; 30m by default), which clients cannot "
        "read: celery-policy does not change it, `check` compares retry delays and late-acked time limits with it",
    )
    # Reliability (celery_policy/transport/): atomic take on the Redis broker
    reliable_fetch: bool | None = Field(
        None,
        description="Redis broker: take each message atomically with its unacked record and recover the messages "
        "of dead workers (celery_policy.transport.redis); unset = on when the broker is redis:// and any task has "
        "ack.late",
    )
    delayed_delivery: bool | None = Field(
        None,
        description="countdown retries wait in the broker, not in worker memory: on Redis with reliable fetch, "
        "in a sorted set by due time (written atomically with the ack of the failed attempt); on RabbitMQ, in "
        "per-delay TTL queues that dead-letter back to the work queue; unset = on with reliable fetch, off on "
        "RabbitMQ",
    )

    @field_validator("visibility_timeout", "consumer_timeout")
    @classmethod
    def _positive_visibility(cls, value: float | None) -> float | None:
        # kombu would restore every unacked message on each sweep: every task would run again and again.
        if value is not None and value <= 0:
            msg = "must be greater than 0"
            raise ValueError(msg)
        return value


class PublishRetry(_Section):
    max_retries: int = Field(3, ge=0)
    interval_start: Duration = 0.0
    interval_step: Duration = 0.2
    interval_max: Duration = 1.0


class ProducerSettings(_Section):
    publish_retry: PublishRetry = Field(default_factory=PublishRetry)


class DeadLetterStoreSettings(_Section):
    url: str | None = Field(None, description="Redis URL of the store (default: the broker URL when it is Redis)")
    stream: str = Field("celery-policy:dead", min_length=1)
    max_length: int = Field(100_000, ge=1, description="approximate cap on the stream length")
    # RabbitMQ (celery_policy/deadletter/amqp.py)
    backend: Literal["auto", "redis", "amqp"] = Field(
        "auto",
        description="redis = a Redis stream; amqp = a '<queue>.dead' queue per task queue on the RabbitMQ broker; "
        "auto (default) = amqp when the broker is amqp:// and no url is set, else redis",
    )


class PrometheusSettings(_Section):
    """A Prometheus endpoint in each worker's main process (needs the ``metrics`` extra)."""

    port: int = Field(ge=1, le=65535, description="TCP port of the worker's /metrics endpoint, e.g. 9808")
    address: str = Field(
        "0.0.0.0",  # a scrape target is reached from the Prometheus host
        min_length=1,
        description="interface the endpoint listens on (default 0.0.0.0, as prometheus_client's own server)",
    )
    multiprocess_dir: str | None = Field(
        None,
        min_length=1,
        description="directory for prometheus_client's multiprocess files (default: $PROMETHEUS_MULTIPROC_DIR, "
        "else a fresh temporary directory per worker); celery-policy empties it at worker boot",
    )


class ObservabilitySettings(_Section):
    """Metrics of the policy's decisions; off unless a section here is set."""

    prometheus: PrometheusSettings | None = Field(
        None, description="serve celery_policy_* counters for Prometheus from each worker (default: off)"
    )


ErrorGroups = dict[
    Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][\w-]*$")],
    list[ExceptionRef],
]


class Overlay(_Section):
    """An environment overlay: deep-merged over the base document."""

    extends: str | None = Field(None, description="another environment whose overlay applies first")
    errors: ErrorGroups = Field(default_factory=dict)
    defaults: TaskPolicy = Field(default_factory=TaskPolicy)
    tasks: dict[str, TaskPolicy] = Field(default_factory=dict)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    producer: ProducerSettings = Field(default_factory=ProducerSettings)
    dead_letter_store: DeadLetterStoreSettings = Field(default_factory=DeadLetterStoreSettings)
    observability: ObservabilitySettings = Field(default_factory=ObservabilitySettings)
    breakers: Breakers = Field(default_factory=dict, description="circuit breakers shared by the fleet")
    limits: Limits = Field(default_factory=dict, description="rate limits (token buckets) shared by the fleet")
    flow_store: FlowStoreSettings = Field(default_factory=FlowStoreSettings)


class PolicyDocument(_Section):
    """A whole policy file, version 1."""

    version: Literal[1] = Field(description="format version; only 1 exists")
    errors: ErrorGroups = Field(default_factory=dict, description="named exception groups")
    defaults: TaskPolicy = Field(default_factory=TaskPolicy, description="applies to every task unless overridden")
    tasks: dict[str, TaskPolicy] = Field(
        default_factory=dict, description="task names and glob patterns; an exact name beats any glob"
    )
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    producer: ProducerSettings = Field(default_factory=ProducerSettings)
    dead_letter_store: DeadLetterStoreSettings = Field(default_factory=DeadLetterStoreSettings)
    observability: ObservabilitySettings = Field(default_factory=ObservabilitySettings)
    breakers: Breakers = Field(default_factory=dict, description="circuit breakers shared by the fleet")
    limits: Limits = Field(default_factory=dict, description="rate limits (token buckets) shared by the fleet")
    flow_store: FlowStoreSettings = Field(default_factory=FlowStoreSettings)
    environments: dict[str, Overlay] = Field(default_factory=dict, description="overlays chosen by --env")


def dump_set(model: BaseModel) -> dict[str, Any]:
    """The fields a layer really set, as plain data (nested)."""
    return model.model_dump(exclude_unset=True)
