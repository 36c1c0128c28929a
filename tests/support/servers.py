"""Real processes for tests: a private ``redis-server`` and ``celery worker`` subprocesses.

Tests never use the system Redis on 6379 and never mock Redis: each server
here runs on a free port with its data in a temporary directory, so a test can
stop, kill or restart it to inject faults. Workers run as real subprocesses
(their own process group) so the prefork pool, time limits and worker-lost
redelivery behave as in production.

The fixtures in ``tests/conftest.py`` wrap these classes and clean up.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import port_for
import redis
from mirakuru import TCPExecutor
from mirakuru.exceptions import AlreadyRunning, ProcessExitedWithError, TimeoutExpired

REPO_ROOT = Path(__file__).resolve().parents[2]
TEST_APPS_DIR = Path(__file__).resolve().parent / "apps" / "plain"  # the default cwd of celery_worker_process

INSTALL_HINT = (
    "redis-server is required by the test suite (tests start their own server on a free port).\n"
    "  install it with:  apt-get install -y redis-server   (or run ./scripts/bootstrap.sh as root)\n"
    "  or point REDIS_SERVER at the binary"
)


class RedisServerMissingError(RuntimeError):
    """No ``redis-server`` binary was found; the message says how to install one."""


class ProcessStartError(RuntimeError):
    """A server or worker did not come up; the message carries its log."""


def find_redis_server() -> str:
    """Path of the ``redis-server`` binary ($REDIS_SERVER, then $PATH, then /usr/bin, /usr/sbin).

    Raises :class:`RedisServerMissingError` naming the install command.
    """
    configured = os.environ.get("REDIS_SERVER")
    if configured:
        if os.path.isfile(configured) and os.access(configured, os.X_OK):
            return configured
        msg = f"REDIS_SERVER={configured!r} is not an executable file\n{INSTALL_HINT}"
        raise RedisServerMissingError(msg)
    found = shutil.which("redis-server")
    if found:
        return found
    for candidate in ("/usr/bin/redis-server", "/usr/sbin/redis-server", "/usr/local/bin/redis-server"):
        if os.access(candidate, os.X_OK):
            return candidate
    raise RedisServerMissingError(f"redis-server not found on PATH\n{INSTALL_HINT}")


def _tail(text: str, lines: int = 80) -> str:
    return "\n".join(text.splitlines()[-lines:])


# --- Redis -------------------------------------------------------------------


class RedisServer:
    """A private ``redis-server`` on 127.0.0.1 and a free port, data in ``datadir``.

    Persistence is off by default (``--save '' --appendonly no``): a restart
    loses everything, as a crashed cache would. ``appendonly=True`` turns on
    the AOF with ``appendfsync always`` so even :meth:`kill` (SIGKILL) keeps
    every acknowledged write, which makes restart tests deterministic.

    The port stays the same across :meth:`stop` / :meth:`start`, so clients
    and URLs made before a restart reconnect to the new process.
    """

    host = "127.0.0.1"

    def __init__(
        self,
        datadir: str | os.PathLike[str],
        *,
        port: int | None = None,
        appendonly: bool = False,
        save: str = "",
        executable: str | None = None,
        startup_timeout: float = 30.0,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.executable = executable or find_redis_server()
        self.datadir = Path(datadir)
        self.datadir.mkdir(parents=True, exist_ok=True)
        self.appendonly = appendonly
        self.save = save
        self.extra_args = tuple(extra_args)
        self.startup_timeout = startup_timeout
        self._fixed_port = port is not None
        self.port = port if port is not None else port_for.select_random()
        self.log_path = self.datadir / "redis-server.log"
        self._executor: TCPExecutor | None = None
        self._clients: list[redis.Redis] = []

    # addresses

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return self.url_for(0)

    def url_for(self, db: int) -> str:
        return f"redis://{self.host}:{self.port}/{db}"

    def client(self, db: int = 0, **kwargs: Any) -> redis.Redis:
        """A redis-py client for this server (closed when the server is closed)."""
        kwargs.setdefault("socket_timeout", 10)
        kwargs.setdefault("socket_connect_timeout", 5)
        client = redis.Redis(host=self.host, port=self.port, db=db, **kwargs)
        self._clients.append(client)
        return client

    # lifecycle

    def _command(self) -> list[str]:
        return [
            self.executable,
            "--port", str(self.port),
            "--bind", self.host,
            "--protected-mode", "no",
            "--daemonize", "no",
            "--dir", str(self.datadir),
            "--dbfilename", "dump.rdb",
            "--save", self.save,
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "always",
            "--logfile", str(self.log_path),
            "--databases", "16",
            *self.extra_args,
        ]  # fmt: skip

    @property
    def running(self) -> bool:
        return self._executor is not None and self._executor.running()

    @property
    def pid(self) -> int | None:
        executor = self._executor
        return executor.process.pid if executor is not None and executor.process is not None else None

    def start(self) -> RedisServer:
        """Start the server and wait until it accepts connections (no-op when running)."""
        if self.running:
            return self
        attempts = 1 if self._fixed_port else 5
        for attempt in range(attempts):
            executor = TCPExecutor(
                self._command(),
                host=self.host,
                port=self.port,
                timeout=self.startup_timeout,
                stdout=subprocess.DEVNULL,
                stdin=subprocess.DEVNULL,
            )
            try:
                executor.start()
            except (AlreadyRunning, ProcessExitedWithError) as exc:
                # Someone else took the port between selection and bind: pick another.
                if attempt + 1 < attempts:
                    self.port = port_for.select_random()
                    continue
                msg = f"redis-server did not start on port {self.port}: {exc}\n{_tail(self.log_text())}"
                raise ProcessStartError(msg) from exc
            except TimeoutExpired as exc:
                waited = f"redis-server did not accept connections within {self.startup_timeout}s"
                msg = f"{waited}\n{_tail(self.log_text())}"
                raise ProcessStartError(msg) from exc
            self._executor = executor
            self._fixed_port = True  # keep the port for restarts
            return self
        raise AssertionError("unreachable")  # pragma: no cover

    def stop(self) -> RedisServer:
        """Shut down cleanly (SIGTERM: the AOF, if on, is flushed). No-op when stopped."""
        executor = self._executor
        if executor is not None:
            self._disconnect_clients()
            executor.stop()
            self._executor = None
        return self

    def kill(self) -> RedisServer:
        """Crash the server (SIGKILL): nothing is flushed beyond what was already written."""
        executor = self._executor
        if executor is not None:
            self._disconnect_clients()
            executor.kill()
            self._executor = None
        return self

    def restart(self, *, hard: bool = False) -> RedisServer:
        """Stop (or with ``hard=True`` kill) and start again on the same port."""
        if hard:
            self.kill()
        else:
            self.stop()
        return self.start()

    def close(self) -> None:
        """Stop the server and close every client handed out."""
        with contextlib.suppress(Exception):
            self.stop()
        with contextlib.suppress(Exception):
            self.kill()
        for client in self._clients:
            with contextlib.suppress(Exception):
                client.close()
        self._clients.clear()

    def _disconnect_clients(self) -> None:
        # Drop pooled sockets so the next command reconnects instead of failing once on a dead socket.
        for client in self._clients:
            with contextlib.suppress(Exception):
                client.connection_pool.disconnect()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<RedisServer {self.url} {state} aof={'on' if self.appendonly else 'off'}>"


# --- processes ----------------------------------------------------------------


def _proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, pgid) from /proc/PID/stat, or None when the process is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may itself contain spaces or ')'.
    fields = raw[raw.rfind(")") + 2 :].split()
    return fields[0], int(fields[1]), int(fields[2])


def is_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    stat = _proc_stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def _all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def child_pids(pid: int) -> list[int]:
    """Live direct children of ``pid``.

    Reads /proc/PID/task/*/children when the kernel offers it, else scans
    /proc/*/stat for the parent pid (psutil is not a dependency of the suite).
    """
    tasks = Path(f"/proc/{pid}/task")
    found: set[int] = set()
    children_files = list(tasks.glob("*/children")) if tasks.exists() else []
    if children_files:
        for path in children_files:
            with contextlib.suppress(OSError):
                found.update(int(p) for p in path.read_text().split())
    else:
        for other in _all_pids():
            stat = _proc_stat(other)
            if stat is not None and stat[1] == pid:
                found.add(other)
    return sorted(p for p in found if is_alive(p))


def group_pids(pgid: int) -> list[int]:
    """Live processes whose process group is ``pgid``."""
    found = []
    for pid in _all_pids():
        stat = _proc_stat(pid)
        if stat is not None and stat[2] == pgid and stat[0] not in ("Z", "X"):
            found.append(pid)
    return sorted(found)


_LIVE_WORKERS: weakref.WeakSet[WorkerProcess] = weakref.WeakSet()


def kill_all_workers() -> None:
    """SIGKILL every worker started in this interpreter that is still running (session safety net)."""
    for worker in list(_LIVE_WORKERS):
        with contextlib.suppress(Exception):
            worker.kill()


class WorkerProcess:
    """A ``celery -A APP worker`` subprocess in its own process group, its output in a log file.

    ``start()`` returns once the worker logged ``<hostname> ready.``; if the
    process exits first or the timeout passes, :class:`ProcessStartError`
    carries the end of the log.
    """

    def __init__(
        self,
        app: str,
        *,
        log_path: str | os.PathLike[str],
        pool: str = "solo",
        concurrency: int = 1,
        hostname: str | None = None,
        queues: Iterable[str] | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        pythonpath: Iterable[str | os.PathLike[str]] = (),
        loglevel: str = "INFO",
        extra_args: Sequence[str] = (),
        ready_timeout: float = 60.0,
    ) -> None:
        self.app = app
        self.pool = pool
        self.concurrency = concurrency
        self.hostname = hostname or f"{pool}-{uuid.uuid4().hex[:8]}@localhost"
        self.queues = list(queues) if queues else []
        self.cwd = Path(cwd) if cwd is not None else TEST_APPS_DIR
        self.log_path = Path(log_path)
        self.loglevel = loglevel
        self.extra_args = list(extra_args)
        self.ready_timeout = ready_timeout
        self.env = self._environment(env or {}, pythonpath)
        self.process: subprocess.Popen[bytes] | None = None

    def _environment(self, extra: Mapping[str, str], pythonpath: Iterable[str | os.PathLike[str]]) -> dict[str, str]:
        env = dict(os.environ)
        # The app module imports relative to cwd, as `celery -A` does from a project directory.
        paths = [str(self.cwd), *(str(p) for p in pythonpath)]
        if env.get("PYTHONPATH"):
            paths.append(env["PYTHONPATH"])
        env["PYTHONPATH"] = os.pathsep.join(paths)
        env["PYTHONUNBUFFERED"] = "1"
        env.pop("PYTEST_CURRENT_TEST", None)
        env.update(extra)
        return env

    @property
    def command(self) -> list[str]:
        command = [
            sys.executable, "-m", "celery", "-A", self.app, "worker",
            "--pool", self.pool,
            "--concurrency", str(self.concurrency),
            "--hostname", self.hostname,
            "--loglevel", self.loglevel,
            "--without-gossip", "--without-mingle", "--without-heartbeat",
        ]  # fmt: skip
        if self.queues:
            command += ["--queues", ",".join(self.queues)]
        return command + self.extra_args

    # lifecycle

    def start(self) -> WorkerProcess:
        """Start the worker and wait for ``ready.`` in its log."""
        if self.process is not None:
            msg = "worker already started"
            raise RuntimeError(msg)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"$ (cd {self.cwd} && {' '.join(self.command)})\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                self.command,
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group: kill() reaches the pool children too
            )
        _LIVE_WORKERS.add(self)
        self.wait_ready()
        return self

    def wait_ready(self, timeout: float | None = None) -> None:
        """Block until the worker logged that it is ready; raise :class:`ProcessStartError` otherwise."""
        timeout = self.ready_timeout if timeout is None else timeout
        ready = re.compile(r" ready\.\s*$", re.MULTILINE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready.search(self.log_text()):
                return
            if self.process is not None and self.process.poll() is not None:
                msg = f"celery worker {self.hostname} exited with code {self.process.returncode} before it was ready"
                raise ProcessStartError(self._with_log(msg))
            time.sleep(0.05)
        self.kill()
        msg = f"celery worker {self.hostname} was not ready within {timeout:.0f}s"
        raise ProcessStartError(self._with_log(msg))

    def wait_for_log(self, pattern: str | re.Pattern[str], *, timeout: float = 30.0, count: int = 1) -> list[str]:
        """Wait until ``pattern`` (regex) matches ``count`` times in the log; return the matching lines."""
        regex = re.compile(pattern, re.MULTILINE) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        while True:
            lines = [line for line in self.log_text().splitlines() if regex.search(line)]
            if len(lines) >= count:
                return lines
            if time.monotonic() >= deadline:
                msg = f"{len(lines)} of {count} log lines matching {regex.pattern!r} after {timeout:.0f}s"
                raise AssertionError(self._with_log(msg))
            time.sleep(0.05)

    @property
    def pid(self) -> int:
        if self.process is None:
            msg = "worker not started"
            raise RuntimeError(msg)
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def children(self) -> list[int]:
        """PIDs of the worker's direct children (the prefork pool processes; none for solo)."""
        return child_pids(self.pid) if self.alive else []

    def wait_children(self, count: int, timeout: float = 20.0) -> list[int]:
        """Wait until the worker has ``count`` live children (e.g. after a pool process was replaced)."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.children()
            if len(found) == count or time.monotonic() >= deadline:
                return found
            time.sleep(0.05)

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the main worker process only."""
        if self.alive:
            os.kill(self.pid, sig)

    def stop(self, timeout: float = 15.0) -> int | None:
        """Warm shutdown (SIGTERM to the main process); SIGKILL the whole group after ``timeout``.

        Returns the exit code (negative = killed by that signal).
        """
        if self.process is None:
            return None
        if self.alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._killpg()
        self._reap_group()
        _LIVE_WORKERS.discard(self)
        return self.process.returncode

    def kill(self) -> int | None:
        """SIGKILL the main process and every pool child (the whole process group)."""
        if self.process is None:
            return None
        self._killpg()
        self._reap_group()
        _LIVE_WORKERS.discard(self)
        return self.process.returncode

    def _killpg(self) -> None:
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(10)

    def _reap_group(self, timeout: float = 10.0) -> None:
        """Make sure no process of the group outlives the worker (orphaned pool children included)."""
        assert self.process is not None
        pgid = self.process.pid
        deadline = time.monotonic() + timeout
        while group_pids(pgid) and time.monotonic() < deadline:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
            time.sleep(0.05)

    # output

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def _with_log(self, msg: str) -> str:
        return f"{msg}\n--- {self.log_path} (last lines) ---\n{_tail(self.log_text())}"

    def __repr__(self) -> str:
        state = "running" if self.alive else f"exited {self.returncode}"
        return f"<WorkerProcess {self.app} {self.pool}x{self.concurrency} {self.hostname} {state}>"


