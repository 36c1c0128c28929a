"""A real ``celery-policy web`` process for the console tests, and a worker of the dead-letter app next to it.

The console is started through its command line (uvicorn serving the app) with
``--app`` pointing at the dead-letter test app, so replays go through the app's
broker and the fleet page asks its workers.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import httpx
import port_for

from support.servers import REPO_ROOT

OPERATOR_TOKEN = "op-" + "7f3c9a1e5b2d4f60" * 2
READONLY_TOKEN = "ro-" + "0a9e8d7c6b5a4f31" * 2
CONSOLE_BIN = Path(sys.executable).with_name("celery-policy")


class Console:
    """One ``celery-policy web`` subprocess in its own process group."""

    def __init__(
        self, args: list[str], env: Mapping[str, str], log_path: Path, command: list[str] | None = None
    ) -> None:
        self.port = int(port_for.select_random())
        self.base = f"http://127.0.0.1:{self.port}"
        self.args = [*(command or [str(CONSOLE_BIN), "web"]), *args, "--bind", f"127.0.0.1:{self.port}"]
        self.env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **env}
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> Console:
        log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            self.args, cwd=REPO_ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                msg = f"celery-policy web exited with {self.process.returncode}:\n{self.log_text()}"
                raise RuntimeError(msg)
            try:
                httpx.get(self.base + "/login", timeout=1)
                return self
            except httpx.HTTPError:
                time.sleep(0.1)
        msg = f"celery-policy web did not answer within {timeout}s:\n{self.log_text()}"
        raise RuntimeError(msg)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(5)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def console_env(broker_url: str, policy: Path) -> dict[str, str]:
    return {
        "DL_BROKER_URL": broker_url,
        "CELERY_BROKER_URL": broker_url,
        "CELERY_RESULT_BACKEND": broker_url,
        "CELERY_POLICY_FILE": str(policy),
        "CELERY_POLICY_WEB_TOKEN": OPERATOR_TOKEN,
        "CELERY_POLICY_WEB_READONLY_TOKEN": READONLY_TOKEN,
    }
