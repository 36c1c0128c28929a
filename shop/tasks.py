"""The shop's tasks: plain business logic, no retry or timeout arguments.

The external services are simulated so the demo runs anywhere: the inputs
choose what goes wrong (documented per task).
"""

from __future__ import annotations

import random
import time
from typing import Any

from shop.celery import app
from shop.errors import (
    GatewayUnavailable,
    OrderNotFound,
    PaymentDeclined,
    PermanentError,
    RateLimited,
    WebhookRejected,
    WebhookServerError,
)
from shop.outages import is_down


@app.task(name="orders.charge")
def charge(order_id: str, amount_cents: int, card_token: str) -> dict[str, Any]:
    """Charge a card. Call with keyword arguments: the idempotency key is ``charge:{kwargs[order_id]}``.

    ``card_token`` picks the gateway's answer: ``tok_declined`` declines,
    ``tok_busy`` is rate limited (Retry-After 1 s), ``tok_down`` cannot connect.
    """
    if amount_cents <= 0:
        msg = f"order {order_id}: amount must be positive, got {amount_cents}"
        raise PermanentError(msg)
    if card_token == "tok_declined":
        raise PaymentDeclined(f"order {order_id}: card declined")
    if card_token == "tok_busy":
        raise RateLimited(f"order {order_id}: gateway busy", retry_after=1.0)
    if card_token == "tok_down":
        raise GatewayUnavailable(f"order {order_id}: payment gateway unreachable")
    return {"order_id": order_id, "charged_cents": amount_cents, "charge_id": f"ch_{order_id}"}


@app.task(name="orders.reserve_stock")
def reserve_stock(order_id: str, items: dict[str, int]) -> dict[str, int]:
    """Reserve stock for every SKU; an empty order does not exist."""
    if not items:
        raise OrderNotFound(f"order {order_id} has no items")
    return dict(items)


@app.task(name="orders.ship")
def ship(order_id: str) -> str:
    return f"shipment for {order_id} booked"


@app.task(name="emails.send_receipt")
def send_receipt(order_id: str, to: str) -> str:
    """Send the receipt; an address at ``busy.example`` is rate limited by the mail provider."""
    if to.endswith("@busy.example"):
        raise RateLimited("mail provider: too many requests", retry_after=2.0)
    return f"receipt for {order_id} sent to {to}"


@app.task(name="emails.send_password_reset")
def send_password_reset(user_id: int, to: str, token: str) -> str:
    """``token`` is a secret: the policy's ``log.redact_keys`` keeps it out of logs and dead letters."""
    return f"password reset for user {user_id} sent to {to}"


@app.task(name="reports.daily_sales")
def daily_sales(day: str, seconds: float = 0.0) -> dict[str, Any]:
    """Build the daily sales report; ``seconds`` simulates a slow query."""
    time.sleep(seconds)
    return {"day": day, "orders": random.randint(100, 200)}


@app.task(name="webhooks.deliver")
def deliver(url: str, event_id: str, payload: dict[str, Any]) -> int:
    """POST an event to a merchant endpoint; the URL's path simulates the answer (/429, /4xx, /5xx, /timeout)."""
    if url.endswith("/429"):
        raise RateLimited(f"{url}: 429 Too Many Requests", retry_after=5.0)
    if url.endswith("/4xx"):
        raise WebhookRejected(f"{url}: 410 Gone")
    if url.endswith("/5xx"):
        raise WebhookServerError(f"{url}: 503 Service Unavailable")
    if url.endswith("/timeout"):
        raise TimeoutError(f"{url}: no answer within 10s")
    return 200


@app.task(name="catalog.ingest")
def ingest(record_id: str) -> dict[str, str]:
    """Import one product record from the supplier feed (the failure-handling guide's ``ingest`` example).

    Call with ``record_id=`` as a keyword: the idempotency key is ``ingest:{kwargs[record_id]}``.
    """
    if record_id.startswith("missing-"):
        raise PermanentError(f"record not found: {record_id}")
    if record_id.startswith("slow-") or is_down("supplier-feed"):
        raise TimeoutError(f"supplier feed timed out fetching {record_id}")
    return {"status": "ok", "record_id": record_id}


@app.task(name="catalog.parse_row")
def parse_row(row: str) -> dict[str, Any]:
    """Parse one CSV row ``sku,price``. Bad rows are expected: the policy returns them as errors, not failures."""
    sku, price = row.split(",")
    return {"sku": sku.strip(), "price_cents": round(float(price) * 100)}
