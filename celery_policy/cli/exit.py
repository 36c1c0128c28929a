"""The exit codes of every ``celery-policy`` and ``celery -A proj policy`` command (the only definition)."""

from __future__ import annotations

OK = 0  # clean: no error findings (warnings allowed unless --strict), no difference, no drift
FAILED = 1  # the answer is no: findings (check, explain), differences (diff), drift (status), no such record (dlq)
USAGE = 2  # bad arguments, an unreadable file, an app that does not import, a refused confirmation
CONNECT = 3  # a broker or store could not be reached, or a replayed task could not be published
