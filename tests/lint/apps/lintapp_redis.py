# mypy: ignore-errors
# (Celery and kombu ship no type information; these modules only exist to be imported by --app.)
"""A Celery app on a Redis broker for the lint cross-checks (imported and finalized, never run).

Tasks use `shared=False`: several test apps live in one process, and a shared task would be
added to every app that finalizes after it.
"""

from celery import Celery
from kombu import Queue

app = Celery("lintapp_redis", broker="redis://localhost:6379/0", set_as_current=False)
app.conf.task_queues = [Queue("celery"), Queue("reports")]
app.conf.broker_transport_options = {"visibility_timeout": 1800}


@app.task(name="orders.charge", shared=False)
def charge(order_id: int, amount: int = 0) -> None:
    """Charge an order."""


@app.task(name="orders.refund", shared=False)
def refund(order_id: int) -> None:
    """Refund an order."""


@app.task(name="reports.daily", shared=False)
def daily(day: str) -> None:
    """Build the daily report."""


@app.task(bind=True, name="billing.invoice", shared=False)
def invoice(self: object, customer_id: int, *, currency: str = "EUR") -> None:
    """Invoice a customer (a bound task: `self` is not a parameter of the key)."""
