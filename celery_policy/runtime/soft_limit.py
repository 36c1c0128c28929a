"""The soft-time-limit backstop: a prefork pool process raises a task's soft limit when Celery's signal is late.

With the prefork pool the worker's main process owns the soft time limit: it
starts a timer on its event loop when it reads the child's ACK for the job
(billiard/pool.py ``ApplyResult._ack`` -> celery/concurrency/asynpool.py
``on_timeout_set``), and ``_on_soft_timeout`` sends SIGUSR1 to the child, where
billiard's handler raises ``SoftTimeLimitExceeded`` (billiard/pool.py
``soft_timeout_sighandler``). While that loop does not run (the consumer
reconnecting to a broker that is down, a main process stopped or starved) the
timer does not fire, and a body that outlasts its limit runs to its end and is
acked. When the loop runs again its timers fire before it reads the job's
result, so the signal then reaches a child that is idle (billiard raises it in
its wait for the next job and the child exits) or is finishing the task.

For a task whose policy sets ``timeout.soft``, the run wrapper (runtime/wrappers.py)
arms a deadline in the pool process when the task starts: its effective soft limit
(the message's ``timelimit``, else the task's ``soft_time_limit``, as Celery reads it)
plus :data:`GRACE_S`. A watchdog thread of that process, started with its first timed
task, sends SIGUSR1 to the process's main thread at the deadline, so the task gets the
same exception from the same signal as Celery's own limit, while Celery's timer, which
comes :data:`GRACE_S` earlier, stays the normal path. SIGUSR1 goes through
:func:`_on_soft_signal` (installed over billiard's handler) so that, per timed run:

- the soft limit is raised once, whichever signal comes first; the other is dropped;
- the watchdog's signal never reaches another run (it names the run it was sent for);
- Celery's signal arriving after the run ended, while the process is idle or still
  finishing that task, is dropped instead of raised into billiard's loop;
- everything else (another task, no timed run yet) goes to billiard's handler as before.

Only a process whose SIGUSR1 handler is billiard's (a prefork pool child) arms. The solo,
threads, gevent and eventlet pools run tasks in the worker's main process, where Celery
enforces no soft limit: they keep Celery's behaviour. So do direct calls and eager runs.
The hard limit is not backstopped here: killing the process from inside would be seen as
a lost worker (a requeue), not as a time limit.
"""

from __future__ import annotations

import contextlib
import math
import os
import select
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from celery import Task
from celery._state import get_current_task
from celery.exceptions import SoftTimeLimitExceeded

from celery_policy.runtime.events import logger

__all__ = ["GRACE_S", "timed"]

GRACE_S = 0.3
"""How long after the soft limit the backstop raises it when Celery's signal has not come."""

_SIGNAL: int | None = getattr(signal, "SIGUSR1", None)  # billiard's SIG_SOFT_TIMEOUT (none on Windows)


def _billiard_handler() -> Any:
    try:
        from billiard.pool import soft_timeout_sighandler
    except ImportError:  # pragma: no cover - billiard is a Celery dependency
        return None
    return soft_timeout_sighandler


_BILLIARD_HANDLER = _billiard_handler()