def repo_worker(
    app: str,
    log_dir: Path,
    *,
    env: Mapping[str, str],
    pool: str = "solo",
    concurrency: int = 1,
    queues: Sequence[str] | None = None,
    name: str = "worker",
) -> WorkerProcess:
    """A (not yet started) worker of a test app importable from the repository root.

    For workers shared by a test module (the ``celery_worker_process`` fixture is per test).
    """
    return WorkerProcess(
        app,
        log_path=log_dir / f"{name}-{uuid.uuid4().hex[:6]}.log",
        pool=pool,
        concurrency=concurrency,
        queues=queues,
        env=env,
        cwd=REPO_ROOT,
        pythonpath=(REPO_ROOT,),
        ready_timeout=60,
    )


@contextlib.contextmanager
def running(worker: WorkerProcess, session: Any) -> Iterator[WorkerProcess]:
    """Start ``worker`` for a module; stop it afterwards and print its log when a test of the module failed."""
    failed_before = session.testsfailed
    try:
        worker.start()
    except ProcessStartError as exc:
        raise RuntimeError(str(exc)) from None
    try:
        yield worker
    finally:
        worker.stop(timeout=10)
        if session.testsfailed > failed_before:
            sys.stderr.write(f"\n--- {worker!r}: {worker.log_path} ---\n{worker.log_text()[-30000:]}\n")


T = TypeVar("T")


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 20.0, interval: float = 0.05) -> T:
    """Poll ``probe`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() >= deadline:
            msg = f"timed out after {timeout}s waiting for {what} (last: {value!r})"
            raise AssertionError(msg)
        time.sleep(interval)
