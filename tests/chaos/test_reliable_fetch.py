# kombu's Connection/Queue/Consumer are unannotated:
# mypy: disable-error-code="no-untyped-call"
"""Reliable fetch (celery_policy.transport.redis) against a real redis-server.

The fetch-window tests kill a real consumer process inside the window
between taking a message and recording it (tests/support/apps/chaos/window_consumer.py):
plain kombu loses the message, reliable fetch keeps it and a live peer gives
it back. The rest checks that kombu's semantics hold on the same keys.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from kombu.connection import Connection
from kombu.entity import Queue
from support.servers import wait_for

import celery_policy
from celery_policy.transport import RELIABLE_TRANSPORT
from celery_policy.transport._liveness import CONSUMERS_KEY, OWNER_KEY, alive_key, inflight_key

pytestmark = pytest.mark.worker  # real kombu consumer processes, killed mid-take

APPS = Path(__file__).resolve().parents[1] / "support" / "apps" / "chaos"
FAST = {"reliable_heartbeat_interval": 0.2, "reliable_heartbeat_ttl": 1.0, "reliable_recover_interval": 0.2}


def _publish(url: str, queue: str, bodies: list[Any], priority: int | None = None) -> None:
    with Connection(url) as conn, conn.Producer() as producer:  # producers may stay on plain kombu
        for body in bodies:
            producer.publish(body, routing_key=queue, declare=[Queue(queue)], priority=priority)


def _kill_in_window(url: str, transport: str, queue: str) -> int:
    proc = subprocess.run(
        [sys.executable, str(APPS / "window_consumer.py"), url, transport, queue],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return proc.returncode


@pytest.mark.parametrize(("transport", "survives"), [("redis", False), (RELIABLE_TRANSPORT, True)])
def test_a_consumer_killed_between_take_and_record_loses_the_message_only_on_plain_kombu(
    redis_server_factory: Any, transport: str, survives: bool
) -> None:
    server = redis_server_factory()
    client = server.client()
    _publish(server.url, "win", [{"n": 1}])
    assert _kill_in_window(server.url, transport, "win") == -9
    assert client.llen("win") == 0  # taken by the killed consumer either way
    assert (client.hlen("unacked") == 1) is survives
    if survives:
        owner = client.hget(OWNER_KEY, client.hkeys("unacked")[0])
        assert owner is not None
        assert owner.endswith(b"\nwin")


def test_a_live_peer_gives_back_what_a_killed_consumer_held(redis_server_factory: Any) -> None:
    server = redis_server_factory()
    client = server.client()
    _publish(server.url, "win", [{"n": 7}])
    assert _kill_in_window(server.url, RELIABLE_TRANSPORT, "win") == -9
    got: list[Any] = []
    with Connection(server.url, transport=RELIABLE_TRANSPORT, transport_options=FAST) as conn:
        consumer = conn.Consumer(Queue("win"), accept=["json"])

        def on_message(body: Any, message: Any) -> None:
            got.append((body, dict(message.delivery_info)))
            message.ack()

        consumer.register_callback(on_message)
        with consumer:
            deadline = time.monotonic() + 15
            while not got and time.monotonic() < deadline:
                with contextlib.suppress(TimeoutError):
                    conn.drain_events(timeout=0.5)
    assert got, "the dead consumer's message was not restored"
    body, info = got[0]
    assert body == {"n": 7}
    assert info["redelivered"] is True
    assert client.hlen("unacked") == 0
    assert client.hlen(OWNER_KEY) == 0
    dead = [m for m in client.smembers(CONSUMERS_KEY) if not client.exists(alive_key(m.decode()))]
    assert dead == []


def test_priorities_queue_rotation_ack_and_requeue_keep_kombus_semantics(redis_server_factory: Any) -> None:
    server = redis_server_factory()
    client = server.client()
    _publish(server.url, "qa", [{"q": "a", "i": i} for i in range(3)])
    _publish(server.url, "qb", [{"q": "b", "i": i} for i in range(3)])
    _publish(server.url, "qa", [{"q": "a", "urgent": True}], priority=0)
    _publish(server.url, "qa", [{"q": "a", "late": True}], priority=9)
    seen: list[dict[str, Any]] = []
    with Connection(server.url, transport=RELIABLE_TRANSPORT, transport_options=FAST) as conn:
        consumer = conn.Consumer([Queue("qa"), Queue("qb")], accept=["json"], prefetch_count=1)

        def on_message(body: dict[str, Any], message: Any) -> None:
            seen.append(body)
            assert client.hexists("unacked", message.delivery_tag)  # recorded before we see it
            if body.get("i") == 1 and body["q"] == "b" and not message.delivery_info.get("redelivered"):
                message.requeue()  # reject(requeue=True): back to the tail, redelivered
            else:
                message.ack()

        consumer.register_callback(on_message)
        with consumer:
            deadline = time.monotonic() + 15
            while len(seen) < 9 and time.monotonic() < deadline:
                with contextlib.suppress(TimeoutError):
                    conn.drain_events(timeout=0.5)
    assert len(seen) == 9
    queues = [b["q"] for b in seen[:6]]
    assert queues.count("a") >= 2
    assert queues.count("b") >= 2
    urgent = next(i for i, b in enumerate(seen) if b.get("urgent"))
    late = next(i for i, b in enumerate(seen) if b.get("late"))
    assert urgent < late
    assert client.hlen("unacked") == 0
    assert client.zcard("unacked_index") == 0
    assert client.hlen(OWNER_KEY) == 0


def test_the_visibility_timeout_restores_only_what_no_live_consumer_holds_and_recovery_does_not_double_it(
    redis_server_factory: Any,
) -> None:
    server = redis_server_factory()
    client = server.client()
    _publish(server.url, "vt", [{"n": 1}, {"n": 2}])
    options = {**FAST, "visibility_timeout": 1, "unacked_restore_throttle": 1}
    with Connection(server.url, transport=RELIABLE_TRANSPORT, transport_options=options) as conn:
        channel = conn.channel()
        held = channel.basic_get("vt", no_ack=False)  # held by this live consumer: leased
        forgotten = channel.basic_get("vt", no_ack=False)
        assert held is not None
        assert forgotten is not None
        channel.qos._delivered.pop(forgotten.delivery_tag)  # the process lost track of it: no lease any more
        time.sleep(1.5)
        channel.qos.restore_visible(num=10, interval=1)  # kombu's own sweep
        assert client.llen("vt") == 1  # only the forgotten one came back
        assert client.hexists("unacked", held.delivery_tag)
        assert not client.hexists(OWNER_KEY, forgotten.delivery_tag)  # kombu's restore cleared our owner record
        # A recovery of this consumer now finds only the held message: no second copy of the restored one.
        assert channel.liveness.recover(channel.liveness.consumer_id) == 1
        assert client.llen("vt") == 2
        again = channel.basic_get("vt", no_ack=False)
        assert again.delivery_info["redelivered"] is True
        again.ack()
        channel.basic_get("vt", no_ack=False).ack()
        channel.close()
    assert client.hlen("unacked") == 0
    assert client.scard(inflight_key("x")) == 0


def test_a_plain_kombu_consumers_message_is_restored_by_the_visibility_timeout_a_leased_one_is_not(
    redis_server_factory: Any,
) -> None:
    """Messages with no owner record were taken by a consumer that is not ours: the visibility timeout bounds them."""
    server = redis_server_factory()
    client = server.client()
    _publish(server.url, "mixed", [{"by": "plain"}, {"by": "ours"}])
    options = {**FAST, "visibility_timeout": 1, "unacked_restore_throttle": 1}
    with (
        Connection(server.url, transport_options=options) as plain,
        Connection(server.url, transport=RELIABLE_TRANSPORT, transport_options=options) as ours,
    ):
        plain_channel, our_channel = plain.channel(), ours.channel()
        taken_plain = plain_channel.basic_get("mixed", no_ack=False)
        taken_ours = our_channel.basic_get("mixed", no_ack=False)
        assert taken_plain.payload == {"by": "plain"}
        assert taken_ours.payload == {"by": "ours"}
        assert not client.hexists(OWNER_KEY, taken_plain.delivery_tag)
        assert client.hexists(OWNER_KEY, taken_ours.delivery_tag)
        deadline = time.monotonic() + 4  # four visibility timeouts, sweeping from both kinds of consumer
        while time.monotonic() < deadline:
            plain_channel.qos.restore_visible(num=10, interval=1)
            our_channel.qos.restore_visible(num=10, interval=1)
            time.sleep(0.3)
        assert client.llen("mixed") == 1
        restored = json.loads(client.lrange("mixed", 0, -1)[0])
        assert restored["properties"]["delivery_tag"] == taken_plain.delivery_tag
        assert client.hexists("unacked", taken_ours.delivery_tag)  # leased: still held, never restored
        taken_ours.ack()


def test_install_switches_it_on_for_redis_with_late_ack_and_leaves_other_cases(tmp_path: Path) -> None:
    def app_for(broker: str, document: str, **conf: Any) -> Celery:
        path = tmp_path / "p.yaml"
        path.write_text(document)
        app = Celery("rf", broker=broker, task_cls=celery_policy.PolicyTask)
        app.conf.update(conf)
        celery_policy.install(app, path)
        return app

    late = "version: 1\ndefaults: {ack: {late: true}}\n"
    assert app_for("redis://127.0.0.1:1/0", late).conf.broker_transport == RELIABLE_TRANSPORT
    assert app_for("redis://127.0.0.1:1/0", "version: 1\n").conf.broker_transport is None
    assert app_for("amqp://127.0.0.1:1//", late).conf.broker_transport is None
    off = late + "worker: {reliable_fetch: false}\n"
    assert app_for("redis://127.0.0.1:1/0", off).conf.broker_transport is None
    on = "version: 1\nworker: {reliable_fetch: true}\n"
    assert app_for("redis://127.0.0.1:1/0", on).conf.broker_transport == RELIABLE_TRANSPORT
    prefixed = app_for("redis://127.0.0.1:1/0", late, broker_transport_options={"global_keyprefix": "x:"})
    assert prefixed.conf.broker_transport is None
    assert json.dumps(prefixed.conf.broker_transport_options) == '{"global_keyprefix": "x:"}'


def test_closing_a_channel_after_its_transport_was_detached_restores_instead_of_crashing(
    redis_server_factory: Any,
) -> None:
    """The broker-restart crash: Celery closes the lost connection; the channel's close restores unacked
    messages after kombu already set ``transport.client`` to None (AttributeError: ... 'hostname')."""
    server = redis_server_factory()
    client = server.client()
    _publish(server.url, "rs", [{"n": 1}])
    conn = Connection(server.url, transport=RELIABLE_TRANSPORT, transport_options=FAST)
    channel: Any = conn.default_channel
    assert channel.basic_get("rs", no_ack=False) is not None
    channel._disconnect_pools()  # the lost connection's pools are gone (as after a broker restart)
    conn._do_close_transport()  # kombu: transport.client = None, the order seen in the worker's traceback
    channel.close()  # restore_unacked needs a new pool: it used to read None.hostname here
    assert client.llen("rs") == 1
    assert client.hlen("unacked") == 0


def test_a_message_a_channel_held_while_the_broker_was_down_comes_back_after_the_restart(
    redis_server_factory: Any,
) -> None:
    """kombu restores a closing channel's unacked messages only if the broker answers then; after a broker
    restart they stayed in ``unacked`` under the live consumer until the visibility timeout (1 h)."""
    server = redis_server_factory(appendonly=True)
    _publish(server.url, "bounce", [{"n": 1}])
    first = Connection(server.url, transport=RELIABLE_TRANSPORT, transport_options=FAST)
    held: Any = first.default_channel
    held.basic_consume("bounce", False, lambda message: None, "first")  # a consumer, as a worker's is
    assert held.basic_get("bounce", no_ack=False) is not None  # held, never acked
    server.kill()  # the broker goes away with the message recorded in unacked (AOF)
    with contextlib.suppress(redis.exceptions.ConnectionError):  # Celery closes it inside ignore_errors
        held.close()  # kombu's restore cannot reach Redis
    with contextlib.suppress(redis.exceptions.ConnectionError):
        first.release()
    server.start()
    client = server.client()
    assert client.hlen("unacked") == 1  # nobody restored it, and its consumer is alive (same process)
    with Connection(server.url, transport=RELIABLE_TRANSPORT, transport_options=FAST) as second:
        channel: Any = second.default_channel
        channel.basic_consume("bounce", False, lambda message: None, "second")
        message = wait_for("the message back in its queue", lambda: channel.basic_get("bounce", no_ack=False), 10)
        assert message.payload == {"n": 1}
        assert message.delivery_info["redelivered"] is True
        message.ack()
    assert client.hlen("unacked") == 0
    assert client.hlen(OWNER_KEY) == 0