class _Backstop:
    """The backstop of one pool process (a module singleton).

    Plain attribute reads and writes only, no lock: the signal handler runs in the
    main thread between any two bytecodes, also while the main thread is in here.
    Runs are told apart by a generation number that is never reused.
    """

    def __init__(self) -> None:
        self.generation = 0  # of the latest timed run
        self.active = 0  # the timed run in progress, 0 between runs
        self.task_id: str | None = None  # of the latest timed run
        self.limit_s = 0.0
        self.started = 0.0
        self.deadline = 0.0  # time.monotonic() when the watchdog signals the active run
        self.raised = 0  # the run whose soft limit was raised (Celery's signal or the watchdog's)
        self.signalled = 0  # the run the watchdog just signalled, until the handler takes it
        self.backstopped = 0  # the run the watchdog's signal raised in
        self.dropped = 0  # soft-limit signals dropped since the last log line
        self.waiting_until = math.inf  # when the watchdog wakes by itself (inf: only when woken)
        self.original: Any = None  # the handler signals not meant for a timed run go to
        self.main_ident = 0
        self.wake_w = -1
        self.watchdog: threading.Thread | None = None
        self.unavailable = False  # this process cannot arm (not a prefork pool process): checked once

    def arm(self, limit_s: float, task_id: str | None) -> None:
        """Start timing a run as generation ``self.generation + 1``; nothing where this process cannot.

        Not armed outside a prefork pool process, nor in a run nested in a timed one
        (an eager call). Cheap: no system call, no lock.
        """
        if self.watchdog is None:
            if self.unavailable:
                return
            if not self._start():
                self.unavailable = True  # until a fork (forget): the pools that run tasks here never change
                return
        if self.active:
            return
        if self.dropped:
            logger.info("soft_time_limit_late_signal_dropped", count=self.dropped, task_id=self.task_id)
            self.dropped = 0
        # The handler reads these in this order: the run's id before its generation, the generation
        # before active. A signal raised in here is handled by the caller's finally (disarm).
        self.task_id = task_id
        self.limit_s = limit_s
        self.started = now = time.monotonic()
        deadline = self.deadline = now + limit_s + GRACE_S
        self.generation += 1
        self.active = self.generation
        if deadline < self.waiting_until:
            self._wake()

    def disarm(self, generation: int) -> None:
        if self.active == generation:
            self.active = 0

    def _start(self) -> bool:
        """In a prefork pool process, on its first timed run: take over SIGUSR1 and start the watchdog."""
        if _SIGNAL is None or threading.current_thread() is not threading.main_thread():
            return False
        handler = signal.getsignal(_SIGNAL)
        if handler is _on_soft_signal:  # inherited across a fork (a task's own child): keep what it wrapped
            handler = self.original
        elif handler is not _BILLIARD_HANDLER or handler is None:
            return False  # not a billiard pool process: Celery enforces no soft limit here
        self.original = handler
        self.main_ident = threading.get_ident()
        # ours first: a soft-limit signal landing in here still reaches billiard's handler, behind ours
        signal.signal(_SIGNAL, _on_soft_signal)
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        self.wake_w = write_fd
        watchdog = threading.Thread(target=self._watch, args=(read_fd,), name="celery-policy-soft-limit", daemon=True)
        watchdog.start()
        self.watchdog = watchdog
        return True

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # full (it is woken anyway) or closed
            os.write(self.wake_w, b"\0")

    def _watch(self, wake_r: int) -> None:
        signalled = 0
        while True:
            active, deadline = self.active, self.deadline
            now = time.monotonic()
            if active and active not in (signalled, self.raised):
                until = deadline
            else:
                # Nothing to signal. Still wake at a deadline to come: the next run's is later, so
                # arming it needs no wake-up (one per limit period, not one per task).
                until = deadline if deadline > now else math.inf
            self.waiting_until = until
            if self.active != active or self.deadline != deadline:
                continue  # a run was armed meanwhile
            if until <= now:
                signalled = active
                # the app may have taken SIGUSR1 over since (checked here: signal.getsignal costs microseconds)
                if signal.getsignal(_SIGNAL) is _on_soft_signal:  # type: ignore[arg-type]  # not None here
                    self.signalled = active
                    signal.pthread_kill(self.main_ident, _SIGNAL)  # type: ignore[arg-type]
                continue
            readable, _, _ = select.select([wake_r], [], [], None if until == math.inf else until - now)
            if readable:
                os.read(wake_r, 512)

    def forget(self) -> None:
        """In the child of a fork: the watchdog thread did not come along; start afresh on the next timed run."""
        if self.wake_w >= 0:
            with contextlib.suppress(OSError):
                os.close(self.wake_w)
        self.wake_w = -1
        self.watchdog = None
        self.unavailable = False
        self.active = 0
        self.signalled = 0
        self.waiting_until = math.inf


_STATE = _Backstop()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_STATE.forget)


def _on_soft_signal(signum: int, frame: Any) -> None:
    """SIGUSR1 in a pool process that has timed a run: Celery's soft limit, or the watchdog's."""
    state = _STATE
    ours = state.signalled
    state.signalled = 0
    active = state.active
    if active:
        if state.raised == active or (ours and ours != active):
            state.dropped += 1
            return  # raised already for this run, or the watchdog's signal for a run that has ended
        state.raised = active
        if ours:
            state.backstopped = active
            msg = f"soft time limit ({state.limit_s}s) exceeded"
            raise SoftTimeLimitExceeded(msg)
    elif ours or _finishing(state):
        state.dropped += 1
        return  # the soft limit of a run that has ended: nothing left to interrupt
    original = state.original
    if callable(original):
        original(signum, frame)
        return
    raise SoftTimeLimitExceeded


def _finishing(state: _Backstop) -> bool:
    """Between timed runs: the process is idle, or still in Celery's tracer for the latest timed run."""
    if not state.generation:
        return False
    current = get_current_task()
    if current is None:
        return True
    return getattr(current.request, "id", None) == state.task_id


def _soft_limit_s(task: Task, request: Any) -> float | None:
    """The soft limit Celery's main process applies to this run (celery/worker/request.py)."""
    limits = request.timelimit
    soft = limits[1] if limits and len(limits) > 1 else None
    return soft or task.soft_time_limit  # type: ignore[no-any-return]  # celery is untyped


def timed(task: Task, inner: Callable[..., Any]) -> Callable[..., Any]:
    """``inner`` with the soft limit backstopped in a prefork pool process (see the module docstring)."""
    state = _STATE

    def run(*args: Any, **kwargs: Any) -> Any:
        if state.unavailable:  # solo, threads, a process that is not a pool child: nothing to arm, no request read
            return inner(*args, **kwargs)
        request = task.request
        if request.called_directly or request.is_eager:
            return inner(*args, **kwargs)
        limit_s = _soft_limit_s(task, request)
        if not limit_s:
            return inner(*args, **kwargs)
        # Known before arm(), so that a soft limit raised anywhere from here on still disarms this run.
        generation = state.generation + 1
        try:
            state.arm(float(limit_s), request.id)
            return inner(*args, **kwargs)
        except SoftTimeLimitExceeded:
            if state.backstopped == generation:
                logger.warning(
                    "soft_time_limit_backstop",
                    task=task.name,
                    task_id=request.id,
                    limit_s=state.limit_s,
                    elapsed_s=round(time.monotonic() - state.started, 3),
                    reason="the worker's main process did not signal the soft limit in time (its loop was stalled)",
                )
            raise
        finally:
            state.disarm(generation)

    return run
