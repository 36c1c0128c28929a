"""Exception classes and hooks that lint fixtures reference by dotted path."""

NOT_AN_ERROR = 5
NOT_CALLABLE = "page"


class PermanentError(Exception):
    """A failure that retrying cannot fix."""


class RateLimited(Exception):
    """The remote side asked us to slow down."""

    retry_after = 5


def page_oncall(record: object) -> None:
    """A dead-letter hook."""
