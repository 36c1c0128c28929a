"""A small web-shop Celery app: the demo project for ``policies/celery-policy.yaml``.

It lives at the repository root on purpose: ``celery -A shop worker``,
``celery-policy check policies/celery-policy.yaml`` and the exception paths in
the policy (``shop.errors.RateLimited``) all resolve from the repository root,
the same way a real project's policy imports from its own project directory.
"""
