"""The command line: ``celery-policy`` (:func:`main`) and ``celery -A proj policy`` (:mod:`.celery_command`).

One module per command; :mod:`.exit` holds the exit codes and :mod:`.options`
the options both entry points share. The libraries these modules call never
import from here.
"""

from celery_policy.cli.root import cli, main

__all__ = ["cli", "main"]
