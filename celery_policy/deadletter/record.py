"""What goes into the dead-letter stream: one record per task that can never succeed."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Reason = Literal[
    "exhausted", "permanent", "unknown", "unknown_exhausted", "deadline", "redelivery_limit", "time_limit",
    "breaker_open", "rate_limited",
    "rejected",  # RabbitMQ: dead-lettered by the broker for another reason than its delivery limit (deadletter/amqp.py)
]  # fmt: skip


class DeadLetter(BaseModel):  # type: ignore[no-redef]  # pydantic's mypy plugin clashes with the field "kwargs"
    """One dead-lettered task. ``args``/``kwargs`` are rendered per the task's ``log`` policy;
    when redaction changed them the record is not ``replayable`` (the secrets were never stored)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    task: str
    task_id: str | None
    args: list[Any] = Field(default_factory=list)
    kwargs: dict[str, Any] = Field(default_factory=dict)
    replayable: bool = True
    reason: Reason
    exc_type: str
    exc_message: str = ""
    traceback: str = ""
    attempts: int = 1
    first_failure: float
    last_failure: float
    hostname: str | None = None
    queue: str | None = None
    policy_source: str = ""
    # What a faithful replay needs (records written before these fields existed read back empty and
    # replay as a plain task). ``headers``: the task's own message headers, never broker bookkeeping
    # (x-death, redelivered, delivery tags) nor the retry state a replay starts afresh (deadletter/canvas.py).
    headers: dict[str, Any] = Field(default_factory=dict)
    chain: list[dict[str, Any]] = Field(default_factory=list, description="the rest of the chain, next task last")
    callbacks: list[dict[str, Any]] = Field(default_factory=list, description="link: run with the result")
    errbacks: list[dict[str, Any]] = Field(default_factory=list, description="link_error: run on failure")
    chord: dict[str, Any] | None = Field(None, description="the chord body this task was a header member of")
    group_id: str | None = None
    group_index: int | None = None
    root_id: str | None = None
    parent_id: str | None = None
    priority: int | None = None
    exchange: str | None = None
    routing_key: str | None = None
    id: str | None = Field(None, description="stream entry id, set when read back")
