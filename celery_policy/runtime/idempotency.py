"""Idempotency keys: a duplicate delivery of completed work does not run the body again.

Two Redis keys per business key, in one hash slot (``{…}`` tag) so they also
work on Redis Cluster:
- ``…:lock`` ``SET NX PX``: held while one worker runs the body; it expires,
  so a worker killed mid-task does not block the key forever;
- ``…:done``: the stored result (JSON) once the body succeeded, kept ``ttl``;
  with ``mark: on_start`` it is written before the body runs (at most once).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from celery_policy.model import IdempotencyPolicy

PREFIX = "celery-policy:idem:"
MAX_KEY_CHARS = 256
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end
"""


class IdempotencyKeyError(Exception):
    """The key template cannot be formatted with this call's arguments."""


@dataclass(slots=True)
class Entry:
    key: str
    token: str
    duplicate: bool = False
    busy: bool = False
    result: Any = None


class IdempotencyGuard:
    def __init__(self, policy: IdempotencyPolicy, task_name: str, client: Any, lock_ttl_s: float) -> None:
        self.policy = policy
        self.task_name = task_name
        self.client = client
        self.lock_ttl_ms = max(1000, int(lock_ttl_s * 1000))
        self.ttl_s = max(1, int(policy.ttl))
        self._release = client.register_script(_RELEASE)

    def key_for(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> str:
        try:
            business = self.policy.key.format(task=self.task_name, args=args, kwargs=kwargs)
        except (KeyError, IndexError, AttributeError, ValueError, TypeError) as exc:
            msg = f"idempotency key {self.policy.key!r} of task '{self.task_name}' cannot be formatted: {exc!r}"[:500]
            raise IdempotencyKeyError(msg) from exc
        if len(business) > MAX_KEY_CHARS:  # a huge argument must not become a huge Redis key
            business = "sha256:" + hashlib.sha256(business.encode("utf-8", "surrogatepass")).hexdigest()
        return f"{PREFIX}{{{business}}}"

    def enter(self, task_id: str | None, args: Sequence[Any], kwargs: Mapping[str, Any]) -> Entry:
        """Raises redis errors to the caller (which retries per policy rather than run unguarded)."""
        key = self.key_for(args, kwargs)
        entry = Entry(key, token=str(task_id or uuid.uuid4()))
        if self._finished(entry):
            return entry
        acquired = self.client.set(key + ":lock", entry.token, nx=True, px=self.lock_ttl_ms)
        if not acquired:
            holder = self.client.get(key + ":lock")
            if _text(holder) != entry.token:  # a redelivery of the same message may find its own lock
                if self._finished(entry):
                    return entry
                entry.busy = True
                return entry
            self.client.pexpire(key + ":lock", self.lock_ttl_ms)
        if self.policy.mark == "on_start":
            self.client.set(key + ":done", json.dumps({"started_by": entry.token}), ex=self.ttl_s)
        return entry

    def _finished(self, entry: Entry) -> bool:
        raw = self.client.get(entry.key + ":done")
        if raw is None:
            return False
        stored = json.loads(raw)
        if isinstance(stored, dict) and stored.get("started_by") == entry.token:
            return False  # marked on start by this very task: its own retry, not a duplicate
        entry.duplicate = True
        if self.policy.on_duplicate == "skip" or (isinstance(stored, dict) and "started_by" in stored):
            entry.result = {"status": "duplicate", "key": entry.key[len(PREFIX) + 1 : -1]}
        else:
            entry.result = stored.get("result") if isinstance(stored, dict) else None
        return True

    def success(self, entry: Entry, result: Any) -> None:
        try:
            payload = json.dumps({"result": result, "task_id": entry.token})
        except (TypeError, ValueError):
            payload = json.dumps({"result": None, "task_id": entry.token, "unserialisable": True})
        pipe = self.client.pipeline()
        pipe.set(entry.key + ":done", payload, ex=self.ttl_s)
        pipe.execute()
        self.release(entry)

    def release(self, entry: Entry) -> None:
        self._release(keys=[entry.key + ":lock"], args=[entry.token])


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)
