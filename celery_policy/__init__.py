"""celery-policy: Celery failure handling from one reviewed YAML file."""

from celery_policy.errors import PolicyError
from celery_policy.resolve import Policy, ResolvedPolicy, load

__version__ = "0.1.0"

__all__ = ["Policy", "PolicyError", "ResolvedPolicy", "__version__", "load"]
