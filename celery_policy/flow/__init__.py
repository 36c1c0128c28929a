"""Flow control shared by the fleet: circuit breakers and token-bucket limits whose state lives in Redis.

:mod:`.state` holds the Redis side (Lua scripts, one atomic step per call) and the
per-process cache; it imports nothing of Celery, so the CLI reads and forces
breakers with it too. The worker side (snoozing a task) is
:mod:`celery_policy.runtime.flow`.
"""
