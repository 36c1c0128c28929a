"""Real Redis topologies for tests, on loopback ports: a 3-master Redis Cluster and a Sentinel set.

Both are built from ``support.servers.RedisServer`` (the same binary the rest of
the suite uses; redis-server 7 runs a sentinel with ``--sentinel``) and
expose the store URL celery-policy reads:
``redis+cluster://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3`` and
``redis+sentinel://127.0.0.1:S/mymaster/0``.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from pathlib import Path
from typing import Any

import port_for
import redis
from mirakuru import TCPExecutor

from support.servers import RedisServer, find_redis_server


def _wait(predicate: Any, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except redis.RedisError as exc:
            last = exc
        time.sleep(0.1)
    msg = f"{what} within {timeout:.0f}s" + (f" (last error: {last})" if last else "")
    raise AssertionError(msg)


class RedisClusterSet:
    """Three cluster-enabled masters (no replicas) joined with ``redis-cli --cluster create``."""

    def __init__(self, root: Path) -> None:
        self.nodes: list[RedisServer] = []
        for index in range(3):
            datadir = root / f"node{index}"
            datadir.mkdir(parents=True, exist_ok=True)
            extra = [
                "--cluster-enabled", "yes",
                "--cluster-config-file", str(datadir / "nodes.conf"),
                "--cluster-node-timeout", "2000",
            ]  # fmt: skip
            self.nodes.append(RedisServer(datadir, port=_cluster_port(), extra_args=extra))

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{node.port}" for node in self.nodes)

    def start(self) -> RedisClusterSet:
        for node in self.nodes:
            node.start()
        command = [
            _redis_cli(), "--cluster", "create",
            *(f"127.0.0.1:{node.port}" for node in self.nodes),
            "--cluster-yes",
        ]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
        if done.returncode != 0:
            msg = f"redis-cli --cluster create failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
            raise AssertionError(msg)

        def ready() -> bool:
            for node in self.nodes:
                info = node.client().execute_command("CLUSTER INFO")  # type: ignore[no-untyped-call]
                if isinstance(info, dict):
                    if info.get("cluster_state") != "ok":
                        return False
                elif "cluster_state:ok" not in (info.decode() if isinstance(info, bytes) else str(info)):
                    return False
            return True

        _wait(ready, "the cluster did not reach cluster_state:ok")
        return self

    def close(self) -> None:
        for node in self.nodes:
            node.close()


class SentinelSet:
    """One master, one replica and one sentinel monitoring them as ``mymaster`` (quorum 1).

    :meth:`kill_master` makes the sentinel promote the replica; tests that
    share the set afterwards talk to the promoted replica through the same URL."""

    service = "mymaster"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.master = RedisServer(root / "master")
        self.replica: RedisServer | None = None
        self.sentinel_port = port_for.select_random()
        self._sentinel: TCPExecutor | None = None

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.sentinel_port}/{self.service}/0"

    def start(self) -> SentinelSet:
        self.master.start()
        self.replica = RedisServer(
            self.root / "replica", extra_args=["--replicaof", "127.0.0.1", str(self.master.port)]
        )
        self.replica.start()
        replica = self.replica
        _wait(
            lambda: replica.client().info("replication").get("master_link_status") == "up",
            "the replica did not sync with the master",
        )
        sentinel_dir = self.root / "sentinel"
        sentinel_dir.mkdir(parents=True, exist_ok=True)
        conf = sentinel_dir / "sentinel.conf"  # a sentinel rewrites its config file, so it must be writable
        conf.write_text(
            f"port {self.sentinel_port}\n"
            "bind 127.0.0.1\n"
            "protected-mode no\n"
            f"dir {sentinel_dir}\n"
            f"logfile {sentinel_dir / 'sentinel.log'}\n"
            f"sentinel monitor {self.service} 127.0.0.1 {self.master.port} 1\n"
            f"sentinel down-after-milliseconds {self.service} 1000\n"
            f"sentinel failover-timeout {self.service} 10000\n"
        )
        self._sentinel = TCPExecutor(
            [find_redis_server(), str(conf), "--sentinel"],
            host="127.0.0.1",
            port=self.sentinel_port,
            timeout=30,
            stdout=subprocess.DEVNULL,
        )
        self._sentinel.start()
        _wait(self._knows_replica, "the sentinel did not discover the replica")
        return self

    def sentinel_client(self) -> redis.Redis:
        return redis.Redis(port=self.sentinel_port, socket_timeout=2, decode_responses=True)

    def _knows_replica(self) -> bool:
        sentinel = self.sentinel_client()
        return bool(sentinel.execute_command("SENTINEL", "REPLICAS", self.service))  # type: ignore[no-untyped-call]

    def master_port(self) -> int:
        sentinel = self.sentinel_client()
        _host, port = sentinel.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)  # type: ignore[no-untyped-call]
        return int(port)

    def kill_master(self) -> int:
        """SIGKILL the master, wait until the sentinel promoted the replica, and return its port."""
        assert self.replica is not None
        old = self.master_port()
        self.master.kill()
        _wait(lambda: self.master_port() != old, "the sentinel did not fail over", timeout=30)
        replica = self.replica
        _wait(lambda: replica.client().info("replication").get("role") == "master", "the replica was not promoted")
        return self.master_port()

    def close(self) -> None:
        if self._sentinel is not None:
            with contextlib.suppress(Exception):
                self._sentinel.stop()
        for server in (self.replica, self.master):
            if server is not None:
                server.close()


def _cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free and valid too."""
    for _ in range(100):
        port = port_for.select_random(ports=set(range(20000, 45000)))
        if port_for.is_available(port + 10000):
            return int(port)
    raise AssertionError("no free port pair for a cluster node")


def _redis_cli() -> str:
    return str(Path(find_redis_server()).with_name("redis-cli"))
