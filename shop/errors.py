"""The shop's exception classes, named by the policy files (``shop.errors.*``).

Classification lives in the policy, not here: these classes only say what
happened. ``policies/celery-policy.yaml`` decides which ones retry.
"""

from __future__ import annotations


class ShopError(Exception):
    """Base class of the shop's own errors."""


class PermanentError(ShopError):
    """The input is wrong; running the task again cannot help."""


class OrderNotFound(PermanentError):
    """No order with this id."""


class PaymentDeclined(PermanentError):
    """The card issuer declined the charge."""


class WebhookRejected(PermanentError):
    """The receiver answered 4xx (other than 429): the payload or the endpoint is wrong."""


class RateLimited(ShopError):
    """A provider answered 429; ``retry_after`` is its Retry-After header in seconds."""

    def __init__(self, message: str = "rate limited", *, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class GatewayUnavailable(ConnectionError):
    """The payment gateway could not be reached (a transient network failure)."""


class WebhookServerError(ShopError):
    """The receiver answered 5xx: worth retrying later."""
