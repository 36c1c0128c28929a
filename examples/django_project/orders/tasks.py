"""Order tasks: plain business logic, no retry or timeout arguments."""

from celery import shared_task

from orders.errors import CardDeclined, GatewayDown


@shared_task(name="orders.charge")
def charge(order_id: int, outcome: str = "ok") -> str:
    """Charge an order; ``outcome`` lets the example simulate the gateway's answers."""
    if outcome == "down":
        raise GatewayDown(f"gateway unreachable for order {order_id}")
    if outcome == "declined":
        raise CardDeclined(f"card declined for order {order_id}")
    return f"charged {order_id}"


@shared_task(name="orders.send_receipt")
def send_receipt(order_id: int) -> str:
    return f"receipt {order_id}"
