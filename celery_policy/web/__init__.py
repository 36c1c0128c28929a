"""``celery-policy web``: a server-rendered console for dead letters, policies and the fleet (extra ``[web]``).

Build the ASGI app with :func:`celery_policy.web.app.build_app` from a
:class:`celery_policy.web.app.WebConfig`; ``celery_policy/cli/web.py`` serves it with uvicorn.
See docs/web.md for the pages, the roles and the security model.
"""

from __future__ import annotations

INSTALL_HINT = "the web console's libraries are not installed; run: pip install 'celery-policy[web]'"
