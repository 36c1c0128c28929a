"""Errors the payment gateway client raises."""


class GatewayDown(ConnectionError):
    """The gateway did not answer; worth retrying."""


class CardDeclined(ValueError):
    """The card was declined; retrying cannot help."""
